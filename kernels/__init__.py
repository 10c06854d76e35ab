"""Compute kernels of sacd_fast (installed as ``sacd_fast.kernels``).

The public functions below are what the model calls. Their meaning is fixed by
the pure-PyTorch references in :mod:`sacd_fast.kernels.reference`; the Triton
kernels behind them must reproduce it.

One dispatch rule, here and nowhere else: a Triton kernel runs when Triton is
importable, ``SACD_DISABLE_TRITON`` is not ``1``, no tensor is float64 (the
kernels compute in fp32), and either every tensor is on CUDA or
``TRITON_INTERPRET=1`` (the Triton interpreter, on the CPU). Otherwise the
reference runs.

While torch.compile traces, the references are traced (inductor generates
its own kernels from them), except inside :func:`triton_in_compiled_graphs`:
there the two inference paths, the anomaly map and the FeaCali chain without
gradients, enter the graph as the custom ops of :mod:`.ops`. torch.compile
guards on that block, so a graph compiled inside it is only reused inside it.
Eager calls go to the launchers directly: the custom-op dispatcher would add
about 15 us to each (measured on the development CPU).
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Sequence

import torch

from . import reference

try:
    from . import anomaly_map as _anomaly_map
    from . import feacali as _feacali
    from . import ops as _ops
    from . import simplex as _simplex
except ImportError:  # Triton is not installed: the references serve
    _anomaly_map = _feacali = _ops = _simplex = None

__all__ = ["conv_in_lrelu", "conv_in_lrelu_stack", "cosine_anomaly_map", "simplex_noise3d", "synthesize_patches",
           "triton_in_compiled_graphs", "use_triton"]

_triton_in_graphs = False


@contextlib.contextmanager
def triton_in_compiled_graphs() -> Iterator[None]:
    """torch.compile, when it traces inside this block, calls the Triton anomaly
    map and FeaCali chain as custom ops instead of tracing their references."""
    global _triton_in_graphs
    outer, _triton_in_graphs = _triton_in_graphs, True
    try:
        yield
    finally:
        _triton_in_graphs = outer


def use_triton(*tensors: torch.Tensor, has_op: bool = False) -> bool:
    """The dispatch rule (see the module docstring); ``has_op``: the path has a custom op."""
    if _anomaly_map is None or os.environ.get("SACD_DISABLE_TRITON") == "1":
        return False
    if torch.compiler.is_compiling() and not (has_op and _triton_in_graphs):
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
    if use_triton(*teacher, *student, has_op=True):
        run = _ops.cosine_anomaly_map if torch.compiler.is_compiling() else _anomaly_map.cosine_anomaly_map_triton
        return run(teacher, student, [int(v) for v in size], float(sigma), mode)
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


def synthesize_patches(x01: torch.Tensor, seeds: torch.Tensor, strength: float, bounds_h: tuple[int, int],
                       bounds_w: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``x01 + strength * noise`` inside each image's patch, whose place and
    sides (in [low, high) of ``bounds_h``/``bounds_w``) come from its seed
    (:func:`reference.patch_geometry`); noise in patch-local coordinates.
    Returns the batch and (B, 1, H, W) masks."""
    if use_triton(x01, seeds):
        return _simplex.synthesize_triton(x01, seeds, strength, bounds_h, bounds_w)
    return reference.synthesize_patches(x01, seeds, strength, bounds_h, bounds_w)


def conv_in_lrelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, eps: float = 1e-5,
                  negative_slope: float = 0.01) -> torch.Tensor:
    """``leaky_relu(instance_norm(conv2d(x, weight, bias, padding=1), eps), negative_slope)``,
    (B, C_out, H, W); differentiable."""
    if use_triton(x, weight):
        return _feacali.conv_in_lrelu_triton(x, weight, bias, eps, negative_slope)
    return reference.conv_in_lrelu(x, weight, bias, eps, negative_slope)


def conv_in_lrelu_stack(x: torch.Tensor, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor | None],
                        eps: float = 1e-5, negative_slope: float = 0.01) -> torch.Tensor:
    """A chain of :func:`conv_in_lrelu` blocks. Without gradients, on the Triton
    path, the fused chain runs (each block's normalisation fused into the next
    block's input load), or the cuDNN chain where that was measured faster
    (:func:`sacd_fast.kernels.feacali.fastest_stack`)."""
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or any(w.requires_grad for w in weights))
    if needs_grad or not use_triton(x, *weights, has_op=True):
        for weight, bias in zip(weights, biases):
            x = conv_in_lrelu(x, weight, bias, eps, negative_slope)
        return x
    run = _ops.conv_in_lrelu_stack if torch.compiler.is_compiling() else _feacali.fastest_stack
    return run(x, list(weights), float(eps), float(negative_slope))
