"""int8 post-training quantisation of an exported pipeline (NNCF), and the guard it must pass.

The teacher, OCBE, decoder and FeaCali run in int8 where NNCF places
quantisers (convolutions and the element-wise operations between them); the
anomaly map (the graph's ``/map/`` nodes: cosine distance, upsampling,
Gaussian, maximum) stays float32. Calibration images are normal images the
model never trained on (a checkpoint's held-out normals, or a folder the
user names), never test images.

The guard is about decisions: on normal images and on synthetic anomalies
made from them by the model's own synthesis (or a test split the user
names), the int8 model's image AUROC must lie within :data:`GUARD_AUROC` of
fp32's, and with each model at its own threshold (int8's recalibrated on its
scores of the calibration normals, for the same false-alarm rate) at least
:data:`GUARD_SAME_DECISIONS` of the images must be decided alike.
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import asdict, dataclass

import numpy as np
import torch

from sacd_fast.data.synthesis import synthesize
from sacd_fast.deploy.runtimes import OpenVINORunner, require, run_in_slices
from sacd_fast.evaluation.calibration import DEFAULT_FALSE_ALARM_RATE, Thresholds
from sacd_fast.evaluation.metrics import image_auroc
from sacd_fast.network.model import normalize

GUARD_AUROC = 0.005
GUARD_SAME_DECISIONS = 0.99
FLOAT32_SCOPE = "/map/.*"  # graph nodes int8 quantisation must leave alone: the anomaly map
# What runs in int8, tried in this order until the guard holds: everything but the map, then the student
# side alone. A teacher's int8 error reaches the map directly (a Lite0 model trained on the demo lost 0.15 of
# test image AUROC with its depthwise teacher in int8, none without); the student side holds most of the
# work of the WideResNet-50-2 model (int8 everywhere: 1.69x the bf16 file at 256², batch 4; student only 1.53x).
SCOPES = {"teacher, OCBE, decoder and FeaCali": [FLOAT32_SCOPE],
          "OCBE, decoder and FeaCali": [FLOAT32_SCOPE, "/teacher/.*"]}
# Anomalies synthesised per calibration image for the default guard set: with n normal images the AUROC
# then moves in steps of 1 / (4 n^2) (one pair of 16 x 16 was 0.0039, near the 0.005 allowed; of 16 x 64, 0.001).
SYNTHETIC_PER_IMAGE = 4
MAX_CALIBRATION_IMAGES = 300  # more adds quantisation time, not accuracy (NNCF's default subset)


def _batches(images: np.ndarray, batch: int) -> list[np.ndarray]:
    """``images`` in slices of ``batch`` (the last padded by repeating its first image)."""
    out = []
    for i in range(0, len(images), batch):
        chunk = images[i:i + batch]
        if len(chunk) < batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[:1], batch - len(chunk), 0)])
        out.append(np.ascontiguousarray(chunk, dtype=np.float32))
    return out


def quantize_openvino(model, calibration: torch.Tensor, batch: int | None, float32: list[str]):
    """``model`` (an OpenVINO model of the exported pipeline) in int8 but for the nodes whose names match
    ``float32``, calibrated on the normalised images ``calibration`` (N, 3, S, S), ``batch`` at a time
    (1 for a dynamic batch)."""
    nncf = require("nncf")
    items = _batches(calibration.detach().cpu().float().numpy(), batch or 1)
    with _quiet(nncf):
        return nncf.quantize(model, nncf.Dataset(items), subset_size=len(items),
                             preset=nncf.QuantizationPreset.PERFORMANCE,
                             ignored_scope=nncf.IgnoredScope(patterns=float32, validate=False))


@contextlib.contextmanager
def _quiet(nncf):
    """NNCF's progress bars and notes off while it quantises."""
    level = nncf.common.logging.logger.nncf_logger.level
    nncf.set_log_level(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        nncf.set_log_level(level)


def int8_operations(model) -> list[str]:
    """The operation types of an OpenVINO model that take int8 inputs (those after a FakeQuantize)."""
    kinds = set()
    for op in model.get_ordered_ops():
        if op.get_type_name() == "FakeQuantize":
            for target in op.output(0).get_target_inputs():
                kinds.add(target.get_node().get_type_name())
    return sorted(kinds)


@dataclass
class GuardResult:
    """How an int8 model decides against its fp32 original on the guard images."""

    images: int
    anomalous: int
    auroc_fp32: float
    auroc_int8: float
    same_decisions: float  # share of images decided alike, each model at its own threshold
    threshold_fp32: float
    threshold_int8: float

    @property
    def passed(self) -> bool:
        return (abs(self.auroc_int8 - self.auroc_fp32) <= GUARD_AUROC
                and self.same_decisions >= GUARD_SAME_DECISIONS)

    def describe(self) -> str:
        return (f"image AUROC {self.auroc_int8:.4f} against fp32's {self.auroc_fp32:.4f} (allowed: within "
                f"{GUARD_AUROC}), {self.same_decisions:.1%} of {self.images} images decided alike (allowed: at "
                f"least {GUARD_SAME_DECISIONS:.0%}; thresholds {self.threshold_int8:.4f} int8, "
                f"{self.threshold_fp32:.4f} fp32)")

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}

    @classmethod
    def from_dict(cls, record: dict) -> GuardResult:
        return cls(**{k: v for k, v in record.items() if k != "passed"})


