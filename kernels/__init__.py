"""Compute kernels of sacd_fast (installed as ``sacd_fast.kernels``).

The public functions below are what the model calls. Each op has its folder,
its pure-PyTorch reference beside its Triton kernels
(``anomaly_map/``, ``feacali/``, ``simplex/``, each with ``reference.py`` and
``triton.py``); the reference fixes the meaning, the kernels must reproduce it.
Launch helpers (layouts, grids, block sizes, the interpreter's tiles, timing)
live in :mod:`.launch`.

Every public function first checks its arguments
(:mod:`sacd_fast.kernels.validation`), so both paths accept and refuse the same
inputs with the same ``ValueError``. Then one dispatch rule, here and nowhere
else: a Triton kernel runs when Triton is importable, ``SACD_DISABLE_TRITON``
is not ``1``, no tensor is float64 (the kernels compute in fp32), and every
tensor is on CUDA, or on the CPU under ``TRITON_INTERPRET=1`` (the Triton
interpreter). Otherwise (other devices too, such as ``meta``) the reference
runs.

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

from . import validation
from .anomaly_map import reference as map_reference
from .feacali import reference as feacali_reference
from .simplex import reference as simplex_reference

try:
    from . import ops as _ops
    from .anomaly_map import triton as _anomaly_map
    from .feacali import triton as _feacali
    from .simplex import triton as _simplex
except ImportError:  # Triton is not installed: the references serve
    _anomaly_map = _feacali = _ops = _simplex = None

__all__ = ["conv_in_lrelu", "conv_in_lrelu_stack", "cosine_anomaly_map", "prepare_conv_in_lrelu_stack",
           "simplex_noise3d", "synthesize_patches", "triton_in_compiled_graphs", "use_triton"]

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
    device = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"
    return all(t.device.type == device for t in tensors)


def cosine_anomaly_map(teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor], size: Sequence[int],
                       sigma: float = 4.0, mode: str = "add", border: int = 0) -> torch.Tensor:
    """Multi-scale cosine anomaly map, float32 (B, H, W).

    Args:
        teacher, student: lists of (B, C_k, h_k, w_k) feature maps (float16,
            bfloat16, float32 or float64; any strides); channels are reduced in fp32.
        size: output (H, W), integers >= 1.
        sigma: Gaussian sigma >= 0 (scipy 'reflect' border, 2*int(4*sigma+0.5)+1 taps); 0 disables it.
        mode: "add" sums the upsampled per-scale maps, "mul" multiplies them.
        border: integer >= 0; the outermost ``border`` rows and columns of each scale's
            distance map read as the nearest cell inside them (none where a side has
            no more than 2 * border cells).

    Example::

        >>> t = [torch.randn(2, 8, 4, 4)]
        >>> cosine_anomaly_map(t, [x + 0.1 for x in t], (16, 16)).shape
        torch.Size([2, 16, 16])
    """
    teacher, student, size, sigma, mode, border = validation.check_anomaly_map(teacher, student, size, sigma, mode,
                                                                               border)
    if use_triton(*teacher, *student, has_op=True):
        run = _ops.cosine_anomaly_map if torch.compiler.is_compiling() else _anomaly_map.cosine_anomaly_map_triton
        return run(teacher, student, list(size), sigma, mode, border)
    return map_reference.cosine_anomaly_map(teacher, student, size, sigma, mode, border).float()


def simplex_noise3d(shape: Sequence[int], seeds: torch.Tensor, octaves: int = 6, persistence: float = 0.6,
                    frequency: float = 32.0) -> torch.Tensor:
    """Fractal 3-D OpenSimplex noise, float32 (B, C, H, W) on ``seeds.device``: value for value
    ``sum_o persistence**o * OpenSimplex(seeds[b]).noise3(x * 2**o / F, y * 2**o / F, c * 2**o / F)``.

    Args:
        shape: (B, C, H, W), integers >= 1.
        seeds: int64 (B,), any int64 value.
        octaves: integer >= 1; persistence: finite; frequency: finite, > 0.
    """
    shape, octaves, persistence, frequency = validation.check_noise(shape, seeds, octaves, persistence, frequency)
    if use_triton(seeds):
        return _simplex.simplex_noise3d_triton(shape, seeds, octaves, persistence, frequency)
    return simplex_reference.simplex_noise3d(shape, seeds, octaves, persistence, frequency)


def synthesize_patches(x01: torch.Tensor, seeds: torch.Tensor, strength: float, bounds_h: tuple[int, int],
                       bounds_w: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``x01 + strength * noise`` inside each image's patch, whose place and
    sides (in [low, high) of ``bounds_h``/``bounds_w``) come from its seed
    (:func:`.simplex.reference.patch_geometry`); noise in patch-local coordinates.

    Args:
        x01: (B, C, H, W) float images.
        seeds: int64 (B,) on ``x01``'s device.
        strength: finite noise amplitude.
        bounds_h, bounds_w: [low, high) of the patch sides, 1 <= low < high <= side + 1.

    Returns:
        The batch (``x01``'s dtype) and float masks (B, 1, H, W), 1 inside each patch.
    """
    strength, bounds_h, bounds_w = validation.check_synthesis(x01, seeds, strength, bounds_h, bounds_w)
    if use_triton(x01, seeds):
        return _simplex.synthesize_triton(x01, seeds, strength, bounds_h, bounds_w)
    return simplex_reference.synthesize_patches(x01, seeds, strength, bounds_h, bounds_w)


