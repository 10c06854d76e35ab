"""The runtimes an exported pipeline runs in: ONNX Runtime and OpenVINO on a CPU.

Every OpenVINO model of a process is compiled by one :class:`openvino.Core`
(:func:`openvino_core`) with explicit settings: one stream and as many
inference threads as torch uses, so that a second
compiled model neither reserves its own share of the cores nor changes how
the first one runs. A runner holds its compiled model; dropping the runner
releases it.
"""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path

import numpy as np
import torch


def require(module: str, extra: str = "deploy"):
    """Import ``module`` or raise an ImportError that says which extra installs it."""
    try:
        return __import__(module)
    except ImportError as e:
        raise ImportError(f"{module} is not installed: pip install \"sacd_fast[{extra}]\" "
                          f"(or pip install {module})") from e


def run_in_slices(run, x: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, maps) of ``run`` (float32 images -> (scores, maps)) over the images ``x``, fed ``step``
    at a time; a short last slice is padded with zero images (a fixed-batch file takes no other size)."""
    scores, maps = [], []
    for i in range(0, len(x), step):
        chunk = x[i:i + step]
        if len(chunk) < step:
            chunk = np.concatenate([chunk, np.zeros((step - len(chunk), *chunk.shape[1:]), np.float32)])
        s, m = run(chunk)
        n = min(step, len(x) - i)
        scores.append(np.asarray(s)[:n])
        maps.append(np.asarray(m)[:n])
    return np.concatenate(scores), np.concatenate(maps)


@functools.cache
def openvino_core():
    """The process's one OpenVINO Core, its CPU plugin set to one stream and torch's thread count."""
    ov = require("openvino")
    core = ov.Core()
    core.set_property("CPU", {"NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": str(torch.get_num_threads())})
    return core


def openvino_model(onnx_data: bytes):
    """An exported ONNX model, converted to OpenVINO's in-memory model."""
    ov = require("openvino")
    with tempfile.TemporaryDirectory() as tmp:
        source = os.path.join(tmp, "model.onnx")
        Path(source).write_bytes(onnx_data)
        return ov.convert_model(source)


OPENVINO_PRECISIONS = {"fp32": "f32", "bf16": "bf16"}  # ours -> OpenVINO's inference precision hint


class OpenVINORunner:
    """An OpenVINO CPU inference request for a read or converted model, computing in ``precision``
    ("fp32", or "bf16" on CPUs with native bf16; an int8 model's quantised operations run in int8
    either way): float32 images (B, 3, S, S) -> (scores, maps) as numpy arrays."""

    def __init__(self, model, precision: str = "fp32"):
        if precision not in OPENVINO_PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(OPENVINO_PRECISIONS)}, got {precision!r}")
        self.compiled = openvino_core().compile_model(
            model, "CPU", {"INFERENCE_PRECISION_HINT": OPENVINO_PRECISIONS[precision]})
        self.request = self.compiled.create_infer_request()
        self.outputs = self.compiled.output("scores"), self.compiled.output("maps")

    def __call__(self, x):
        out = self.request.infer({"image": x})
        return out[self.outputs[0]], out[self.outputs[1]]


class ONNXRuntimeRunner:
    """An ONNX Runtime CPU session for an exported file (a path, or its bytes): float32 images
    (B, 3, S, S) -> (scores, maps) as numpy arrays."""

    def __init__(self, model: str | bytes):
        ort = require("onnxruntime")
        self.session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])

    def __call__(self, x):
        return self.session.run(["scores", "maps"], {"image": x})
