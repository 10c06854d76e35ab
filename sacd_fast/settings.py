"""The settings of a run: training (:class:`TrainSettings`), scoring with a trained model
(:class:`ScoreSettings`: ``eval`` and ``predict``) and exporting it (:class:`ExportSettings`).

With :class:`~sacd_fast.network.config.SACDConfig` (what the network is), these are the only places a
setting, its type, default, help text and check live: the command line's options are made from their
fields (:func:`sacd_fast.options.add_options`), and the commands and :func:`~sacd_fast.training.train.fit`
take them whole. No torch here: the command line parses before torch loads.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

from sacd_fast.options import SettingError, check_choice, check_flag, check_number, choices_of, setting

DEFAULT_FALSE_ALARM_RATE = 0.01  # the share of normal images a calibrated threshold may flag
DEVICE_HELP = "'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:1'..."


def check_device(device) -> None:
    """SettingError unless ``device`` is a device name (which one exists is seen when it is used)."""
    if not isinstance(device, str):
        raise SettingError("device", f"must be a device name ('auto', 'cpu', 'cuda', ...), got {device!r}")


@dataclass(frozen=True)
class TrainSettings:
    """How a model is trained (optimiser defaults from RD4AD/RD++). A checkpoint stores the fields that
    decide its weights (:meth:`stored`); a run resumes from it only with the same ones (``epochs`` may
    grow)."""

    epochs: int = setting(200, "training epochs (the one with the lowest loss on the held-out images is kept)",
                          stored=True)
    batch_size: int = setting(16, "images per batch (per process under torchrun)", stored=True)
    seed: int = setting(0, "seed for initialisation, shuffling and synthesis", stored=True)
    lr: float = setting(0.005, "Adam learning rate of OCBE and the decoder", option=False, stored=True)
    lr_feacali: float = setting(0.001, "Adam learning rate of FeaCali", option=False, stored=True)
    betas: tuple[float, float] = setting((0.5, 0.999), "Adam betas", option=False, stored=True)
    teacher_weights: str | None = setting(
        "imagenet", "'imagenet' (downloads the ResNets if online; the EfficientNet-Lite ones are bundled) or a "
                    "local .pth file (None, from Python: random, for tests)")
    val_fraction: float = setting(
        0.1, "share of training images held out to choose the epoch kept and calibrate the decision threshold "
             "(0: keep the last epoch, calibrate on training images)")
    false_alarm_rate: float = setting(
        DEFAULT_FALSE_ALARM_RATE, "share of normal images the calibrated threshold may flag (estimated on the "
                                  "held-out images: a conformal bound, or a fitted tail when they are too few)")
    precision: Literal["fp32", "bf16"] = setting(
        "bf16", "bf16: train under bf16 autocast on CUDA and on CPUs with native bf16 (AVX512-BF16, AMX), where "
                "it is faster; elsewhere it trains in fp32. fp32: always fp32")
    time_budget: float | None = setting(
        None, "train for about this long: no epoch starts that would, at the last epoch's pace, end past it (at "
              "most --epochs run; how many fit depends on the machine). A rerun with a budget finds a run that "
              "ended on its budget finished; without one it trains on to --epochs", metavar="SECONDS")
    patience: int | None = setting(
        None, "end training once this many epochs in a row have not lowered the held-out images' loss (at most "
              "--epochs run; needs --val-fraction > 0). A rerun with the same patience finds a run that ended "
              "this way finished; without one it trains on to --epochs", metavar="EPOCHS")
    workers: int = setting(0, "data-loading worker processes")
    device: str = setting("auto", DEVICE_HELP)

    def __post_init__(self):
        check_number("epochs", self.epochs, 1, integer=True)
        check_number("batch_size", self.batch_size, 1, integer=True)
        check_number("seed", self.seed, 0, integer=True)
        for name in ("lr", "lr_feacali"):
            check_number(name, getattr(self, name), 0, above_low=True)
        betas = tuple(self.betas) if isinstance(self.betas, (list, tuple)) else ()
        if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas):
            raise SettingError("betas", f"must be two numbers in [0, 1), got {self.betas!r}")
        object.__setattr__(self, "betas", betas)  # frozen: a list (from a checkpoint) becomes a tuple, once
        if self.teacher_weights is not None and not isinstance(self.teacher_weights, str):
            object.__setattr__(self, "teacher_weights", str(self.teacher_weights))  # a Path: its name
        check_number("val_fraction", self.val_fraction, 0, 1, below_high=True)
        check_number("false_alarm_rate", self.false_alarm_rate, 0, 1, above_low=True, below_high=True)
        check_choice("precision", self.precision, PRECISIONS)
        check_number("time_budget", self.time_budget, optional=True)
        if self.time_budget is not None and self.time_budget <= 0:
            raise SettingError("time_budget", f"must be > 0 seconds, got {self.time_budget}")
        check_number("patience", self.patience, 1, integer=True, optional=True)
        if self.patience is not None and self.val_fraction == 0:
            raise SettingError("patience", "watches the held-out images' loss: it needs {} > 0", "val_fraction")
        check_number("workers", self.workers, 0, integer=True)
        check_device(self.device)

    def stored(self) -> dict:
        """The settings a checkpoint records: those that decide the weights."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.metadata.get("stored")}


