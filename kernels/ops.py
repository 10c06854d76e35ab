"""The inference Triton paths as torch.library custom ops (``sacd_fast::*``).

torch.compile cannot trace into a Python launcher that times candidates or
reads strides; a custom op enters the graph opaque, with a fake (meta)
implementation that gives the output's shape, dtype and strides, and runs
inside CUDA-graph capture like any other op. :func:`sacd_fast.kernels.use_triton`
decides when these are called (inside ``triton_in_compiled_graphs()``).

The fakes must match the real outputs stride for stride: inductor lays out the
ops that follow from them. ``tests/test_kernel_ops.py`` checks that with
``torch.library.opcheck``.

No ``from __future__ import annotations`` here: ``custom_op`` reads the
schema from the annotations.
"""

from typing import Optional

import torch

from .anomaly_map import triton as anomaly_map
from .feacali import triton as feacali
from .launch import kernel_dtype


@torch.library.custom_op("sacd_fast::cosine_anomaly_map", mutates_args=())
def cosine_anomaly_map(teacher: list[torch.Tensor], student: list[torch.Tensor], size: list[int], sigma: float,
                       mode: str, border: int) -> torch.Tensor:
    """:func:`sacd_fast.kernels.cosine_anomaly_map` on the Triton path: float32 (B, H, W), contiguous."""
    return anomaly_map.cosine_anomaly_map_triton(teacher, student, size, sigma, mode, border)


@cosine_anomaly_map.register_fake
def _(teacher, student, size, sigma, mode, border):
    return teacher[0].new_empty((teacher[0].shape[0], *size), dtype=torch.float32)


@torch.library.custom_op("sacd_fast::conv_in_lrelu_stack", mutates_args=())
def conv_in_lrelu_stack(x: torch.Tensor, weights: list[torch.Tensor], eps: float, negative_slope: float,
                        last_bias: Optional[torch.Tensor], norm_last: bool) -> torch.Tensor:
    """The FeaCali chain without gradients on the Triton path (fused, or cuDNN where measured
    faster): (N, C_last, H, W) in ``kernel_dtype(x)``, channels_last."""
    return feacali.fastest_stack(x, weights, eps, negative_slope, last_bias, norm_last)


@conv_in_lrelu_stack.register_fake
def _(x, weights, eps, negative_slope, last_bias, norm_last):
    n, _, h, w = x.shape
    return x.new_empty((n, weights[-1].shape[0], h, w), dtype=kernel_dtype(x)).contiguous(
        memory_format=torch.channels_last)
