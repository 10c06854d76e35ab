"""What the kernels accept: fp32, fp16 or bf16 (N, C, H, W) tensors whose H*W
pixels form one evenly strided run, which covers contiguous NCHW and
channels_last."""

from __future__ import annotations

import torch


def kernel_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype a kernel reads ``t`` in: its own when fp32, fp16 or bf16, else float32."""
    return t.dtype if t.dtype in (torch.float32, torch.float16, torch.bfloat16) else torch.float32


def pixel_run(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when its pixels form one strided run, else a contiguous copy."""
    _, _, sh, sw = t.stride()
    return t if sh == t.shape[3] * sw or t.shape[2] == 1 else t.contiguous()


def pixel_strides(t: torch.Tensor) -> tuple[int, int, int]:
    """(sample, channel, pixel) strides of a tensor that :func:`pixel_run` returned."""
    sn, sc, _, sw = t.stride()
    return sn, sc, sw