def conv_in_lrelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, eps: float = 1e-5,
                  negative_slope: float = 0.01) -> torch.Tensor:
    """``leaky_relu(instance_norm(conv2d(x, weight, bias, padding=1), eps), negative_slope)``,
    (B, C_out, H, W); differentiable. One block of :func:`conv_in_lrelu_stack`, with its checks."""
    return conv_in_lrelu_stack(x, [weight], [bias], eps, negative_slope)


def prepare_conv_in_lrelu_stack(weights: Sequence[torch.Tensor], dtype: torch.dtype) -> None:
    """Make now what the fused chain keeps between calls for ``weights`` read in
    ``dtype`` (their packed copies), so that no CUDA-graph capture or
    torch.compile warm-up allocates it in a graph's memory pool. Does nothing
    where the fused chain does not run."""
    if _feacali is not None and all(use_triton(w) for w in weights):
        _feacali.prepare_stack(weights, dtype)


def conv_in_lrelu_stack(x: torch.Tensor, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor | None],
                        eps: float = 1e-5, negative_slope: float = 0.01, norm_last: bool = True) -> torch.Tensor:
    """A chain of conv3x3 (padding 1) -> InstanceNorm -> LeakyReLU blocks, (B, C_last, H, W);
    with ``norm_last=False`` the last block is conv3x3 (with its bias) -> LeakyReLU.

    Weights and biases are used in ``x``'s dtype. With gradients, each block is
    a cuDNN convolution and the Triton InstanceNorm + LeakyReLU (forward and
    backward). Without gradients, on the Triton path, the fused chain runs (each
    block's normalisation fused into the next block's input load, the last
    block's bias and LeakyReLU into its convolution when it has no
    normalisation), or the cuDNN chain where that was measured faster
    (:func:`sacd_fast.kernels.feacali.triton.fastest_stack`).

    Args:
        x: (B, C, H, W) float, with H * W >= 2 (InstanceNorm needs two pixels).
        weights: (C_out, C_in, 3, 3) per block, C_in the previous block's C_out.
        biases: (C_out,) or None per block, as many as ``weights``.
        eps: >= 0; negative_slope: finite.
        norm_last: whether the last block has InstanceNorm.
    """
    weights, biases, eps, negative_slope = validation.check_conv_stack(x, weights, biases, eps, negative_slope)
    tensors = [x, *weights, *(b for b in biases if b is not None)]
    triton_path = use_triton(*tensors, has_op=True)
    if triton_path and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)):
        # The fused chain reads the weights in x's dtype as it packs them: no cast here.
        run = _ops.conv_in_lrelu_stack if torch.compiler.is_compiling() else _feacali.fastest_stack
        return run(x, weights, eps, negative_slope, None if norm_last else biases[-1], norm_last)
    block = _feacali.conv_in_lrelu_train if triton_path else feacali_reference.conv_in_lrelu
    return feacali_reference.conv_in_lrelu_stack(
        x, [weight.to(x.dtype) for weight in weights], [None if b is None else b.to(x.dtype) for b in biases], eps,
        negative_slope, norm_last, block)
