"""Scoring whole datasets, threshold calibration on normal images, and evaluation."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from . import metrics
from .checkpoint import load_checkpoint
from .fast import fast as make_fast
from .model import SACD, normalize


def load_for_inference(path, device, fast: bool = False) -> tuple[SACD, dict]:
    """The model of a checkpoint written by ``sacd-fast train`` (read once), on
    ``device`` (wrapped by :func:`sacd_fast.fast` with ``fast``), and its thresholds."""
    payload = load_checkpoint(path)
    thresholds = payload.get("thresholds")
    if thresholds is None:
        raise ValueError(f"{path} has no calibrated threshold: it was not written by `sacd-fast train`, or its "
                         "training has not finished (run the same train command again to finish it)")
    model = SACD.from_payload(payload, path).to(device)
    return (make_fast(model) if fast else model), thresholds


def predict_dataset(model: SACD, dataset: Dataset, batch_size: int = 16, device="cpu",
                    progress: bool = True, desc: str = "scoring") -> dict:
    """Run ``model.predict`` over a dataset of sacd_fast items.

    Returns a dict of numpy arrays: ``scores`` (N,), ``maps`` (N, H, W), and
    every other per-item field of the dataset collated (``path``, ``label``,
    ``mask`` (N, H, W), ``has_mask``, ``defect`` where present).
    """
    model.to(device).eval()
    out: dict[str, list] = {}
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
        prediction = model.predict(normalize(batch["image"].to(device)))
        out.setdefault("scores", []).append(prediction.scores.cpu().numpy())
        out.setdefault("maps", []).append(prediction.maps.cpu().numpy())
        out.setdefault("images", []).append(batch["image"].numpy())
        for key, value in batch.items():
            if key != "image":
                out.setdefault(key, []).append(value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value))
    result = {k: np.concatenate(v) for k, v in out.items()}
    if "mask" in result:
        result["mask"] = result["mask"][:, 0]
    return result


def calibrate(model: SACD, normal: Dataset, batch_size: int = 16, device="cpu", progress: bool = True) -> dict:
    """Decision threshold from normal (defect-free, held-out) images.

    ``image``: the highest score seen on them; an image scores above it exactly
    when some pixel of its map does, so the same value outlines the regions.
    ``normal_level``: the median map value, the bottom of the heatmap colour scale.
    """
    result = predict_dataset(model, normal, batch_size, device, progress, desc="calibrating")
    return {"image": float(result["scores"].max()), "normal_level": float(np.median(result["maps"])),
            "images": len(normal)}


def evaluate_predictions(result: dict) -> dict:
    """metrics.json content for :func:`predict_dataset`'s output on a test split.

    Pixel metrics use the images that have a ground truth (normal images and
    masked defects); defect classes without masks are listed as skipped.
    """
    labels, has_mask = result["label"], result["has_mask"].astype(bool)
    report = metrics.evaluate(labels, result["scores"], result["mask"][has_mask], result["maps"][has_mask])
    skipped = sorted({d for d, m, lab in zip(result["defect"], has_mask, labels) if lab and not m})
    report["pixel_metrics_skipped_for"] = skipped
    report["images"] = int(len(labels))
    report["anomalous_images"] = int(labels.sum())
    return report
