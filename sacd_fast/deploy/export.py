"""Export a trained model as one ONNX or OpenVINO file (:mod:`sacd_fast.deploy.graph` builds the
graph; :mod:`sacd_fast.deploy.quantize` makes int8 files), and run any of the three formats
(:class:`Inferencer`).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sacd_fast.deploy.graph import metadata, onnx_bytes
from sacd_fast.deploy.inference import load_for_inference, read_images
from sacd_fast.deploy.quantize import Quantized, quantize_guarded
from sacd_fast.deploy.runtimes import (
    ONNXRuntimeRunner,
    OpenVINORunner,
    openvino_core,
    openvino_model,
    require,
    run_in_slices,
)
from sacd_fast.checkpoint import FORMAT, READABLE, migrate_config, migrate_thresholds
from sacd_fast.evaluation.calibration import Thresholds
from sacd_fast.files import atomic_write, require_file
from sacd_fast.options import choices_of
from sacd_fast.settings import ExportSettings
from sacd_fast.network.config import SACDConfig
from sacd_fast.network.model import IMAGENET_MEAN, IMAGENET_STD, SACD, Prediction, normalize

FORMATS = choices_of(ExportSettings, "format")
FILE_PRECISIONS = choices_of(ExportSettings, "precision")  # int8: OpenVINO files, quantised from the fp32 graph


class GuardFailed(ValueError):
    """An int8 model decides differently from fp32 beyond the guard's allowance (``quantized`` says how)."""

    def __init__(self, message: str, quantized: Quantized):
        super().__init__(message)
        self.quantized = quantized


