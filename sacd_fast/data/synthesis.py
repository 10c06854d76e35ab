"""Synthetic anomalies for the Siamese branch (docs/method.md, "Anomaly synthesis").

For each image x in [0, 1] (before normalisation) a patch with height and width
each uniform in [10, size/8) is placed uniformly at random and
``x' = x + 0.2 * noise`` inside it (no clipping), where noise is 6-octave 3-D
OpenSimplex noise in patch-local coordinates (:func:`sacd_fast.kernels.simplex_noise3d`).

Everything random comes from one int64 seed per image, so the same seeds give
the same batch on every device.
"""

from __future__ import annotations

import torch

from sacd_fast import kernels

MIN_PATCH = 10


def patch_bounds(size: int) -> tuple[int, int]:
    """[low, high) of a patch side for an image side of ``size`` (10..31 at 256)."""
    high = size // 8
    low = min(MIN_PATCH, high - 1)
    if low < 1:
        raise ValueError(f"images of side {size} are too small for anomaly synthesis (need >= 16)")
    return low, high


def synthesize(x01: torch.Tensor, seeds: torch.Tensor | None = None,
               generator: torch.Generator | None = None, strength: float = 0.2
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Corrupt a batch with one simplex-noise patch per image.

    Args:
        x01: (B, C, H, W) images in [0, 1].
        seeds: int64 (B,) per-image seeds; drawn from ``generator`` when None.
        generator: CPU generator for the seeds (default: torch's global one).
        strength: noise amplitude (0.2 as in RD++).

    Returns:
        ``(x_synth, masks)``: the corrupted batch (same dtype and device) and
        float masks (B, 1, H, W), 1 inside each patch.
    """
    if not isinstance(x01, torch.Tensor) or x01.dim() != 4:
        shape = tuple(x01.shape) if isinstance(x01, torch.Tensor) else type(x01).__name__
        raise ValueError(f"synthesize expects (B, C, H, W) images, got {shape}")
    b, _, height, width = x01.shape
    if seeds is None:
        seeds = torch.randint(-(2**63), 2**63 - 1, (b,), generator=generator, dtype=torch.int64)
    if isinstance(seeds, torch.Tensor) and not seeds.is_floating_point():
        seeds = seeds.to(device=x01.device, dtype=torch.int64)
    return kernels.synthesize_patches(x01, seeds, strength, patch_bounds(height), patch_bounds(width))
