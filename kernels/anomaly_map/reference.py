"""The multi-scale cosine anomaly map in plain PyTorch: the CPU path and the
test oracle of :mod:`.triton`.

Per-scale ``1 - cos`` over channels, bilinear upsampling
(``align_corners=True``), sum (or product) over scales, then a Gaussian filter
with scipy's ``reflect`` border (half-sample symmetric) and
``2 * int(4 * sigma + 0.5) + 1`` taps, as ``scipy.ndimage.gaussian_filter``.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

COSINE_EPS = 1e-8


def cosine_distance(a: torch.Tensor, b: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """``1 - cos(a, b)`` along ``dim``, computed in float32 (or float64 if given).

    The denominator is ``max(|a| * |b|, 1e-8)``, so an all-zero vector gives a
    distance of 1 rather than NaN.
    """
    dtype = torch.float64 if a.dtype == torch.float64 else torch.float32
    a, b = a.to(dtype), b.to(dtype)
    dot = (a * b).sum(dim)
    norm = (a.square().sum(dim) * b.square().sum(dim)).sqrt()
    return 1.0 - dot / norm.clamp_min(COSINE_EPS)


def gaussian_radius(sigma: float) -> int:
    """Taps on each side of the centre, as ``scipy.ndimage.gaussian_filter`` (truncate=4)."""
    return int(4.0 * sigma + 0.5)


def gaussian_taps(sigma: float, dtype=torch.float32, device=None) -> torch.Tensor:
    """The normalised 1-D Gaussian of ``scipy.ndimage.gaussian_filter`` (truncate=4)."""
    radius = gaussian_radius(sigma)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    taps = torch.exp(-0.5 * (x / sigma) ** 2)
    return (taps / taps.sum()).to(dtype=dtype, device=device)


def reflect_index(n: int, radius: int, device=None) -> torch.Tensor:
    """Source indices for positions ``-radius .. n - 1 + radius`` under scipy's
    ``reflect`` border (``d c b a | a b c d | d c b a``), valid for any radius.
    Built from Python integers, so an exported graph holds them as a constant."""
    index = [i % (2 * n) for i in range(-radius, n + radius)]
    return torch.tensor([2 * n - 1 - i if i >= n else i for i in index], device=device)


def border_band(n: int, border: int) -> int:
    """The cells at each end of a side of ``n`` cells that read from inside: ``border``,
    or none when n <= 2 * border (no inner cell)."""
    return border if n > 2 * border else 0


def inner_index(n: int, border: int, device=None) -> torch.Tensor:
    """Indices 0..n-1 clamped to [b, n-1-b], b = :func:`border_band`: the outermost cells at
    each end read the nearest inner cell. Built from Python integers, like :func:`reflect_index`."""
    band = border_band(n, border)
    return torch.tensor([min(max(i, band), n - 1 - band) for i in range(n)], device=device)


def gaussian_blur(maps: torch.Tensor, sigma: float, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Separable Gaussian filter of ``maps`` (B, H, W) with scipy's reflect border (``size``: (H, W)
    as Python integers, so that an exported graph holds them as constants; the batch stays -1)."""
    if sigma <= 0:
        return maps
    taps = gaussian_taps(sigma, maps.dtype, maps.device)
    radius = (taps.numel() - 1) // 2
    h, w = size or maps.shape[-2:]
    kernel = taps.view(1, 1, -1)
    rows = maps[:, :, reflect_index(w, radius, maps.device)]
    maps = F.conv1d(rows.reshape(-1, 1, w + 2 * radius), kernel).view(-1, h, w)
    cols = maps.transpose(1, 2)[:, :, reflect_index(h, radius, maps.device)]
    return F.conv1d(cols.reshape(-1, 1, h + 2 * radius), kernel).view(-1, w, h).transpose(1, 2).contiguous()


def upsample(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear (``align_corners``) upsampling of (B, C, h, w) to ``size``, by the scale factors when
    ``size`` is an exact multiple (the same values: align_corners places samples by the sizes alone), so
    that an exported graph's Resize takes constant scales rather than a size read from its input."""
    h, w = (int(n) for n in x.shape[-2:])
    size = (int(size[0]), int(size[1]))
    if size[0] % h or size[1] % w:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=True)
    return F.interpolate(x, scale_factor=(size[0] // h, size[1] // w), mode="bilinear", align_corners=True)


def cosine_anomaly_map(
    teacher: Sequence[torch.Tensor],
    student: Sequence[torch.Tensor],
    size: tuple[int, int],
    sigma: float = 4.0,
    mode: str = "add",
    border: int = 0,
) -> torch.Tensor:
    """Multi-scale cosine anomaly map, float32 (B, H, W) (float64 for float64 inputs).

    Args:
        teacher, student: sequences of (B, C_k, h_k, w_k) feature maps.
        size: output (H, W).
        sigma: Gaussian sigma in output pixels; 0 disables the filter.
        mode: ``"add"`` sums the upsampled per-scale maps, ``"mul"`` multiplies them.
        border: the outermost ``border`` rows and columns of each scale's distance map take the
            distance of the nearest cell inside them (:func:`inner_index`) before upsampling.
    """
    total = None
    for t, s in zip(teacher, student):
        distance = cosine_distance(t, s, dim=1).unsqueeze(1)
        if border:
            h, w = distance.shape[-2:]
            rows, cols = inner_index(h, border, distance.device), inner_index(w, border, distance.device)
            distance = distance[:, :, rows][..., cols]
        distance = upsample(distance, size)[:, 0]
        if total is None:
            total = distance
        else:
            total = total + distance if mode == "add" else total * distance
    return gaussian_blur(total, sigma, size)