def export(model: SACD, path: str | os.PathLike, format: str = "onnx", batch: int | None = 1,
           precision: str = "fp32", thresholds: Thresholds | None = None, calibration: torch.Tensor | None = None,
           guard_set: tuple[torch.Tensor, np.ndarray] | None = None, force: bool = False) -> Path:
    """Write ``model``'s whole pipeline to ``path`` (a .onnx file, or an OpenVINO
    .xml with its .bin beside it; its folder is made) and return the path written.

    Args:
        batch: the batch size the file takes; None for any (dynamic).
        precision: "fp32"; "fp16" (weights and compute; the input and outputs stay float32); or "int8"
            (OpenVINO only: :mod:`sacd_fast.deploy.quantize`), which needs ``calibration``.
        thresholds: the calibrated thresholds to carry (``sacd-fast export`` passes the checkpoint's); an
            int8 file carries thresholds recalibrated on its own scores of the calibration images.
        calibration: int8 only: normal images in [0, 1] (N, 3, S, S) the model did not train on.
        guard_set: int8 only: (images in [0, 1], labels 1 = anomalous) to guard decisions on; by default
            the calibration images and 4 synthetic anomalies made from each
            (:func:`sacd_fast.deploy.quantize.guard_images`).
        force: int8 only: write the file even where the guard fails (its record says so).

    Raises:
        GuardFailed: (a ValueError) the int8 model fails the guard and ``force`` is not set.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    if precision not in FILE_PRECISIONS:
        raise ValueError(f"precision must be one of {FILE_PRECISIONS}, got {precision!r}")
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise ValueError(f"batch must be a positive integer or None (dynamic), got {batch!r}")
    if precision == "int8" and format != "openvino":
        raise ValueError("int8 files are written for OpenVINO: use format='openvino' (--format openvino)")
    if precision == "int8" and (calibration is None or len(calibration) < 2):
        raise ValueError("an int8 export needs calibration images: at least 2 normal images the model did not "
                         "train on (--calibration DIR)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = onnx_bytes(model, batch, "fp32" if precision == "int8" else precision, thresholds)
    if format == "onnx":
        path = path.with_suffix(".onnx")
        atomic_write(path, lambda f: f.write(data))
        return path
    ov = require("openvino")
    path = path.with_suffix(".xml")
    converted = openvino_model(data)
    entries = metadata(model, thresholds, batch)
    if precision == "int8":
        quantized = quantize_guarded(converted, calibration, batch, thresholds, guard_set)
        if not quantized.guard.passed and not force:
            raise GuardFailed(f"the int8 model fails the accuracy guard: {quantized.guard.describe()}; nothing "
                              "was written (--force writes it anyway)", quantized)
        converted = quantized.model
        entries["sacd_fast.thresholds"] = json.dumps(quantized.thresholds.to_dict())
        entries["sacd_fast.quantization"] = json.dumps(quantized.record(len(calibration), force))
    with tempfile.TemporaryDirectory() as tmp:
        for key, value in entries.items():
            converted.set_rt_info(value, key.split("."))
        staged = os.path.join(tmp, "model.xml")
        ov.save_model(converted, staged, compress_to_fp16=precision == "fp16")
        weights = Path(staged).with_suffix(".bin").read_bytes()
        text = Path(staged).read_bytes()
    atomic_write(path.with_suffix(".bin"), lambda f: f.write(weights))
    atomic_write(path, lambda f: f.write(text))
    return path


@dataclass
class ExportedInfo:
    """What an exported file says about itself."""

    config: SACDConfig
    batch: int  # 0: any
    thresholds: Thresholds | None  # None: exported without them
    quantization: dict | None  # int8 files: what runs in int8 and how it passed the guard


METADATA_KEYS = ("format", "backbone", "image_size", "batch", "normalization", "config", "thresholds")
OPTIONAL_METADATA_KEYS = ("quantization",)


def _info(entries: dict[str, str], path, image_shape: list, outputs: list[str]) -> ExportedInfo:
    """What an exported file's ``sacd_fast.*`` metadata says, every entry checked,
    and checked against its graph (``image_shape``: the input's dimensions, None
    where dynamic; ``outputs``: the output names): ValueError naming the file and the entry."""
    version = entries.get("sacd_fast.format")
    if version not in READABLE:
        raise ValueError(f"{path} was not exported by sacd_fast (its sacd_fast.format metadata is "
                         f"{version!r}, expected one of {', '.join(map(repr, READABLE))})")
    old = version != FORMAT  # format 1: read as format 2 writes it (sacd_fast.checkpoint.migrate)
    for key in METADATA_KEYS:
        if f"sacd_fast.{key}" not in entries:
            raise ValueError(f"{path}: metadata entry 'sacd_fast.{key}' is missing")

    def entry(key: str, read, what: str):
        try:
            return read(entries[f"sacd_fast.{key}"])
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: metadata entry 'sacd_fast.{key}' {what} ({e})") from None

    def whole(text: str) -> int:
        if not text.isdigit():
            raise ValueError(f"{text[:40]!r} is not an integer >= 0")
        return int(text)

    def json_record(text: str) -> dict:
        value = json.loads(text)
        if not isinstance(value, dict):
            raise ValueError(f"it holds {type(value).__name__}")
        return value

    config = entry("config", lambda t: SACDConfig.from_dict(
        migrate_config(json_record(t)) if old else json_record(t), "config"), "is not a valid config")
    thresholds = entry("thresholds", lambda t: Thresholds.from_dict(
        migrate_thresholds(json_record(t)) if old else json_record(t), "sacd_fast.thresholds"),
        "is not a valid threshold record")
    normalization = entry("normalization", json_record, "is not JSON")
    if normalization.get("mean") != list(IMAGENET_MEAN) or normalization.get("std") != list(IMAGENET_STD):
        raise ValueError(f"{path}: metadata entry 'sacd_fast.normalization' is {normalization}, not the ImageNet "
                         f"mean {list(IMAGENET_MEAN)} and std {list(IMAGENET_STD)} that sacd_fast.normalize applies")
    batch = entry("batch", whole, "is not a batch size")
    if entries["sacd_fast.backbone"] != config.backbone or entry("image_size", whole, "is not a size") != \
            config.image_size:
        raise ValueError(f"{path}: metadata entries 'sacd_fast.backbone' / 'sacd_fast.image_size' "
                         f"({entries['sacd_fast.backbone']!r}, {entries['sacd_fast.image_size']!r}) contradict "
                         f"its config ({config.backbone!r}, {config.image_size})")
    s = config.image_size
    expected = [batch or None, 3, s, s]
    if list(image_shape) != expected or not {"scores", "maps"} <= set(outputs):
        raise ValueError(f"{path}: its graph takes 'image' {image_shape} and gives {outputs}, but its metadata says "
                         f"{expected} (batch {batch}, image_size {s}) and ['scores', 'maps']")
    quantization = entry("quantization", json_record, "is not JSON") if "sacd_fast.quantization" in entries else None
    return ExportedInfo(config, batch, thresholds, quantization)


def read_openvino(path: Path):
    """An OpenVINO file's model, read but not compiled, and what its checked metadata says."""
    try:
        model = openvino_core().read_model(str(path))
    except Exception as e:
        raise ValueError(f"{path} is not an OpenVINO model ({type(e).__name__}: {e})") from e
    entries = {f"sacd_fast.{k}": model.get_rt_info(["sacd_fast", k]).astype(str)
               for k in METADATA_KEYS + OPTIONAL_METADATA_KEYS if model.has_rt_info(["sacd_fast", k])}
    image = [p for p in model.inputs if "image" in p.get_names()]
    shape = [d.get_length() if d.is_static else None for d in image[0].get_partial_shape()] if image else []
    return model, _info(entries, path, shape, [name for o in model.outputs for name in o.get_names()])


