"""Metrics against small cases computed by hand and a brute-force PRO."""

import numpy as np
import pytest
from scipy import ndimage

from sacd_fast.evaluation import metrics


def test_image_auroc_and_f1_by_hand():
    labels, scores = [0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]
    assert metrics.image_auroc(labels, scores) == pytest.approx(0.75)  # 3 of 4 pairs ordered
    assert metrics.f1_max(labels, scores) == pytest.approx(0.8)  # threshold 0.35: P 2/3, R 1
    with pytest.raises(ValueError, match="both"):
        metrics.image_auroc([1, 1], [0.2, 0.3])


def test_pixel_auroc_by_hand():
    masks = np.array([[[1, 0], [0, 0]], [[0, 1], [0, 0]]])
    maps = np.array([[[0.9, 0.1], [0.2, 0.3]], [[0.25, 0.5], [0.6, 0.0]]])
    # positives 0.9, 0.5; negatives 0.1, 0.2, 0.3, 0.25, 0.6, 0.0: 0.9 beats 6, 0.5 beats 5
    assert metrics.pixel_auroc(masks, maps) == pytest.approx(11 / 12)


# Two 1x4 images. Regions: A[0:2] (2 px) and B[1] (1 px); they would touch
# across images if the labelling ignored image boundaries.
PRO_MASKS = np.array([[[1, 1, 0, 0]], [[0, 1, 0, 0]]])
PRO_MAPS = np.array([[[0.9, 0.45, 0.1, 0.5]], [[0.3, 0.8, 0.05, 0.4]]])


def test_pro_by_hand():
    # Descending: 0.9 r1 (PRO .25), 0.8 r2 (.75), 0.5 normal (FPR .2), 0.45 r1 (PRO 1), 0.4 normal (FPR .4).
    # Area up to FPR 0.3: 0.2 * 0.75 + 0.1 * 1.0 = 0.25, divided by 0.3.
    assert metrics.pro_score(PRO_MASKS, PRO_MAPS) == pytest.approx(0.25 / 0.3)
    fpr, pro = metrics.pro_curve(PRO_MASKS, PRO_MAPS)
    assert fpr[-1] == pytest.approx(1.0) and pro[-1] == pytest.approx(1.0)


def brute_force_pro(masks, maps, max_fpr=0.3, steps=4000):
    """PRO by thresholding at many levels and measuring every region's overlap."""
    structure = np.zeros((3, 3, 3), bool)
    structure[1] = True
    regions, count = ndimage.label(masks, structure=structure)
    normal = ~masks.astype(bool)
    fprs, pros = [], []
    for t in np.linspace(maps.max() + 1e-9, maps.min() - 1e-9, steps):
        predicted = maps >= t
        fprs.append((predicted & normal).sum() / normal.sum())
        pros.append(np.mean([predicted[regions == r].mean() for r in range(1, count + 1)]))
    fprs, pros = np.array(fprs), np.array(pros)
    keep = fprs <= max_fpr
    x, y = np.r_[fprs[keep], max_fpr], np.r_[pros[keep], np.interp(max_fpr, fprs, pros)]
    return np.trapezoid(y, x) / max_fpr


def test_pro_matches_brute_force_on_random_maps():
    rng = np.random.default_rng(0)
    masks = np.zeros((3, 24, 24), bool)
    masks[0, 3:8, 4:10] = True
    masks[0, 15:18, 15:22] = True
    masks[2, 10:20, 2:5] = True
    maps = ndimage.gaussian_filter(rng.random((3, 24, 24)), 1.0) + 0.15 * masks
    assert metrics.pro_score(masks, maps) == pytest.approx(brute_force_pro(masks, maps), abs=2e-3)


def test_evaluate_leaves_pixel_metrics_null_without_masks():
    report = metrics.evaluate([0, 1], [0.1, 0.9], np.zeros((2, 4, 4)), np.zeros((2, 4, 4)))
    assert report == {"image_auroc": 1.0, "f1_max": 1.0, "pixel_auroc": None, "pro": None}
