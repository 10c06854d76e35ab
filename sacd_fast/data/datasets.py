"""Datasets in the MVTec AD, BTAD and generic folder layouts (README, Data).

One rule covers all three. A dataset folder holds ``train/<good>`` (defect-free
images), ``test/<label>`` (``<good>`` plus one folder per defect class) and,
optionally, ``ground_truth/<label>/<stem>_mask.<ext>`` or
``ground_truth/<label>/<stem>.<ext>`` masks. ``<good>`` is ``good`` (MVTec AD,
generic) or ``ok`` (BTAD, whose defects are ``ko``). The folder is
``ROOT/CATEGORY`` when a category is given, else ``ROOT`` itself.

Every image becomes RGB float32 (3, S, S) in [0, 1] whatever its size and mode
(grayscale, RGBA, palette, 16-bit). Integer images are scaled by the bit
depth of their format (a 16-bit pixel of 256 is 256 / 65535, in every image),
float images must hold values in [0, 1]. Masks are resized with nearest
neighbour; a mask whose values are all 0 or 1 marks defects with 1, any other
mask is binarised at > 127.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from sacd_fast.files import require_file

GOOD_NAMES = ("good", "ok")
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def bit_depth(image: Image.Image) -> int:
    """Bits per sample of an integer grayscale image, from its mode and format
    (never from its values): 16 for 'I;16*' and PNG, TIFF's BitsPerSample, else 32."""
    if image.mode.startswith("I;16") or image.format == "PNG":
        return 16
    bits = getattr(image, "tag_v2", {}).get(258)
    return int(bits[0] if isinstance(bits, tuple) else bits) if bits else 32


def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float grayscale images as 8-bit 'L', scaled by
    the format's range, the same for every image."""
    array = np.asarray(image).astype(np.float64)
    if image.mode == "F":
        if array.size and (np.nanmin(array) < 0 or np.nanmax(array) > 1 or np.isnan(array).any()):
            raise ValueError(f"its float values span [{np.nanmin(array):g}, {np.nanmax(array):g}]; "
                             "float images must hold values in [0, 1]")
        scale = 255.0
    else:
        scale = 255.0 / (2 ** bit_depth(image) - 1)
    return Image.fromarray(np.clip(array * scale, 0, 255).round().astype(np.uint8), "L")


def open_image(path: str | os.PathLike, what: str) -> Image.Image:
    """``Image.open(path)``, decoded; ValueError naming ``what`` if it cannot be
    read or has more pixels than Pillow's safety limit
    (``PIL.Image.MAX_IMAGE_PIXELS``; Pillow itself only warns up to twice it)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
            image.load()
        return image
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot read {what}: it has more pixels than Pillow's safety limit of "
                         f"{Image.MAX_IMAGE_PIXELS:,} ({e}); resize it first") from e
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise ValueError(f"cannot read {what}: {e}") from e


def read_rgb(path: str | os.PathLike) -> Image.Image:
    """Open any image as 8-bit RGB; ValueError naming the file if it cannot be read."""
    with open_image(path, f"image {path}") as image:
        try:
            if mode_is_numeric(image.mode):
                image = _to_8bit(image)
            elif image.mode == "P" or image.mode == "LA" or image.mode == "PA":
                image = image.convert("RGBA")
            return image.convert("RGB")
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read image {path}: {e}") from e


def resized_pixels(image: Image.Image, size: int) -> torch.Tensor:
    """RGB PIL image -> uint8 (3, size, size) (bilinear, antialiased)."""
    resized = np.asarray(image.resize((size, size), Image.BILINEAR))
    return torch.from_numpy(resized.copy()).permute(2, 0, 1).contiguous()


def to_float(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 3, H, W) -> float32 in [0, 1]."""
    return pixels.float().div_(255.0)


def mask_strength(mask: Image.Image) -> np.ndarray:
    """How strongly each pixel of a mask image is marked, (H, W): its value in a
    grayscale mask, its brightest channel in a colour one (a palette mask
    through its palette), so a red-on-black or palette mask marks its pixels as
    a white-on-black one does."""
    if mode_is_numeric(mask.mode):
        return np.asarray(mask).astype(np.float64)
    if mask.mode in ("1", "L"):
        return np.asarray(mask.convert("L")).astype(np.float64)
    return np.asarray(mask.convert("RGB")).max(axis=2).astype(np.float64)


