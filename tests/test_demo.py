"""The built-in demo trains for real and must detect the generated defects,
clearly better than a per-pixel deviation baseline on the same data."""

import json

import numpy as np
import pytest
import torch

from sacd_fast.cli import main
from sacd_fast.data.datasets import AnomalyDataset
from sacd_fast.evaluation.metrics import evaluate
from sacd_fast.kernels.anomaly_map.reference import gaussian_blur


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--out", str(out), "--device", "cpu"]) == 0
    return out


def deviation_baseline(root, size):
    """Distance of each pixel's colour from the mean training image, smoothed like the model's map."""
    train = AnomalyDataset(root, "disc", "train", size)
    test = AnomalyDataset(root, "disc", "test", size)
    mean = torch.stack([train[i]["image"] for i in range(len(train))]).mean(0)
    items = [test[i] for i in range(len(test))]
    maps = gaussian_blur(torch.stack([(it["image"] - mean).norm(dim=0) for it in items]), 4.0)
    labels = np.array([it["label"] for it in items])
    masks = np.stack([it["mask"][0].numpy() for it in items])
    return evaluate(labels, maps.flatten(1).amax(1).numpy(), masks, maps.numpy())


def test_demo_detects_defects(demo):
    report = json.loads((demo / "metrics.json").read_text())
    assert report["image_auroc"] >= 0.95
    assert report["pixel_auroc"] >= 0.95
    assert report["pro"] >= 0.85 and report["f1_max"] >= 0.85
    assert len(list((demo / "heatmaps").rglob("*.png"))) == report["images"]


def test_demo_beats_the_pixel_deviation_baseline(demo):
    report = json.loads((demo / "metrics.json").read_text())
    baseline = deviation_baseline(demo / "data", 256)
    assert baseline["image_auroc"] <= report["image_auroc"] - 0.2
    assert baseline["pixel_auroc"] <= report["pixel_auroc"] - 0.05
