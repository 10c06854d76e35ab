"""The exported graph: the whole pipeline traced to ONNX, simplified, checked and self-describing.

An ImageNet-normalised float32 image batch ``image`` (B, 3, S, S) in,
``scores`` (B,) and ``maps`` (B, S, S) out: teacher, OCBE, decoder, FeaCali
(Conv, InstanceNormalization, LeakyRelu), the per-scale cosine distance, the
bilinear upsampling (align_corners), the separable Gaussian (scipy's reflect
border, done as a Gather of constant indices and a Conv with fixed taps) and
the maximum. The traced graph is simplified with onnxslim (batch norms folded
into the convolutions before them, shape arithmetic folded to constants,
identities dropped), so that it holds only the standard operators (opset
:data:`OPSET`) in :data:`OPERATORS`, which ONNX Runtime, OpenVINO and
TensorRT all implement.

What a consumer needs travels inside the file, under ``sacd_fast.*`` keys
(ONNX ``metadata_props``, OpenVINO ``rt_info``): the format version, the
backbone, the image size, the input normalisation, the batch size (0 when
dynamic) and the calibrated thresholds as JSON.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import warnings

import torch
from torch import nn

from sacd_fast.checkpoint import FORMAT
from sacd_fast.deploy.runtimes import require
from sacd_fast.evaluation.calibration import Thresholds
from sacd_fast.kernels.anomaly_map import reference as map_reference
from sacd_fast.kernels.feacali import reference as feacali_reference
from sacd_fast.network.config import SACDConfig
from sacd_fast.network.model import IMAGENET_MEAN, IMAGENET_STD, SACD

OPSET = 18
GRAPH_PRECISIONS = ("fp32", "fp16")  # what the traced graph computes in (training has its own PRECISIONS)
# Every operator an exported graph may hold, whatever the backbone, map mode or batch (tested per backbone);
# Cast only in fp16 files, where the float32 image enters and the features leave for the float32 map.
OPERATORS = ("Add", "Cast", "Clip", "Concat", "Conv", "ConvTranspose", "Div", "Flatten", "Gather",
             "InstanceNormalization", "LeakyRelu", "MaxPool", "Mul", "ReduceMax", "ReduceSum", "Relu", "Reshape",
             "Resize", "Sqrt", "Sub", "Transpose", "Unsqueeze")


class FeaCali(nn.Module):
    """The FeaCali chains in the reference ops (their graph nodes are named ``/feacali/...``)."""

    def __init__(self, model: SACD):
        super().__init__()
        self.chains = model.feacali

    def forward(self, student: list[torch.Tensor]) -> list[torch.Tensor]:
        return [feacali_reference.conv_in_lrelu_stack(x, [c.weight for c in m.convs], [c.bias for c in m.convs],
                                                      m.eps, m.negative_slope, m.norm_last)
                for m, x in zip(self.chains, student)]


class AnomalyMap(nn.Module):
    """Features -> (scores, maps) in float32: the cosine map, upsampling, Gaussian and maximum (their graph
    nodes are named ``/map/...``; int8 quantisation leaves them in float32)."""

    def __init__(self, config: SACDConfig):
        super().__init__()
        self.config = config

    def forward(self, teacher: list[torch.Tensor], calibrated: list[torch.Tensor]):
        size = self.config.image_size  # a constant, not the input's traced shape
        maps = map_reference.cosine_anomaly_map([t.float() for t in teacher], [c.float() for c in calibrated],
                                                (size, size), self.config.sigma, self.config.map_mode,
                                                self.config.map_border)
        return maps.flatten(1).amax(1), maps


class Pipeline(nn.Module):
    """Normalised images -> (scores, maps), in the reference ops only (what is exported)."""

    def __init__(self, model: SACD, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.model, self.dtype = model.eval(), dtype
        self.feacali, self.map = FeaCali(model), AnomalyMap(model.config)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        teacher, student = self.model.encode_decode(image.to(self.dtype))
        return self.map(teacher, self.feacali(student))


def metadata(model: SACD, thresholds: Thresholds | None, batch: int | None) -> dict[str, str]:
    """The ``sacd_fast.*`` entries an exported file carries."""
    config = model.config
    return {"sacd_fast.format": FORMAT, "sacd_fast.backbone": config.backbone,
            "sacd_fast.image_size": str(config.image_size), "sacd_fast.batch": str(batch or 0),
            "sacd_fast.normalization": json.dumps({"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "range": [0, 1]}),
            "sacd_fast.config": json.dumps(config.to_dict()),
            "sacd_fast.thresholds": json.dumps(thresholds.to_dict() if thresholds else {})}


def onnx_bytes(model: SACD, batch: int | None = 1, precision: str = "fp32",
               thresholds: Thresholds | None = None) -> bytes:
    """The pipeline as a checked ONNX model (fixed ``batch``, or dynamic when None)."""
    onnx = require("onnx")
    if precision not in GRAPH_PRECISIONS:
        raise ValueError(f"precision must be one of {GRAPH_PRECISIONS}, got {precision!r}")
    size = model.config.image_size
    dtype = torch.float16 if precision == "fp16" else torch.float32
    pipeline = Pipeline(copy.deepcopy(model).to("cpu", dtype, memory_format=torch.contiguous_format), dtype)
    example = torch.zeros(batch or 2, 3, size, size)
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad(), warnings.catch_warnings():
        # The tracer's notes are about shapes frozen into the graph: they are the image size, fixed per
        # export by design; the legacy exporter is chosen on purpose (no onnxscript dependency).
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", module=r"torch\.onnx")
        path = os.path.join(tmp, "model.onnx")
        torch.onnx.export(pipeline, (example,), path, input_names=["image"], output_names=["scores", "maps"],
                          opset_version=OPSET, dynamo=False, do_constant_folding=True,
                          dynamic_axes=None if batch else {"image": {0: "batch"}, "scores": {0: "batch"},
                                                           "maps": {0: "batch"}})
        proto = require("onnxslim").slim(onnx.load(path))
    for key, value in metadata(model, thresholds, batch).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString()
