"""Evaluation metrics (docs/method.md, Evaluation), on scikit-learn and SciPy.

* image AUROC on image scores, F1-max at image level;
* pixel AUROC over all pixels of the masked test images;
* PRO: the per-region overlap averaged over every connected ground-truth region
  of the whole test set, integrated over the false-positive rate up to 0.3 and
  divided by 0.3. (RD4AD and RD++ average a per-image PRO instead, which is not
  the standard metric.)
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from sklearn.metrics import precision_recall_curve, roc_auc_score


def _both_classes(labels: np.ndarray, what: str) -> None:
    if labels.min(initial=1) == labels.max(initial=0):
        raise ValueError(f"{what} needs both normal and anomalous samples")


def image_auroc(labels, scores) -> float:
    """Area under the ROC curve of image scores (labels: 1 = anomalous)."""
    labels = np.asarray(labels).astype(bool).ravel()
    _both_classes(labels, "image AUROC")
    return float(roc_auc_score(labels, np.asarray(scores, dtype=np.float64).ravel()))


def pixel_auroc(masks, maps) -> float:
    """Area under the ROC curve over all pixels; masks and maps (N, H, W)."""
    masks = np.asarray(masks).astype(bool).ravel()
    _both_classes(masks, "pixel AUROC")
    return float(roc_auc_score(masks, np.asarray(maps, dtype=np.float64).ravel()))


def f1_max(labels, scores) -> float:
    """The best F1 over all thresholds of the image scores."""
    labels = np.asarray(labels).astype(bool).ravel()
    _both_classes(labels, "F1-max")
    precision, recall, _ = precision_recall_curve(labels, np.asarray(scores, dtype=np.float64).ravel())
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(f1.max())


def pro_curve(masks, maps) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, PRO) at every distinct threshold, from the highest down.

    Each pixel inside a ground-truth region r adds 1 / (|r| * regions) to the
    PRO when the threshold passes its score; each normal pixel adds
    1 / normal_pixels to the FPR. Sorting once gives the whole curve.
    """
    masks = np.asarray(masks).astype(bool)
    maps = np.asarray(maps, dtype=np.float64)
    if masks.shape != maps.shape or masks.ndim != 3:
        raise ValueError(f"masks {masks.shape} and maps {maps.shape} must both be (N, H, W)")
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = ndimage.generate_binary_structure(2, 2)  # 8-connected, never across images
    regions, count = ndimage.label(masks, structure=structure)
    normal = ~masks
    if count == 0 or not normal.any():
        raise ValueError("PRO needs at least one ground-truth region and one normal pixel")
    sizes = np.bincount(regions.ravel(), minlength=count + 1).astype(np.float64)
    weight = np.where(masks, 1.0 / (sizes[regions] * count), 0.0).ravel()
    fp = normal.ravel() / normal.sum()
    order = np.argsort(-maps.ravel(), kind="stable")
    scores = maps.ravel()[order]
    pro = np.cumsum(weight[order])
    fpr = np.cumsum(fp[order])
    last_of_each_value = np.r_[scores[1:] != scores[:-1], True]
    return np.r_[0.0, fpr[last_of_each_value]], np.r_[0.0, pro[last_of_each_value]]


def pro_score(masks, maps, max_fpr: float = 0.3) -> float:
    """Area under the PRO curve for FPR in [0, max_fpr], divided by max_fpr."""
    fpr, pro = pro_curve(masks, maps)
    end = np.searchsorted(fpr, max_fpr, side="right")
    x, y = fpr[:end], pro[:end]
    if end < len(fpr):  # close the integral exactly at max_fpr
        t = (max_fpr - fpr[end - 1]) / (fpr[end] - fpr[end - 1])
        x = np.r_[x, max_fpr]
        y = np.r_[y, pro[end - 1] + t * (pro[end] - pro[end - 1])]
    return float(np.trapezoid(y, x) / max_fpr)


def evaluate(labels, scores, masks=None, maps=None) -> dict[str, float | None]:
    """All four metrics; the pixel ones are None when ``masks`` is None or holds no defect."""
    labels = np.asarray(labels)
    result = {"image_auroc": image_auroc(labels, scores), "f1_max": f1_max(labels, scores),
              "pixel_auroc": None, "pro": None}
    if masks is not None and np.asarray(masks).any():
        result["pixel_auroc"] = pixel_auroc(masks, maps)
        result["pro"] = pro_score(masks, maps)
    return result
