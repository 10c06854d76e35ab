"""A procedurally generated product in the MVTec AD layout (``sacd-fast synth-data``).

Each image shows one textured disc (a pressed tablet with a groove ring and
an embossed mark) on a dark, slightly noisy background. Normal images vary
in position, size, texture, tint and lighting, so a pixel-by-pixel comparison
with an average image does not find the defects. Defects are small and of a
contrast similar to the texture's: scratches, cracks, holes, stains and
missing pieces, each with its ground-truth mask.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from tqdm.auto import tqdm

from sacd_fast.files import atomic_write, exclusive_folder, temporary_path

SIZE = 256


def _smooth_noise(rng: np.random.Generator, sigma: float, shape=(SIZE, SIZE)) -> np.ndarray:
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return noise / (noise.std() + 1e-12)


def _stroke(points: np.ndarray, width: float) -> np.ndarray:
    """Boolean mask of a polyline ``points`` (N, 2) in (y, x) drawn ``width`` px wide."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    for (y0, x0), (y1, x1) in zip(points[:-1], points[1:]):
        dy, dx = y1 - y0, x1 - x0
        t = np.clip(((yy - y0) * dy + (xx - x0) * dx) / max(dy * dy + dx * dx, 1e-9), 0, 1)
        mask |= (yy - y0 - t * dy) ** 2 + (xx - x0 - t * dx) ** 2 <= (width / 2) ** 2
    return mask