def mode_is_numeric(mode: str) -> bool:
    """Pillow's 16/32-bit integer and float modes."""
    return mode.startswith("I") or mode == "F"


def read_mask(path: Path, image_size: tuple[int, int], size: int, image_path: Path) -> torch.Tensor:
    """A binary float32 (1, size, size) mask; its size must match its image's.
    A pixel is a defect where it is marked more than half as strongly as the
    mask's most strongly marked pixel (:func:`mask_strength`): 1 in a mask of
    0s and 1s, 255 (or anything above 127) in an 8-bit one, any colour on black."""
    with open_image(path, f"mask {path}") as mask:
        strength = mask_strength(mask)
    if mask.size != image_size:
        raise ValueError(f"mask {path} is {mask.size[0]}x{mask.size[1]} but its image {image_path} "
                         f"is {image_size[0]}x{image_size[1]}")
    marked = Image.fromarray((strength > strength.max() / 2).astype(np.uint8) * 255)
    marked = marked.resize((size, size), Image.NEAREST)
    return torch.from_numpy((np.asarray(marked) > 0).astype(np.float32))[None]


def dataset_folder(root: str | os.PathLike, category: str | None = None) -> Path:
    """The folder holding train/ and test/; FileNotFoundError naming what is missing."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root not found: {root}")
    if category is None:
        return root
    folder = root / category
    if not folder.is_dir():
        present = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        hint = " (is --data the product folder itself? then leave out --category)" \
            if (root / "train").is_dir() else ""
        raise FileNotFoundError(f"category {category!r} not found in {root}; the folders there: "
                                f"{', '.join(present) or 'none'}{hint}")
    return folder


def good_name(split_folder: Path) -> str:
    for name in GOOD_NAMES:
        if (split_folder / name).is_dir():
            return name
    raise FileNotFoundError(f"no {' or '.join(GOOD_NAMES)} folder in {split_folder}")


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int  # 0 normal, 1 anomalous
    defect: str  # the test/<label> folder name
    mask: Path | None


class ImageSource(Dataset):
    """Decoding and resizing shared by the datasets, with an in-memory cache.

    Each image is decoded and resized once; the uint8 result stays in memory
    while the cache holds less than ``cache_mb`` (a 256² image takes 192 KiB),
    so later epochs decode nothing. :meth:`check` opens every image (and mask)
    once up front, so a bad file is named before any work starts.
    """

    def __init__(self, paths: list[Path], image_size: int, cache_mb: float = 0.0):
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
        self.paths = paths
        self.image_size = image_size
        self.cache_bytes = int(max(cache_mb, 0.0) * 2**20)
        self._cache: dict[int, tuple[torch.Tensor, tuple[int, int]]] = {}
        self._cached = 0

    def __len__(self) -> int:
        return len(self.paths)

    def pixels(self, index: int) -> tuple[torch.Tensor, tuple[int, int]]:
        """uint8 (3, S, S) pixels of image ``index`` and its original (height, width)."""
        entry = self._cache.get(index)
        if entry is None:
            image = read_rgb(self.paths[index])
            entry = (resized_pixels(image, self.image_size), (image.height, image.width))
            if self._cached + entry[0].numel() <= self.cache_bytes:
                self._cache[index] = entry
                self._cached += entry[0].numel()
        return entry

    def check_item(self, index: int) -> None:
        """Read what item ``index`` needs; ValueError naming the file if it cannot be read."""
        self.pixels(index)

    def check(self, progress: bool = True) -> None:
        """Open every file once; ValueError listing those that cannot be read."""
        bad = []
        for index in tqdm(range(len(self)), desc="checking images", disable=not progress, leave=False):
            try:
                self.check_item(index)
            except ValueError as e:
                bad.append(str(e))
        if bad:
            more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
            raise ValueError(f"{len(bad)} of {len(self)} images cannot be used: " + "; ".join(bad[:5]) + more)


class AnomalyDataset(ImageSource):
    """Train or test split of one product.

    Items are dicts: ``image`` float32 (3, S, S) in [0, 1]; ``label`` 0/1;
    ``mask`` float32 (1, S, S) (zeros for normal images and for defects without
    a mask); ``has_mask`` bool (True for normal images and masked defects);
    ``size`` the original (height, width); ``defect`` and ``path`` strings.
    The default collate batches them.

    Args:
        root: dataset root (ROOT or ROOT/CATEGORY, see the module docstring).
        category: sub-folder of ``root``, or None.
        split: "train" or "test".
        image_size: output side S.
        cache_mb: memory for decoded images (:class:`ImageSource`).
    """

    def __init__(self, root, category: str | None = None, split: str = "train", image_size: int = 256,
                 cache_mb: float = 0.0):
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        self.folder = dataset_folder(root, category)
        split_folder = self.folder / split
        if not split_folder.is_dir():
            raise FileNotFoundError(f"no {split}/ folder in {self.folder}")
        good = good_name(split_folder)
        labels = [good] if split == "train" else sorted(p.name for p in split_folder.iterdir() if p.is_dir())
        self.samples: list[Sample] = []
        for label in labels:
            images = list_images(split_folder / label)
            masks = self._masks(label, images) if label != good else {}
            self.samples += [Sample(p, int(label != good), label, masks.get(p.stem)) for p in images]
        if not self.samples:
            raise ValueError(f"no images in {split_folder / good if split == 'train' else split_folder}")
        super().__init__([sample.path for sample in self.samples], image_size, cache_mb)

    def _masks(self, label: str, images: list[Path]) -> dict[str, Path]:
        """Masks of one defect class by image stem; a mask without its image is an error."""
        folder = self.folder / "ground_truth" / label
        if not folder.is_dir():
            return {}
        stems = {p.stem for p in images}
        masks = {}
        for path in list_images(folder):
            stem = path.stem[: -len("_mask")] if path.stem.endswith("_mask") else path.stem
            if stem not in stems:
                raise ValueError(f"mask {path} has no image test/{label}/{stem}.* in {self.folder}")
            masks[stem] = path
        return masks

    def mask(self, index: int, original: tuple[int, int]) -> torch.Tensor:
        sample, size = self.samples[index], self.image_size
        if sample.mask is None:
            return torch.zeros(1, size, size)
        return read_mask(sample.mask, (original[1], original[0]), size, sample.path)

    def check_item(self, index: int) -> None:
        self.mask(index, self.pixels(index)[1])

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        pixels, original = self.pixels(index)
        return {"image": to_float(pixels), "label": sample.label, "mask": self.mask(index, original),
                "has_mask": sample.label == 0 or sample.mask is not None, "defect": sample.defect,
                "size": torch.tensor(original), "path": str(sample.path)}


def images_below(folder: Path, exclude: tuple[Path, ...] = ()) -> list[Path]:
    """Image files in ``folder`` and its subfolders, sorted by path; hidden
    folders, folders reached through a link and those in ``exclude`` are not entered."""
    skip = {os.path.realpath(p) for p in exclude}
    found = []
    for parent, folders, _ in os.walk(folder):
        folders[:] = sorted(f for f in folders if not f.startswith(".")
                            and os.path.realpath(os.path.join(parent, f)) not in skip)
        found += list_images(Path(parent))
    return sorted(found)


class ImageFiles(ImageSource):
    """Loose image files (for ``sacd-fast predict``): items have ``image``, ``size`` and ``path``.
    A folder contributes its images and those of its subfolders (:func:`images_below`, less ``exclude``)."""

    def __init__(self, paths, image_size: int, cache_mb: float = 0.0, exclude: tuple[Path, ...] = ()):
        found = []
        for path in map(Path, paths):
            if path.is_dir():
                found += images_below(path, exclude)
            elif path.exists() or path.is_symlink():
                found.append(require_file(path, "image"))
            else:
                raise FileNotFoundError(f"no such file or folder: {path}")
        if not found:
            raise ValueError(f"no images found in {', '.join(map(str, paths))} or their subfolders "
                             f"({', '.join(sorted(IMAGE_EXTENSIONS))})")
        super().__init__(found, image_size, cache_mb)

    def __getitem__(self, index: int) -> dict:
        pixels, original = self.pixels(index)
        return {"image": to_float(pixels), "size": torch.tensor(original), "path": str(self.paths[index])}
