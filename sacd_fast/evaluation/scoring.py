"""Scoring whole datasets, threshold calibration on normal images, and evaluation at the threshold."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from sacd_fast.evaluation import metrics
from sacd_fast.evaluation.calibration import DEFAULT_FALSE_ALARM_RATE, calibrate_threshold
from sacd_fast.network.model import SACD, normalize


def predict_dataset(model, dataset: Dataset, batch_size: int = 16, device="cpu",
                    progress: bool = True, desc: str = "scoring") -> dict:
    """Run ``model.predict`` over a dataset of sacd_fast items (``model``: a
    :class:`SACD` in eval mode on ``device``, its fast wrapper, or an
    :class:`sacd_fast.deploy.export.Inferencer`).

    Returns a dict of numpy arrays: ``scores`` (N,), ``maps`` (N, H, W), and
    every other per-item field of the dataset collated (``path``, ``size``,
    ``label``, ``mask`` (N, H, W), ``has_mask``, ``defect`` where present).
    """
    out: dict[str, list] = {}
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
        prediction = model.predict(normalize(batch["image"].to(device)))
        out.setdefault("scores", []).append(prediction.scores.cpu().numpy())
        out.setdefault("maps", []).append(prediction.maps.cpu().numpy())
        for key, value in batch.items():
            if key != "image":
                out.setdefault(key, []).append(value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value))
    result = {k: np.concatenate(v) for k, v in out.items()}
    broken = ~np.isfinite(result["scores"]) | ~np.isfinite(result["maps"]).reshape(len(result["maps"]), -1).all(1)
    if broken.any():
        names = [str(p) for p in np.asarray(result["path"])[broken][:3]] if "path" in result else []
        raise ValueError(f"the model gave NaN or infinite anomaly maps for {int(broken.sum())} of {len(broken)} "
                         f"images ({', '.join(names)}): its weights or the file it was read from are broken")
    if "mask" in result:
        result["mask"] = result["mask"][:, 0]
    return result


def calibrate(model: SACD, normal: Dataset, batch_size: int = 16, device="cpu", progress: bool = True,
              false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE) -> dict:
    """Decision threshold from normal (defect-free, held-out) images, for a target
    false-alarm rate (:func:`sacd_fast.evaluation.calibration.calibrate_threshold`). An image
    scores above the threshold exactly when some pixel of its map does, so the
    same value outlines the regions. ``normal_level``, the median map value, is
    the bottom of the heatmap colour scale."""
    result = predict_dataset(model, normal, batch_size, device, progress, desc="calibrating")
    return {**calibrate_threshold(result["scores"], false_alarm_rate),
            "normal_level": float(np.median(result["maps"]))}


def at_threshold(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    """Confusion counts, precision, recall, F1 and false-alarm rate of ``scores > threshold``."""
    flagged, labels = np.asarray(scores) > threshold, np.asarray(labels).astype(bool)
    tp, fp = int((flagged & labels).sum()), int((flagged & ~labels).sum())
    fn, tn = int((~flagged & labels).sum()), int((~flagged & ~labels).sum())
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = 2 * precision * recall / (precision + recall) if precision and recall else 0.0
    return {"threshold": float(threshold), "true_positives": tp, "false_positives": fp, "true_negatives": tn,
            "false_negatives": fn, "precision": precision, "recall": recall, "f1": f1,
            "false_alarm_rate": fp / (fp + tn) if fp + tn else None}


def evaluate_predictions(result: dict) -> dict:
    """metrics.json content for :func:`predict_dataset`'s output on a test split.

    Pixel metrics use the images that have a ground truth (normal images and
    masked defects); defect classes without masks are listed as skipped,
    defect images whose mask marks no pixel as ``empty_masks``, and where the
    pixel metrics are null, ``pixel_metrics_missing_because`` says why.
    """
    labels, has_mask = result["label"], result["has_mask"].astype(bool)
    report = metrics.evaluate(labels, result["scores"], result["mask"][has_mask], result["maps"][has_mask])
    skipped = sorted({d for d, m, lab in zip(result["defect"], has_mask, labels) if lab and not m})
    report["pixel_metrics_skipped_for"] = skipped
    masked = (labels == 1) & has_mask
    empty = masked & ~result["mask"].reshape(len(labels), -1).any(1)
    report["empty_masks"] = [str(p) for p in np.asarray(result["path"])[empty]]
    if report["pixel_auroc"] is None:
        report["pixel_metrics_missing_because"] = (
            "the test split has no defect images" if not labels.any() else
            "no defect image has a mask (ground_truth/<defect>/<image>_mask.png)" if not masked.any() else
            f"the masks of all {int(masked.sum())} defect images mark no pixel")
    report["images"] = int(len(labels))
    report["anomalous_images"] = int(labels.sum())
    defects, normal, scores = np.asarray(result["defect"]), labels == 0, result["scores"]
    report["image_auroc_per_defect"] = {  # each defect class against the normal images
        d: metrics.image_auroc(labels[normal | (defects == d)], scores[normal | (defects == d)])
        for d in sorted(set(defects[labels == 1]))} if normal.any() else {}
    return report
