"""Scoring whole datasets, threshold calibration on normal images, and evaluation at the threshold."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from sacd_fast.evaluation import metrics
from sacd_fast.evaluation.calibration import DEFAULT_FALSE_ALARM_RATE, Thresholds
from sacd_fast.network.model import SACD, normalize


@dataclass
class Predictions:
    """The per-image results of scoring a dataset, in its order: ``scores`` (N,) and ``maps`` (N, H, W) of
    the model, the image ``path`` (N,) and ``size`` (N, 2: width, height) for images read from files, and for a
    test split ``label``
    (N,: 1 anomalous), ``defect`` (N,: the defect folder, "good" for normal images), ``mask`` (N, H, W) and
    ``has_mask`` (N,: whether the image has a ground truth: normal images do)."""

    scores: np.ndarray
    maps: np.ndarray
    path: np.ndarray | None = None
    size: np.ndarray | None = None
    label: np.ndarray | None = None
    defect: np.ndarray | None = None
    mask: np.ndarray | None = None
    has_mask: np.ndarray | None = None


def predict_dataset(model, dataset: Dataset, batch_size: int = 16, device="cpu",
                    progress: bool = True, desc: str = "scoring") -> Predictions:
    """Run ``model.predict`` over a dataset of sacd_fast items, or of [0, 1] image tensors (``model``: a
    :class:`SACD` in eval mode on
    ``device``, its fast wrapper, or an :class:`sacd_fast.deploy.export.Inferencer`); ValueError naming
    the images whose maps are not finite."""
    out: dict[str, list] = {}
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
        fields = batch if isinstance(batch, dict) else {"image": batch}
        prediction = model.predict(normalize(fields["image"].to(device)))
        out.setdefault("scores", []).append(prediction.scores.cpu().numpy())
        out.setdefault("maps", []).append(prediction.maps.cpu().numpy())
        for key, value in fields.items():
            if key != "image":
                out.setdefault(key, []).append(value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value))
    result = Predictions(**{k: np.concatenate(v) for k, v in out.items()})
    broken = ~np.isfinite(result.scores) | ~np.isfinite(result.maps).reshape(len(result.maps), -1).all(1)
    if broken.any():
        names = "" if result.path is None else f" ({', '.join(str(p) for p in result.path[broken][:3])})"
        raise ValueError(f"the model gave NaN or infinite anomaly maps for {int(broken.sum())} of {len(broken)} "
                         f"images{names}: its weights or the file it was read from are broken")
    if result.mask is not None:
        result.mask = result.mask[:, 0]
    return result


def calibrate(model: SACD, normal: Dataset, batch_size: int = 16, device="cpu", progress: bool = True,
              false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE, source: str | None = None) -> Thresholds:
    """Decision threshold from normal (defect-free, held-out) images, for a target false-alarm rate
    (:meth:`Thresholds.calibrated`). An image scores above the threshold exactly when some pixel of its
    map does, so the same value outlines the regions. ``normal_level``, the median map value, is the
    bottom of the heatmap colour scale; ``source`` says which images these are."""
    result = predict_dataset(model, normal, batch_size, device, progress, desc="calibrating")
    return Thresholds.calibrated(result.scores, np.median(result.maps), false_alarm_rate, source)


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


def evaluate_predictions(result: Predictions) -> dict:
    """metrics.json content for :func:`predict_dataset`'s output on a test split.

    Pixel metrics use the images that have a ground truth (normal images and
    masked defects); defect classes without masks are listed as skipped,
    defect images whose mask marks no pixel as ``empty_masks``, and where the
    pixel metrics are null, ``pixel_metrics_missing_because`` says why.
    """
    labels, has_mask = result.label, result.has_mask.astype(bool)
    report = metrics.evaluate(labels, result.scores, result.mask[has_mask], result.maps[has_mask])
    skipped = sorted({d for d, m, lab in zip(result.defect, has_mask, labels) if lab and not m})
    report["pixel_metrics_skipped_for"] = skipped
    masked = (labels == 1) & has_mask
    empty = masked & ~result.mask.reshape(len(labels), -1).any(1)
    report["empty_masks"] = [str(p) for p in result.path[empty]]
    if report["pixel_auroc"] is None:
        report["pixel_metrics_missing_because"] = (
            "the test split has no defect images" if not labels.any() else
            "no defect image has a mask (ground_truth/<defect>/<image>_mask.png)" if not masked.any() else
            f"the masks of all {int(masked.sum())} defect images mark no pixel")
    report["images"] = int(len(labels))
    report["anomalous_images"] = int(labels.sum())
    defects, normal, scores = result.defect, labels == 0, result.scores
    report["image_auroc_per_defect"] = {  # each defect class against the normal images
        d: metrics.image_auroc(labels[normal | (defects == d)], scores[normal | (defects == d)])
        for d in sorted(set(defects[labels == 1]))} if normal.any() else {}
    return report