class Inferencer:
    """One ``predict`` for every format: a ``.pt`` checkpoint, an ``.onnx`` file
    (ONNX Runtime) or an OpenVINO ``.xml``.

    ``predict(images)`` takes ImageNet-normalised (B, 3, S, S) images (any
    batch: fixed-batch files are fed in slices, padded) and returns a
    :class:`sacd_fast.Prediction`; ``from_files(paths)`` reads the images as
    ``sacd-fast predict`` does. ``config`` and ``thresholds`` (a :class:`Thresholds`, None for a file
    exported without them) come from the file itself. ``precision``: what an OpenVINO file computes in,
    "fp32" or "bf16" (on CPUs with native bf16).

    Example::

        inferencer = Inferencer("model.onnx")
        prediction = inferencer.from_files(["part_001.png"])
        prediction.scores > inferencer.thresholds.image
    """

    def __init__(self, path: str | os.PathLike, device: str = "cpu", precision: str = "fp32"):
        self.path = require_file(path, "model")
        suffix = self.path.suffix.lower()
        if suffix == ".pt":
            model, self.thresholds = load_for_inference(self.path, device)
            self.config, self.batch, self.quantization = model.config, 0, None

            def run(x):
                out = model.predict(torch.from_numpy(x).to(device))
                return out.scores.cpu().numpy(), out.maps.cpu().numpy()

            self._run = run
            return
        if suffix == ".onnx":
            onnx = require("onnx")
            try:
                proto = onnx.load(str(self.path), load_external_data=False)
            except Exception as e:
                raise ValueError(f"{self.path} is not an ONNX model ({type(e).__name__}: {e})") from e
            inputs = {i.name: [d.dim_value if d.HasField("dim_value") else None for d in
                                i.type.tensor_type.shape.dim] for i in proto.graph.input}
            info = _info({p.key: p.value for p in proto.metadata_props}, self.path, inputs.get("image", []),
                         [o.name for o in proto.graph.output])
            self._run = ONNXRuntimeRunner(str(self.path))
        elif suffix == ".xml":
            model, info = read_openvino(self.path)
            self._run = OpenVINORunner(model, precision)
        else:
            raise ValueError(f"{self.path}: expected a .pt checkpoint, an .onnx file or an OpenVINO .xml")
        self.config, self.batch, self.thresholds, self.quantization = (info.config, info.batch, info.thresholds,
                                                                       info.quantization)

    def predict(self, images) -> Prediction:
        """Scores (B,) and maps (B, S, S), float32 tensors, for normalised images (B, 3, S, S)."""
        x = images.detach().cpu().float().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        x = np.ascontiguousarray(x, dtype=np.float32)
        s = self.config.image_size
        if x.ndim != 4 or x.shape[1:] != (3, s, s):
            raise ValueError(f"{self.path} takes (B, 3, {s}, {s}) images, got {tuple(x.shape)}")
        if not np.isfinite(x).all():
            raise ValueError("images contain NaN or infinite values")
        scores, maps = run_in_slices(self._run, x, self.batch or len(x))
        return Prediction(scores=torch.from_numpy(scores).float(), maps=torch.from_numpy(maps).float())

    def from_files(self, paths) -> Prediction:
        """Read image files or folders (as ``sacd-fast predict`` does) and predict them."""
        return self.predict(normalize(read_images(paths, self.config.image_size)))