def normal_disc(rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """A normal image (SIZE, SIZE, 3) float in [0, 1] and its geometry."""
    yy, xx = np.mgrid[:SIZE, :SIZE].astype(np.float64)
    cy, cx = SIZE / 2 + rng.uniform(-10, 10, 2)
    radius = SIZE * rng.uniform(0.33, 0.37)
    r = np.hypot(yy - cy, xx - cx)
    inside = np.clip(radius - r + 0.5, 0, 1)  # anti-aliased edge
    base = np.array([0.78, 0.64, 0.47]) * rng.uniform(0.92, 1.08) + rng.uniform(-0.03, 0.03, 3)
    texture = 0.035 * _smooth_noise(rng, 1.2) + 0.012 * _smooth_noise(rng, 0.6)  # grain + sensor noise
    light = rng.uniform(-1, 1, 2)
    shading = 1 + 0.12 * ((yy - cy) * light[0] + (xx - cx) * light[1]) / radius
    groove = 1 - 0.18 * np.exp(-((r - 0.62 * radius) / 1.6) ** 2)
    angle = rng.uniform(0, 2 * np.pi)  # an embossed bar through the centre, at any angle
    along = (yy - cy) * np.sin(angle) + (xx - cx) * np.cos(angle)
    across = -(yy - cy) * np.cos(angle) + (xx - cx) * np.sin(angle)
    mark = 1 + 0.08 * np.exp(-(across / 3.0) ** 2) * (np.abs(along) < 0.4 * radius)
    disc = base * (shading * groove * mark * (1 + texture))[..., None]
    background = 0.16 + 0.015 * _smooth_noise(rng, 2.0)[..., None] + np.zeros(3)
    image = inside[..., None] * disc + (1 - inside[..., None]) * background
    return np.clip(image, 0, 1), {"cy": cy, "cx": cx, "radius": radius, "background": background}


def _point_inside(rng, g, margin):
    rho = g["radius"] * np.sqrt(rng.uniform(0, (1 - margin) ** 2))
    phi = rng.uniform(0, 2 * np.pi)
    return np.array([g["cy"] + rho * np.sin(phi), g["cx"] + rho * np.cos(phi)])


# Each defect changes ``image`` (SIZE, SIZE, 3) in place and returns its boolean mask.

def _scratch(image, g, rng):
    start = _point_inside(rng, g, 0.35)
    direction = rng.normal(size=2)
    direction /= np.linalg.norm(direction)
    length = rng.uniform(30, 55)
    bend = rng.uniform(-8, 8) * np.array([-direction[1], direction[0]])
    t = np.linspace(0, 1, 12)[:, None]
    points = start + t * length * direction + 4 * t * (1 - t) * bend
    mask = _stroke(points, rng.uniform(2.0, 3.0))
    image[mask] = np.clip(image[mask] * 1.22 + 0.03, 0, 1)
    return mask


def _crack(image, g, rng):
    point = _point_inside(rng, g, 0.3)
    heading = rng.uniform(0, 2 * np.pi)
    points = [point]
    for _ in range(rng.integers(8, 13)):
        heading += rng.normal(0, 0.6)
        point = point + rng.uniform(3, 5) * np.array([np.sin(heading), np.cos(heading)])
        points.append(point)
    mask = _stroke(np.array(points), rng.uniform(1.2, 2.0))
    image[mask] *= 0.62
    return mask


def _hole(image, g, rng):
    cy, cx = _point_inside(rng, g, 0.25)
    rad = rng.uniform(4, 6.5)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    d = np.hypot(yy - cy, xx - cx)
    image[d <= rad] *= 0.35
    image[(d > rad) & (d <= rad + 1)] *= 1.12  # a bright rim
    return d <= rad + 1


def _stain(image, g, rng):
    cy, cx = _point_inside(rng, g, 0.3)
    rad = rng.uniform(9, 15)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    blob = rad - np.hypot(yy - cy, xx - cx) + 3 * _smooth_noise(rng, 4.0)
    alpha = np.clip(blob / 3, 0, 1)
    tint = np.array([0.84, 0.88, 0.78]) * rng.uniform(0.95, 1.02)
    image[:] = image * (1 - alpha[..., None]) + image * tint * alpha[..., None]
    return alpha > 0.5


def _missing(image, g, rng):
    phi = rng.uniform(0, 2 * np.pi)
    bite = rng.uniform(12, 18)
    cy = g["cy"] + g["radius"] * np.sin(phi)
    cx = g["cx"] + g["radius"] * np.cos(phi)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    on_disc = np.hypot(yy - g["cy"], xx - g["cx"]) <= g["radius"] + 0.5
    mask = on_disc & (np.hypot(yy - cy, xx - cx) <= bite)
    image[mask] = g["background"][mask]
    return mask


DEFECTS = {"scratch": _scratch, "crack": _crack, "hole": _hole, "stain": _stain, "missing": _missing}


def add_defect(kind: str, image: np.ndarray, g: dict, rng: np.random.Generator) -> np.ndarray:
    """Add one defect of ``kind`` to ``image`` in place; returns its boolean mask."""
    if kind not in DEFECTS:
        raise ValueError(f"unknown defect {kind!r}; choose from {tuple(DEFECTS)}")
    return DEFECTS[kind](image, g, rng)


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray((np.clip(array, 0, 1) * 255).round().astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def check_category(category: str) -> str:
    """``category`` if it is one plain folder name (no path, not hidden); ValueError otherwise."""
    if not isinstance(category, str) or not category or category in (".", "..") or category.startswith(".") \
            or "/" in category or "\\" in category or "\0" in category or os.path.isabs(category):
        raise ValueError(f"--category must be a plain folder name (no path, not starting with '.'), "
                         f"got {category!r}")
    return category


def write_dataset(root: str | os.PathLike, category: str = "disc", seed: int = 0, n_train: int = 160,
                  n_test_good: int = 20, n_per_defect: int = 8, progress: bool = True,
                  overwrite: bool = False) -> Path:
    """Write ROOT/CATEGORY/{train/good, test/<label>, ground_truth/<defect>} and return that folder.

    It keeps the rules every sacd-fast command keeps: ``root`` is locked for
    the run (:func:`sacd_fast.files.exclusive_folder`), CATEGORY is one folder
    name inside it, and the dataset is generated in a hidden folder beside
    its destination and renamed into place, so an interrupted run leaves no
    half-written dataset (its leftovers are removed by the next run). A
    CATEGORY folder that already holds files is refused unless ``overwrite``,
    which replaces the files of the same names, each whole, and keeps the rest.
    """
    check_category(category)
    for name, value in (("n_train", n_train), ("n_test_good", n_test_good), ("n_per_defect", n_per_defect)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    with exclusive_folder(root, "sacd-fast synth-data"):
        folder = Path(root) / category
        if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
            raise ValueError(f"{folder} is not a folder: choose another --out or --category")
        occupied = folder.is_dir() and any(folder.iterdir())
        if occupied and not overwrite:
            raise FileExistsError(f"{folder} already holds files: choose an empty folder, or pass --overwrite to "
                                  "replace the generated files there (others are kept)")
        staging = temporary_path(folder)
        staging.mkdir()
        try:
            _generate(staging, category, seed, n_train, n_test_good, n_per_defect, progress)
            if not occupied:
                with contextlib.suppress(FileNotFoundError):
                    folder.rmdir()  # an empty folder
                os.rename(staging, folder)
                return folder
            for path in sorted(p for p in staging.rglob("*") if p.is_file()):
                target = folder / path.relative_to(staging)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return folder


def _generate(folder: Path, category: str, seed: int, n_train: int, n_test_good: int, n_per_defect: int,
              progress: bool) -> None:
    rng = np.random.default_rng(seed)
    jobs = [("train", "good", i) for i in range(n_train)] + [("test", "good", i) for i in range(n_test_good)]
    jobs += [("test", kind, i) for kind in DEFECTS for i in range(n_per_defect)]
    for split, label, i in tqdm(jobs, desc=f"synth-data {category}", disable=not progress):
        image_rng = np.random.default_rng(rng.integers(2**63))
        image, geometry = normal_disc(image_rng)
        out = folder / split / label
        out.mkdir(parents=True, exist_ok=True)
        if label != "good":
            mask = add_defect(label, image, geometry, image_rng)
            masks = folder / "ground_truth" / label
            masks.mkdir(parents=True, exist_ok=True)
            data = _png(mask.astype(np.float64))
            atomic_write(masks / f"{i:03d}_mask.png", lambda f, data=data: f.write(data))
        data = _png(image)
        atomic_write(out / f"{i:03d}.png", lambda f, data=data: f.write(data))