@dataclass(frozen=True)
class ScoreSettings:
    """How ``eval`` and ``predict`` score images with a trained model."""

    batch_size: int = setting(16, "images per batch")
    device: str = setting("auto", DEVICE_HELP)
    fast: bool = setting(False, "the fast model: on CUDA bf16, channels_last, torch.compile and CUDA graphs; on "
                                "a CPU the fastest installed backend (OpenVINO, ONNX Runtime, eager) whose maps "
                                "match eager fp32")
    threshold: float | None = setting(
        None, "decision threshold on the raw score (default: the one calibrated at training)", group="decision")
    false_alarm_rate: float | None = setting(
        None, "recalibrate the threshold for this share of normal images flagged, from the held-out scores "
              "kept in the checkpoint", group="decision")

    def __post_init__(self):
        check_number("batch_size", self.batch_size, 1, integer=True)
        check_device(self.device)
        check_flag("fast", self.fast)
        if self.threshold is not None and self.false_alarm_rate is not None:
            raise SettingError("threshold", "and {} both set the threshold: give one of them", "false_alarm_rate")
        check_number("threshold", self.threshold, optional=True)
        check_number("false_alarm_rate", self.false_alarm_rate, 0, 1, above_low=True, below_high=True,
                     optional=True)


@dataclass(frozen=True)
class ExportSettings:
    """How ``export`` writes a trained model to one file."""

    format: Literal["onnx", "openvino"] = setting("onnx", "file format")
    batch: int = setting(1, "the batch size the file takes", group="batch")
    dynamic_batch: bool = setting(False, "a file that takes any batch size", group="batch")
    precision: Literal["fp32", "fp16", "int8"] = setting(
        "fp32", "weights and compute; int8: OpenVINO, quantised and guarded (below)")
    calibration: str | None = setting(
        None, "int8: normal images the model did not train on (default: the checkpoint's held-out ones)",
        metavar="DIR")
    guard_data: str | None = setting(
        None, "int8: a product folder whose test split guards the decisions (default: the calibration images "
              "and 4 synthetic anomalies made from each)", metavar="DIR")
    force: bool = setting(False, "int8: write the file even where the guard fails")

    def __post_init__(self):
        check_choice("format", self.format, choices_of(ExportSettings, "format"))
        check_choice("precision", self.precision, choices_of(ExportSettings, "precision"))
        check_number("batch", self.batch, 1, integer=True)
        for name in ("calibration", "guard_data"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                object.__setattr__(self, name, str(value))  # a Path
        if self.precision != "int8" and (self.calibration is not None or self.guard_data is not None or self.force):
            raise SettingError("calibration", ", {} and {} belong to {} int8", "guard_data", "force", "precision")
        if self.precision == "int8" and self.format != "openvino":
            raise SettingError("precision", "int8 writes an OpenVINO file: add {} openvino", "format")

    @property
    def batch_size(self) -> int | None:
        """The batch the file takes; None: any."""
        return None if self.dynamic_batch else self.batch


PRECISIONS: tuple[str, ...] = choices_of(TrainSettings, "precision")
