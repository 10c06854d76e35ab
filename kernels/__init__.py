"""Compute kernels of sacd_fast (installed as ``sacd_fast.kernels``).

The public functions below are what the model calls. Their meaning is fixed by
the pure-PyTorch references in :mod:`sacd_fast.kernels.reference`; the Triton
kernels behind them must reproduce it.

One dispatch rule, here and nowhere else: a Triton kernel runs when Triton is
importable, ``SACD_DISABLE_TRITON`` is not ``1``, the call is not being traced
by torch.compile (inductor then generates its own kernels from the
references), no tensor is float64 (the kernels compute in fp32), and either
every tensor is on CUDA or ``TRITON_INTERPRET=1`` (the Triton interpreter, on
the CPU). Otherwise the reference runs.
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import torch

from . import reference

try:
    from . import anomaly_map as _anomaly_map
    from . import feacali as _feacali
    from . import simplex as _simplex
except ImportError:  # Triton is not installed: the references serve
    _anomaly_map = _feacali = _simplex = None

__all__ = ["conv_in_lrelu", "conv_in_lrelu_stack", "cosine_anomaly_map", "pick_faster", "simplex_noise3d",
           "synthesize_patches", "use_triton"]


def use_triton(*tensors: torch.Tensor) -> bool:
    """The dispatch rule (see the module docstring)."""
    if _anomaly_map is None or os.environ.get("SACD_DISABLE_TRITON") == "1" or torch.compiler.is_compiling():
        return False
    if any(t.dtype == torch.float64 for t in tensors):  # the kernels compute in fp32: float64 stays exact
        return False
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True
    return all(t.is_cuda for t in tensors)


def cosine_anomaly_map(teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor], size: Sequence[int],
                       sigma: float = 4.0, mode: str = "add") -> torch.Tensor:
    """Multi-scale cosine anomaly map, float32 (B, H, W).

    Args:
        teacher, student: sequences of (B, C_k, h_k, w_k) feature maps (fp32,
            bf16 or fp16; contiguous or channels_last); channels are reduced in fp32.
        size: output (H, W).
        sigma: Gaussian sigma (scipy 'reflect' border, 2*int(4*sigma+0.5)+1 taps); 0 disables it.
        mode: "add" sums the upsampled per-scale maps, "mul" multiplies them.
    """
    teacher, student = list(teacher), list(student)
    reference.check_anomaly_map_args(teacher, student, size, mode)
    if use_triton(*teacher, *student):
        return _anomaly_map.cosine_anomaly_map_triton(teacher, student, size, sigma, mode)
    return reference.cosine_anomaly_map(teacher, student, size, sigma, mode).float()


def simplex_noise3d(shape: Sequence[int], seeds: torch.Tensor, octaves: int = 6, persistence: float = 0.6,
                    frequency: float = 32.0) -> torch.Tensor:
    """Fractal 3-D OpenSimplex noise, float32 (B, C, H, W) on ``seeds.device``: value for value
    ``sum_o persistence**o * OpenSimplex(seeds[b]).noise3(x * 2**o / F, y * 2**o / F, c * 2**o / F)``."""
    shape = tuple(int(v) for v in shape)
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"simplex_noise3d: shape must be (B, C, H, W) with positive sizes, got {shape}")
    if seeds.dtype != torch.int64 or seeds.numel() != shape[0]:
        raise ValueError(f"simplex_noise3d: seeds must be int64 with one per image ({shape[0]}), "
                         f"got {seeds.dtype} with {seeds.numel()}")
    if use_triton(seeds):
        return _simplex.simplex_noise3d_triton(shape, seeds, octaves, persistence, frequency)
    return reference.simplex_noise3d(shape, seeds, octaves, persistence, frequency)


def synthesize_patches(x01: torch.Tensor, seeds: torch.Tensor, geometry: torch.Tensor, strength: float,
                       patch_shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``x01 + strength * noise`` inside each image's patch (noise in patch-local coordinates);
    ``geometry`` int64 (B, 4) is (top, left, height, width). Returns the batch and (B, 1, H, W) masks."""
    if use_triton(x01, seeds, geometry):
        return _simplex.synthesize_triton(x01, seeds, geometry, strength)
    return reference.synthesize_patches(x01, seeds, geometry, strength, patch_shape)


def conv_in_lrelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, eps: float = 1e-5,
                  negative_slope: float = 0.01) -> torch.Tensor:
    """``leaky_relu(instance_norm(conv2d(x, weight, bias, padding=1), eps), negative_slope)``,
    (B, C_out, H, W); differentiable."""
    if use_triton(x, weight):
        return _feacali.conv_in_lrelu_triton(x, weight, bias, eps, negative_slope)
    return reference.conv_in_lrelu(x, weight, bias, eps, negative_slope)


_FASTER: dict[tuple, str] = {}  # measured winner per (path set, shape, dtype, layout, weights, device)


def pick_faster(key: tuple, candidates: dict[str, Callable[[], torch.Tensor]]) -> str:
    """The candidate that ran fastest for ``key``, timed once (triton.testing.do_bench) and remembered."""
    if key not in _FASTER:
        from triton.testing import do_bench

        times = {name: do_bench(fn, warmup=5, rep=20) for name, fn in candidates.items()}
        _FASTER[key] = min(times, key=times.get)
    return _FASTER[key]


def conv_in_lrelu_stack(x: torch.Tensor, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor | None],
                        eps: float = 1e-5, negative_slope: float = 0.01) -> torch.Tensor:
    """A chain of :func:`conv_in_lrelu` blocks.

    Without gradients, on the Triton path, each block's normalisation is fused
    into the next block's input load. On CUDA the fused chain is timed once per
    shape against the cuDNN chain and the faster one is kept: attorch found
    Triton convolutions slower than cuDNN, so the winner is measured, not assumed."""
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or any(w.requires_grad for w in weights))
    if needs_grad or not use_triton(x, *weights):
        for weight, bias in zip(weights, biases):
            x = conv_in_lrelu(x, weight, bias, eps, negative_slope)
        return x

    def fused():
        return _feacali.conv_in_lrelu_stack_triton(x, weights, eps, negative_slope)

    def cudnn():
        out = x
        for weight, bias in zip(weights, biases):
            out = reference.conv_in_lrelu(out, weight, bias, eps, negative_slope)
        return out

    if not x.is_cuda:  # the interpreter: correctness runs, not timings
        return fused()
    key = ("feacali", tuple(x.shape), x.dtype, x.is_contiguous(memory_format=torch.channels_last),
           tuple(tuple(w.shape) for w in weights), x.device)
    return fused() if pick_faster(key, {"fused": fused, "cudnn": cudnn}) == "fused" else cudnn()
