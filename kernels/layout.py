"""What the kernels accept, and the launch limits they respect.

The kernels read fp32, fp16 or bf16 (N, C, H, W) tensors through their
(sample, channel, pixel) strides: the H*W pixels of a (sample, channel) must
form one evenly strided run. That covers contiguous NCHW and channels_last,
and any view whose H or W is 1, whatever stride PyTorch left on the size-1
dimension (``.contiguous()`` keeps such a view as it is).
"""

from __future__ import annotations

import torch

# CUDA's grid limits: x up to 2**31 - 1 programs, y and z up to 65,535.
MAX_GRID = (2**31 - 1, 65535, 65535)


def kernel_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype a kernel reads ``t`` in: its own when fp32, fp16 or bf16, else float32."""
    return t.dtype if t.dtype in (torch.float32, torch.float16, torch.bfloat16) else torch.float32


def _pixel_stride(t: torch.Tensor) -> int | None:
    """The stride between consecutive pixels (row-major over H, W), or None if they are no single run."""
    _, _, h, w = t.shape
    _, _, sh, sw = t.stride()
    if h == 1:
        return sw
    if w == 1:
        return sh
    return sw if sh == w * sw else None


def pixel_run(t: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """``t`` (or a contiguous copy when its pixels are no single run) and its
    (sample, channel, pixel) strides: element (n, c, p) is at ``n*sn + c*sc + p*sp``."""
    sp = _pixel_stride(t)
    if sp is None:
        t = t.contiguous()
        sp = _pixel_stride(t)
    sn, sc, _, _ = t.stride()
    return t, (sn, sc, sp)


def empty_like_layout(t: torch.Tensor, channels: int | None = None, dtype: torch.dtype | None = None
                      ) -> torch.Tensor:
    """An uninitialised (N, channels, H, W) tensor, channels_last when ``t`` is,
    else contiguous: a dense layout whatever view ``t`` is."""
    n, c, h, w = t.shape
    channels_last = t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
    return torch.empty((n, c if channels is None else channels, h, w), dtype=dtype or t.dtype, device=t.device,
                       memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def check_grid(grid: tuple[int, ...]) -> tuple[int, ...]:
    """``grid`` itself; ValueError if an axis is empty or beyond CUDA's limits."""
    for axis, (size, limit) in enumerate(zip(grid, MAX_GRID)):
        if not 1 <= size <= limit:
            raise ValueError(f"kernel grid {grid}: axis {axis} has {size} programs, CUDA allows 1..{limit}")
    return grid
