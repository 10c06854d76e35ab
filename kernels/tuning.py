"""Timing on the device, for choosing between implementations.

Both the autotuned kernels and :func:`pick_faster` time with short budgets
(5 ms of warm-up, 20 ms of repetitions): the first call of a shape pays for
the tuning, which keeps short CUDA test and benchmark runs short.
"""

from __future__ import annotations

from typing import Callable

import torch


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