def guard_images(normal01: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """The default guard set from normal images in [0, 1]: the images themselves and
    :data:`SYNTHETIC_PER_IMAGE` synthetic anomalies made from each by the model's own synthesis. Returns
    (images in [0, 1], labels)."""
    generator = torch.Generator().manual_seed(seed)
    anomalous = torch.cat([synthesize(normal01, generator=generator)[0] for _ in range(SYNTHETIC_PER_IMAGE)])
    labels = np.r_[np.zeros(len(normal01), int), np.ones(len(anomalous), int)]
    return torch.cat([normal01, anomalous.clamp(0, 1)]), labels


def scores_of(run, images: torch.Tensor, batch: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(scores, maps) of ``run`` (normalised float32 (B, 3, S, S) -> (scores, maps)) on ``images``."""
    return run_in_slices(run, np.ascontiguousarray(images.detach().cpu().float().numpy()), batch or min(len(images), 8))


def recalibrated_thresholds(thresholds: Thresholds | None, normal_scores: np.ndarray,
                            normal_maps: np.ndarray) -> Thresholds:
    """Thresholds recalibrated on a model's scores of the calibration normals, for the false-alarm rate
    the checkpoint's ``thresholds`` were set for."""
    rate = thresholds.false_alarm_rate if thresholds and thresholds.false_alarm_rate else DEFAULT_FALSE_ALARM_RATE
    return Thresholds.calibrated(normal_scores, np.median(normal_maps), rate,
                                 "int8 scores of the calibration normal images")


def guard(fp32_scores: np.ndarray, int8_scores: np.ndarray, labels: np.ndarray, threshold_fp32: float,
          threshold_int8: float) -> GuardResult:
    """Compare the int8 model's decisions with fp32's on the guard images."""
    same = (fp32_scores > threshold_fp32) == (int8_scores > threshold_int8)
    return GuardResult(images=len(labels), anomalous=int(np.sum(labels)),
                       auroc_fp32=image_auroc(labels, fp32_scores), auroc_int8=image_auroc(labels, int8_scores),
                       same_decisions=float(same.mean()), threshold_fp32=float(threshold_fp32),
                       threshold_int8=float(threshold_int8))


@dataclass
class Quantized:
    """An int8 OpenVINO model, the thresholds recalibrated on its scores, and how it passed (or failed) the guard."""

    model: object
    thresholds: Thresholds
    guard: GuardResult
    int8: str  # which parts run in int8 (a key of SCOPES)
    tried: list[dict]  # each scope tried before it, and its guard's figures

    def record(self, calibration_images: int, forced: bool) -> dict:
        """The ``sacd_fast.quantization`` entry of the exported file."""
        return {"precision": "int8", "int8": self.int8, "int8_operations": int8_operations(self.model),
                "float32": "the anomaly map: cosine distance, upsampling, Gaussian, maximum",
                "calibration_images": calibration_images, "guard": self.guard.to_dict(), "forced": forced,
                "tried_before": self.tried}


def quantize_guarded(model, calibration01: torch.Tensor, batch: int | None, thresholds: Thresholds | None,
                     guard_set: tuple[torch.Tensor, np.ndarray] | None = None) -> Quantized:
    """Quantise ``model`` (the exported pipeline, OpenVINO fp32) on the normal images ``calibration01``
    ([0, 1], (N, 3, S, S)) with each scope of :data:`SCOPES` in turn, keeping the first whose guard holds
    (or the last tried). The guard set is ``guard_set`` (images in [0, 1], labels), or
    :func:`guard_images` of the calibration images. Each model decides at the threshold calibrated on
    its own scores of the calibration images for the false-alarm rate of ``thresholds``, so that the
    guard sees what quantisation changes, not a difference between calibration sets."""
    calibration = normalize(calibration01)
    images, labels = guard_set if guard_set is not None else guard_images(calibration01)
    images = normalize(images)
    fp32 = OpenVINORunner(model, "fp32")
    fp32_scores, _ = scores_of(fp32, images, batch)
    threshold = recalibrated_thresholds(thresholds, *scores_of(fp32, calibration, batch)).image
    del fp32
    result, tried = None, []
    for int8, float32 in SCOPES.items():
        if result is not None:
            tried.append({"int8": result.int8, "guard": result.guard.to_dict()})
        quantized = quantize_openvino(model, calibration, batch, float32)
        run = OpenVINORunner(quantized, "fp32")
        normal_scores, normal_maps = scores_of(run, calibration, batch)
        recalibrated = recalibrated_thresholds(thresholds, normal_scores, normal_maps)
        checked = guard(fp32_scores, scores_of(run, images, batch)[0], labels, threshold,
                        recalibrated.image)
        result = Quantized(quantized, recalibrated, checked, int8, list(tried))
        if checked.passed:
            break
    return result
