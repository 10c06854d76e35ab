"""Compile every Triton kernel for an H100/H200 (sm_90) without a GPU.

Run by tests/test_kernel_sm90.py in a subprocess without TRITON_INTERPRET
(the interpreter replaces ``@triton.jit`` functions, so nothing could be
compiled in the test process). The launchers run on CPU tensors at the
model's real shapes, NCHW and channels_last, fp32, fp16 and bf16, with every
kernel recorded instead of launched (sacd_fast.kernels.recorder); every
recorded launch is then compiled for sm_90 once per autotuning config
(sacd_fast.kernels.sm90).

Prints one JSON object on its last line:
``{"launched": {"module.kernel [variant]": {"shared", "registers", "spill_bytes",
"num_warps", "blocks_per_sm", "mma", "fp64", "acq_rel", "vector_loads", "cross_lane",
"rem", "inference"}},
"jit": [every module.name]}``.
"""

import json
import sys

import torch

from sacd_fast.kernels.anomaly_map import triton as anomaly_map
from sacd_fast.kernels.feacali import triton as feacali
from sacd_fast.kernels.recorder import jit_functions, recording
from sacd_fast.kernels.report import SCALES
from sacd_fast.kernels.simplex import triton as simplex
from sacd_fast.kernels.sm90 import check_not_interpreted, compile_variants

WRN_SCALES = SCALES["wide_resnet50_2"]


def features(dtype, channels_last, scales, batch=2):
    out = []
    for c, s in scales:
        t = torch.empty(batch, c, s, s, dtype=dtype)
        out.append(t.to(memory_format=torch.channels_last) if channels_last else t)
    return out


def inference_launches():
    """The inference launchers at WideResNet-50-2 / 256² shapes (batch 2: only the sizes matter),
    fp32, fp16 and bf16, NCHW and channels_last, FeaCali's last block with and without InstanceNorm,
    one to six scales in both modes, three blur radii, and a radius beyond the map's side."""
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for channels_last in (False, True):
            teacher = features(dtype, channels_last, WRN_SCALES)
            anomaly_map.cosine_anomaly_map_triton(teacher, teacher, (256, 256), 4.0, "add")
            for c, s in WRN_SCALES:
                widths = [c, c // 2, c // 4, c // 2, c]
                (x,) = features(dtype, channels_last, [(c, s)])
                weights = [torch.empty(b, a, 3, 3) for a, b in zip(widths, widths[1:])]
                feacali.conv_in_lrelu_stack_triton(x, weights, last_bias=torch.empty(c), norm_last=False)  # the model's
                feacali.conv_in_lrelu_stack_triton(x, weights)  # a last block with InstanceNorm
    scales = features(torch.float32, False, [(8, 5), (8, 6), (8, 7), (8, 8), (8, 9), (8, 10)])
    for count in range(1, 7):  # every SCALES / ACCUMULATE combination, both modes, blur radii 1, 8 and 16
        for mode, sigma in (("add", 0.25), ("mul", 2.0), ("add", 4.0)):
            anomaly_map.cosine_anomaly_map_triton(scales[:count], scales[:count], (32, 32), sigma, mode)
    # a blur radius (16) beyond the map's side (8): the reflection folds more than once
    anomaly_map.cosine_anomaly_map_triton(scales[:1], scales[:1], (8, 8), 4.0, "add")
    for c, s in SCALES["efficientnet_lite0"]:  # channel counts that are not multiples of 16
        widths = [c, c // 2, c // 4, c // 2, c]
        (x,) = features(torch.bfloat16, True, [(c, s)])
        weights = [torch.empty(b, a, 3, 3) for a, b in zip(widths, widths[1:])]
        feacali.conv_in_lrelu_stack_triton(x, weights, last_bias=torch.empty(c), norm_last=False)
    for batch in (1, 32):  # the fast path's batches: bf16, channels_last (the same binaries as batch 2's)
        teacher = features(torch.bfloat16, True, WRN_SCALES, batch)
        anomaly_map.cosine_anomaly_map_triton(teacher, teacher, (256, 256), 4.0, "add")
        for c, s in WRN_SCALES:
            (x,) = features(torch.bfloat16, True, [(c, s)], batch)
            widths = [c, c // 2, c // 4, c // 2, c]
            weights = [torch.empty(b, a, 3, 3) for a, b in zip(widths, widths[1:])]
            feacali.conv_in_lrelu_stack_triton(x, weights, last_bias=torch.empty(c), norm_last=False)


def training_launches():
    for dtype in (torch.float32, torch.bfloat16):
        for channels_last in (False, True):
            (x,) = features(dtype, channels_last, [(64, 16)])
            x.requires_grad_()
            weight = torch.randn(32, 64, 3, 3, dtype=dtype, requires_grad=True)
            feacali.conv_in_lrelu_train(x, weight).float().sum().backward()
    seeds = torch.arange(2, dtype=torch.int64)
    simplex.simplex_noise3d_triton((2, 3, 31, 31), seeds)
    for dtype in (torch.float32, torch.bfloat16):
        simplex.synthesize_triton(torch.empty(2, 3, 256, 256, dtype=dtype), seeds, 0.2, (10, 32), (10, 32))


def main() -> int:
    check_not_interpreted()
    with recording() as inference:
        inference_launches()
    with recording() as training:
        training_launches()
    report = {}
    for launches, is_inference in ((inference, True), (training, False)):
        for name, info in compile_variants(launches).items():
            info.pop("ptx")
            report.setdefault(name, {**info, "inference": is_inference})
    print(json.dumps({"launched": report, "jit": sorted(jit_functions())}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
