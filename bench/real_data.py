"""Convert public industrial defect datasets into the MVTec AD layout.

    python bench/real_data.py kolektor --repo GIT_DIR --out ROOT
    python bench/real_data.py mpdd     --repo GIT_DIR --out ROOT
    python bench/real_data.py aitex    --repo GIT_DIR --out ROOT [--fabrics 02,03]

GIT_DIR is a clone (or bare git directory) of the repository named below; the
images are read at the commit named here, so a conversion is reproducible.
None of these images may be redistributed with this project (their licences
are unstated or non-commercial): convert them where you use them.

* KolektorSDD, songpeixuan22/Unet-Defect-Detection-in-kolektorSSD at 50cf572a15d1:
  ROOT/kolektor, commutator surfaces with crack masks;
* MPDD metal_plate, BupeshKumarR/defect-segmentation-for-mpdd at 5d8b9cddfa7a:
  ROOT/metal_plate, painted plates with defect masks;
* AITEX, kananmittal/Fabric-Classification at c27e4ef2871d: ROOT/aitex_FF,
  one fabric each, 256x256 tiles of its 4096x256 strips.

Normal images are split between train/good and test/good by a seeded shuffle
(AITEX by whole strips, so no strip gives tiles to both); duplicates (same
bytes) are dropped.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import random
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image

COMMITS = {
    "kolektor": "50cf572a15d12bcd951dd2bdcbcf5356cc52d6bd",
    "mpdd": "5d8b9cddfa7af2f145bafaaf6eca53294f5aa7b0",
    "aitex": "c27e4ef2871dbc4046b00ec1cbf2b6fe534789bc",
}


class Snapshot:
    """Files of a git directory at one commit."""

    def __init__(self, repo: str, commit: str):
        self.repo, self.commit = repo, commit

    def names(self, prefix: str = "") -> list[str]:
        out = subprocess.run(["git", "-C", self.repo, "ls-tree", "-r", "--name-only", self.commit, prefix],
                             check=True, capture_output=True, text=True).stdout
        return sorted(out.splitlines())

    def read(self, name: str) -> bytes:
        return subprocess.run(["git", "-C", self.repo, "show", f"{self.commit}:{name}"], check=True,
                              capture_output=True).stdout

    def image(self, name: str) -> Image.Image:
        return Image.open(io.BytesIO(self.read(name)))


def save(image: Image.Image | np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    (Image.fromarray(image) if isinstance(image, np.ndarray) else image).save(path)


def binary(mask: Image.Image) -> np.ndarray:
    return np.asarray(mask.convert("L")) > 0


def split_normals(items: list, test_share: float, seed: int) -> tuple[list, list]:
    items = sorted(items)
    random.Random(seed).shuffle(items)
    held = round(len(items) * test_share)
    return items[held:], items[:held]


def distinct(snapshot: Snapshot, names):
    """(name, bytes) of each file in ``names`` whose bytes were not seen before."""
    seen = set()
    for name in names:
        data = snapshot.read(name)
        digest = hashlib.sha256(data).hexdigest()
        if digest not in seen:
            seen.add(digest)
            yield name, data


def save_defect(folder: Path, defect: str, stem: str, image, mask: np.ndarray) -> None:
    save(image, folder / "test" / defect / f"{stem}.png")
    save((mask * 255).astype(np.uint8), folder / "ground_truth" / defect / f"{stem}_mask.png")


def save_normals(folder: Path, normals: list[tuple[str, Image.Image]], test_share: float, seed: int) -> None:
    train, test = split_normals([s for s, _ in normals], test_share, seed)
    images = dict(normals)
    for split, stems in (("train", train), ("test", test)):
        for stem in stems:
            save(images[stem], folder / split / "good" / f"{stem}.png")


def kolektor(snapshot: Snapshot, out: Path, seed: int) -> None:
    folder, normals = out / "kolektor", []
    names = [n for n in snapshot.names("data")
             if n.endswith(".jpg") and not n.startswith("data/kos13/kos08/")]  # kos13/kos08 repeats kos08
    for name, data in distinct(snapshot, names):
        image = Image.open(io.BytesIO(data)).convert("L")
        mask = binary(snapshot.image(name[: -len(".jpg")] + "_label.bmp"))
        stem = name.split("/")[1] + "_" + Path(name).stem
        if mask.any():
            save_defect(folder, "crack", stem, image, mask)
        else:
            normals.append((stem, image))
    save_normals(folder, normals, 0.25, seed)


def mpdd(snapshot: Snapshot, out: Path, seed: int) -> None:
    folder, normals = out / "metal_plate", []
    names = snapshot.names("data_supervised/metal_plate")
    for name, data in distinct(snapshot, [n for n in names if "/images/" in n]):
        stem = name.split("/")[2] + "_" + Path(name).stem
        image = Image.open(io.BytesIO(data)).convert("RGB")
        mask_name = name.replace("/images/", "/masks/")
        mask = binary(snapshot.image(mask_name)) if mask_name in names else None
        if mask is not None and mask.any():
            save_defect(folder, "defect", stem, image, mask)
        elif mask is not None:
            normals.append((stem, image))
    save_normals(folder, normals, 0.4, seed)


def aitex(snapshot: Snapshot, out: Path, seed: int, fabrics: list[str], tile: int = 256) -> None:
    for fabric in fabrics:
        folder = out / f"aitex_{fabric}"
        strips = [n for n in snapshot.names("NODefect_images") if n.endswith(f"_{fabric}.png")]
        train, test = split_normals(strips, 0.3, seed)
        for split, names in (("train", train), ("test", test)):
            for name in names:
                image = np.asarray(snapshot.image(name).convert("L"))
                for x in range(0, image.shape[1] - tile + 1, tile):
                    save(image[:, x:x + tile], folder / split / "good" / f"{Path(name).stem}_{x // tile:02d}.png")
        masks = set(snapshot.names("Mask_images"))
        for name in snapshot.names("Defect_images"):
            stem = Path(name).stem
            mask_name = f"Mask_images/{stem}_mask.png"
            if not stem.endswith(f"_{fabric}") or mask_name not in masks:
                continue
            image = np.asarray(snapshot.image(name).convert("L"))
            mask = binary(snapshot.image(mask_name))
            if mask.shape != image.shape or not mask.any():
                continue  # a mask of another size, or an empty one, says nothing usable
            for x in range(0, image.shape[1] - tile + 1, tile):
                if mask[:, x:x + tile].any():  # tiles without the defect are not test normals: they border it
                    save_defect(folder, "defect", f"{stem}_{x // tile:02d}", image[:, x:x + tile], mask[:, x:x + tile])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=sorted(COMMITS))
    parser.add_argument("--repo", required=True, help="a clone or git directory of the dataset's repository")
    parser.add_argument("--out", required=True, help="MVTec-layout root to write")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/test split of normal images")
    parser.add_argument("--fabrics", default="02,03", help="AITEX fabric codes, one category each")
    args = parser.parse_args()
    snapshot, out = Snapshot(args.repo, COMMITS[args.dataset]), Path(args.out)
    if args.dataset == "aitex":
        aitex(snapshot, out, args.seed, args.fabrics.split(","))
    else:
        {"kolektor": kolektor, "mpdd": mpdd}[args.dataset](snapshot, out, args.seed)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
