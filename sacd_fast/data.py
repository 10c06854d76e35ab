"""Datasets in the MVTec AD, BTAD and generic folder layouts (SACD.md, Data).

One rule covers all three. A dataset folder holds ``train/<good>`` (defect-free
images), ``test/<label>`` (``<good>`` plus one folder per defect class) and,
optionally, ``ground_truth/<label>/<stem>_mask.<ext>`` or
``ground_truth/<label>/<stem>.<ext>`` masks. ``<good>`` is ``good`` (MVTec AD,
generic) or ``ok`` (BTAD, whose defects are ``ko``). The folder is
``ROOT/CATEGORY`` when a category is given, else ``ROOT`` itself.

Every image becomes RGB float32 (3, S, S) in [0, 1] whatever its size and mode
(grayscale, RGBA, palette, 16-bit); masks are resized with nearest neighbour
and binarised at > 127.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

MVTEC_CATEGORIES = ("bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut", "pill",
                    "screw", "tile", "toothbrush", "transistor", "wood", "zipper")
BTAD_CATEGORIES = ("01", "02", "03")
GOOD_NAMES = ("good", "ok")
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float grayscale images as 8-bit 'L'."""
    array = np.asarray(image)
    if image.mode == "F":
        scale = 255.0 if array.max(initial=0) <= 1.0 else 1.0
    else:
        scale = 255.0 / 65535.0 if array.max(initial=0) > 255 else 1.0
    return Image.fromarray(np.clip(array.astype(np.float64) * scale, 0, 255).round().astype(np.uint8), "L")


def read_rgb(path: str | os.PathLike) -> Image.Image:
    """Open any image as 8-bit RGB; ValueError naming the file if it cannot be read."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode.startswith("I") or image.mode == "F":
                image = _to_8bit(image)
            elif image.mode == "P" or image.mode == "LA" or image.mode == "PA":
                image = image.convert("RGBA")
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from e


def image_tensor(image: Image.Image, size: int) -> torch.Tensor:
    """RGB PIL image -> float32 (3, size, size) in [0, 1] (bilinear, antialiased)."""
    image = image.resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def read_mask(path: Path, image_size: tuple[int, int], size: int, image_path: Path) -> torch.Tensor:
    """A binary float32 (1, size, size) mask; its size must match its image's."""
    try:
        with Image.open(path) as mask:
            mask = mask.convert("L")
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"cannot read mask {path}: {e}") from e
    if mask.size != image_size:
        raise ValueError(f"mask {path} is {mask.size[0]}x{mask.size[1]} but its image {image_path} "
                         f"is {image_size[0]}x{image_size[1]}")
    mask = mask.resize((size, size), Image.NEAREST)
    return torch.from_numpy((np.asarray(mask) > 127).astype(np.float32))[None]


def dataset_folder(root: str | os.PathLike, category: str | None = None) -> Path:
    """The folder holding train/ and test/; FileNotFoundError naming what is missing."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root not found: {root}")
    if category is None:
        return root
    folder = root / category
    if not folder.is_dir():
        present = sorted(p.name for p in root.iterdir() if p.is_dir())
        known = [c for c in MVTEC_CATEGORIES + BTAD_CATEGORIES if c not in present]
        hint = f" (MVTec AD categories not present: {', '.join(known)})" if category in known else ""
        raise FileNotFoundError(f"category {category!r} not found in {root}; present: "
                                f"{', '.join(present) or 'nothing'}{hint}")
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


class AnomalyDataset(Dataset):
    """Train or test split of one product.

    Items are dicts: ``image`` float32 (3, S, S) in [0, 1]; ``label`` 0/1;
    ``mask`` float32 (1, S, S) (zeros for normal images and for defects without
    a mask); ``has_mask`` bool (True for normal images and masked defects);
    ``defect`` and ``path`` strings. The default collate batches them.

    Args:
        root: dataset root (ROOT or ROOT/CATEGORY, see the module docstring).
        category: sub-folder of ``root``, or None.
        split: "train" or "test".
        image_size: output side S.
    """

    def __init__(self, root, category: str | None = None, split: str = "train", image_size: int = 256):
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        self.folder = dataset_folder(root, category)
        self.image_size = image_size
        split_folder = self.folder / split
        if not split_folder.is_dir():
            raise FileNotFoundError(f"no {split}/ folder in {self.folder}")
        good = good_name(split_folder)
        labels = [good] if split == "train" else sorted(p.name for p in split_folder.iterdir() if p.is_dir())
        self.samples: list[Sample] = []
        self.defects_without_masks: list[str] = []
        for label in labels:
            images = list_images(split_folder / label)
            masks = self._masks(label, images) if label != good else {}
            if label != good and not masks:
                self.defects_without_masks.append(label)
            self.samples += [Sample(p, int(label != good), label, masks.get(p.stem)) for p in images]
        if not self.samples:
            raise ValueError(f"no images in {split_folder / good if split == 'train' else split_folder}")

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

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        image = read_rgb(sample.path)
        size = self.image_size
        if sample.mask is not None:
            mask = read_mask(sample.mask, image.size, size, sample.path)
        else:
            mask = torch.zeros(1, size, size)
        return {"image": image_tensor(image, size), "label": sample.label, "mask": mask,
                "has_mask": sample.label == 0 or sample.mask is not None, "defect": sample.defect,
                "path": str(sample.path)}


class ImageFiles(Dataset):
    """Loose image files (for ``sacd-fast predict``): items have ``image`` and ``path``."""

    def __init__(self, paths, image_size: int):
        self.paths, self.image_size = [], image_size
        for path in map(Path, paths):
            if path.is_dir():
                self.paths += list_images(path)
            elif path.is_file():
                self.paths.append(path)
            else:
                raise FileNotFoundError(f"no such file or folder: {path}")
        if not self.paths:
            raise ValueError(f"no images found in {', '.join(map(str, paths))}")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        path = self.paths[index]
        return {"image": image_tensor(read_rgb(path), self.image_size), "path": str(path)}
