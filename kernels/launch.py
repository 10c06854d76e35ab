"""Launch helpers shared by every Triton kernel: what layouts the kernels
accept, grid and block sizes, the interpreter's tile, and device timing.

Layouts. The kernels read fp32, fp16 or bf16 (N, C, H, W) tensors through their
(sample, channel, pixel) strides: the H*W pixels of a (sample, channel) must
form one evenly strided run. That covers contiguous NCHW and channels_last,
and any view whose H or W is 1, whatever stride PyTorch left on the size-1
dimension (``.contiguous()`` keeps such a view as it is).

Arithmetic. Grids and block sizes are plain Python integer arithmetic
(``cdiv``, ``next_power_of_2``): ``triton.cdiv`` and
``triton.next_power_of_2`` cost microseconds per call in recent Triton
releases, and a launcher calls them several times per launch.

Timing. The autotuned kernels and :func:`pick_faster` time with short budgets
(5 ms of warm-up, 20 ms of repetitions): the first call of a shape pays for
the tuning, which keeps short CUDA test and benchmark runs short.
"""

from __future__ import annotations

import os
from typing import Callable

import torch

# CUDA's grid limits: x up to 2**31 - 1 programs, y and z up to 65,535.
MAX_GRID = (2**31 - 1, 65535, 65535)

# Under TRITON_INTERPRET=1 the kernels run on the CPU, one program at a time: the
# autotuned kernels offer a single small tile there (numbers are checked, not speed).
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` for positive integers."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= ``n`` (1 for n <= 1)."""
    return 1 << (n - 1).bit_length() if n > 1 else 1


def block_size(n: int, cap: int = 1024) -> int:
    """A block for ``n`` elements (e.g. the H*W pixels one program walks): the next power of two, at most ``cap``."""
    return min(next_power_of_2(n), cap)


def tiles(configs: list, interpreted) -> list:
    """The autotuner's configs: ``configs`` on a GPU, the single ``interpreted`` one under the interpreter."""
    return [interpreted] if INTERPRET else configs


def kernel_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype a kernel reads ``t`` in: its own when fp32, fp16 or bf16, else float32."""
    return t.dtype if t.dtype in (torch.float32, torch.float16, torch.bfloat16) else torch.float32


def to_kernel_dtype(t: torch.Tensor) -> torch.Tensor:
    """``t`` in :func:`kernel_dtype` (``t`` itself when it already is: ``Tensor.to`` costs microseconds
    even when it has nothing to do)."""
    dtype = kernel_dtype(t)
    return t if t.dtype == dtype else t.to(dtype)


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


def quick_bench(fn: Callable[[], object], quantiles=None):
    """Milliseconds per call of ``fn`` (triton.testing.do_bench, short budget);
    the autotuners' ``do_bench``."""
    from triton.testing import do_bench

    return do_bench(fn, warmup=5, rep=20, quantiles=quantiles)


_FASTER: dict[tuple, str] = {}  # measured winner per (path set, shape, dtype, layout, weights, device)


def pick_faster(key: tuple, candidates: dict[str, Callable[[], torch.Tensor]]) -> str:
    """The candidate that ran fastest for ``key``, timed once and remembered.
    Each runs once before the timing: a first call compiles and autotunes, and
    do_bench would size its repetitions from that slow call."""
    if key not in _FASTER:
        for fn in candidates.values():
            fn()
        times = {name: quick_bench(fn) for name, fn in candidates.items()}
        _FASTER[key] = min(times, key=times.get)
    return _FASTER[key]
