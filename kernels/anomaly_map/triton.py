"""Triton kernels for the multi-scale cosine anomaly map (docs/method.md, Inference).

Three steps, each a single pass over its data:

1. ``_cosine_distance_kernel``: per scale, ``1 - cos`` over channels for a
   block of pixels, reading each feature element once (any float dtype,
   contiguous or channels_last: the pixel and channel strides are arguments),
   accumulating in fp32, its tile autotuned per shape;
2. ``_upsample_combine_kernel``: bilinear upsampling (align_corners=True) of
   up to three scales' distances onto the output (the cells of a scale's
   border band read as their nearest inner cell), summed (or multiplied) in
   the order of the scales, the map written once;
3. ``_gaussian_columns_kernel``: the separable Gaussian with scipy's
   'reflect' border, twice down the columns, each pass writing its result
   transposed, so that both passes read rows coalesced; tiles away from the
   border skip the reflection.

The features dominate the traffic (478 MB for WideResNet at batch 32, 256²);
the maps themselves are 8 MB. Steps 2 and 3 stay separate: fusing the upsample
into the first Gaussian pass would save one write and one read of the map
(about 4 µs at batch 32 on an H200), but a Triton program cannot gather its
neighbours' values from registers, so each of the 33 taps (sigma 4) would
recompute its pixel's bilinear blend of three scales: 12 loads and their
weights per tap instead of one load.
"""

from __future__ import annotations

import functools
from typing import Sequence

import torch
import triton
import triton.language as tl

from ..launch import block_size, cdiv, check_grid, next_power_of_2, pixel_run, quick_bench, tiles, to_kernel_dtype
from .reference import COSINE_EPS, border_band, gaussian_radius, gaussian_taps


def _cosine_configs() -> list[triton.Config]:
    """Pixel x channel tiles, tuned per shape: small maps (WideResNet's 16x16
    scale) need narrow pixel blocks to fill the GPU. At most 16 elements of a
    tile per thread: the three fp32 accumulators then take 84 registers on
    sm_90, which leaves 16 resident warps per SM (5 blocks of 4 warps, 2 of 8)
    to hide the loads' latency; 32 per thread took 166-174 and 4-8 warps."""
    return tiles([triton.Config({"BLOCK_C": c, "BLOCK_P": p}, num_warps=warps)
                  for c, p, warps in [(64, 16, 4), (32, 32, 4), (64, 32, 4), (32, 64, 4), (16, 128, 4), (64, 64, 8),
                                      (32, 128, 8)]],
                 triton.Config({"BLOCK_C": 32, "BLOCK_P": 32}))


def _drop_oversized_tiles(configs, named_args, **kwargs):
    """No tile wider than the channels or the pixels it covers."""
    c_max = max(16, next_power_of_2(named_args["C"]))
    p_max = max(16, next_power_of_2(named_args["P"]))
    return [c for c in configs if c.kwargs["BLOCK_C"] <= c_max and c.kwargs["BLOCK_P"] <= p_max] or configs[:1]


@triton.autotune(configs=_cosine_configs(), key=["C", "P", "t_sc", "s_sc"],
                 prune_configs_by={"early_config_prune": _drop_oversized_tiles}, do_bench=quick_bench)
@triton.jit
def _cosine_distance_kernel(t_ptr, s_ptr, out_ptr, C, P,
                            t_sb, t_sc, t_sp, s_sb, s_sc, s_sp, eps,
                            BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    i_p, i_b = tl.program_id(0), tl.program_id(1).to(tl.int64)
    o_p = i_p * BLOCK_P + tl.arange(0, BLOCK_P)
    m_p = o_p < P
    # Element-wise partial sums; the one reduction over channels comes after the loop.
    b_dot = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
    b_tt = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
    b_ss = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        o_c = c0 + tl.arange(0, BLOCK_C)
        m = (o_c < C)[:, None] & m_p[None, :]
        p_t = t_ptr + i_b * t_sb + o_c[:, None] * t_sc + o_p[None, :] * t_sp
        p_s = s_ptr + i_b * s_sb + o_c[:, None] * s_sc + o_p[None, :] * s_sp
        b_t = tl.load(p_t, mask=m, other=0.0).to(tl.float32)
        b_s = tl.load(p_s, mask=m, other=0.0).to(tl.float32)
        b_dot += b_t * b_s
        b_tt += b_t * b_t
        b_ss += b_s * b_s
    b_norm = tl.maximum(tl.sqrt(tl.sum(b_tt, axis=0) * tl.sum(b_ss, axis=0)), eps)
    tl.store(out_ptr + i_b * P + o_p, 1.0 - tl.sum(b_dot, axis=0) / b_norm, mask=m_p)


@triton.jit
def _bilinear(p_d, h, w, scale_y, scale_x, edge_y, edge_x, y, x, m):
    """Bilinear samples (align_corners=True) of one (h, w) map at output pixels (y, x);
    the cells read are clamped to [edge, n - 1 - edge] (the reference's ``inner_index``)."""
    src_y = y.to(tl.float32) * scale_y
    src_x = x.to(tl.float32) * scale_x
    y0 = tl.minimum(src_y.to(tl.int32), h - 1)
    x0 = tl.minimum(src_x.to(tl.int32), w - 1)
    wy = src_y - y0.to(tl.float32)
    wx = src_x - x0.to(tl.float32)
    y1 = tl.minimum(tl.maximum(y0 + 1, edge_y), h - 1 - edge_y)
    x1 = tl.minimum(tl.maximum(x0 + 1, edge_x), w - 1 - edge_x)
    y0 = tl.minimum(tl.maximum(y0, edge_y), h - 1 - edge_y)
    x0 = tl.minimum(tl.maximum(x0, edge_x), w - 1 - edge_x)
    v00 = tl.load(p_d + y0 * w + x0, mask=m, other=0.0)
    v01 = tl.load(p_d + y0 * w + x1, mask=m, other=0.0)
    v10 = tl.load(p_d + y1 * w + x0, mask=m, other=0.0)
    v11 = tl.load(p_d + y1 * w + x1, mask=m, other=0.0)
    return (1.0 - wy) * ((1.0 - wx) * v00 + wx * v01) + wy * ((1.0 - wx) * v10 + wx * v11)


@triton.jit
def _upsample_combine_kernel(out_ptr, H, W, d0_ptr, h0, w0, sy0, sx0, ey0, ex0, d1_ptr, h1, w1, sy1, sx1, ey1, ex1,
                             d2_ptr, h2, w2, sy2, sx2, ey2, ex2,
                             SCALES: tl.constexpr, ACCUMULATE: tl.constexpr, MUL: tl.constexpr, BLOCK: tl.constexpr):
    """Up to three scales' distances, upsampled and summed (or multiplied) in
    order, written to ``out`` (or combined with it, with ``ACCUMULATE``)."""
    i_o, i_b = tl.program_id(0), tl.program_id(1).to(tl.int64)
    o = i_o * BLOCK + tl.arange(0, BLOCK)
    m = o < H * W
    y, x = o // W, o % W
    b_v = _bilinear(d0_ptr + i_b * h0 * w0, h0, w0, sy0, sx0, ey0, ex0, y, x, m)
    if SCALES > 1:
        b_k = _bilinear(d1_ptr + i_b * h1 * w1, h1, w1, sy1, sx1, ey1, ex1, y, x, m)
        b_v = b_v * b_k if MUL else b_v + b_k
    if SCALES > 2:
        b_k = _bilinear(d2_ptr + i_b * h2 * w2, h2, w2, sy2, sx2, ey2, ex2, y, x, m)
        b_v = b_v * b_k if MUL else b_v + b_k
    p_out = out_ptr + i_b * H * W + o
    if ACCUMULATE:
        b_prev = tl.load(p_out, mask=m, other=0.0)
        b_v = b_prev * b_v if MUL else b_prev + b_v
    tl.store(p_out, b_v, mask=m)


@triton.jit
def _reflect(i, n):
    """scipy 'reflect' (half-sample symmetric) index into [0, n), for any i."""
    i = i % (2 * n)
    i = tl.where(i < 0, i + 2 * n, i)
    return tl.where(i >= n, 2 * n - 1 - i, i)


@triton.jit
def _reflect_once(i, n):
    """scipy 'reflect' index for -n <= i < 2n: at most one fold, at either border."""
    i = tl.where(i < 0, -1 - i, i)
    return tl.where(i >= n, 2 * n - 1 - i, i)


@triton.jit
def _gaussian_columns_kernel(in_ptr, out_ptr, H, W, radius, inv_sigma, inv_norm,
                             ONE_FOLD: tl.constexpr, BLOCK_Y: tl.constexpr, BLOCK_X: tl.constexpr):
    """One pass of the separable Gaussian down the columns of (B, H, W) maps,
    written transposed as (B, W, H): two passes blur both axes and restore the
    layout, and every tap's load reads runs along a row. A tile whose taps all
    fall inside the map reads without reflection; ``ONE_FOLD`` (radius <= H)
    makes the border tiles' reflection a single fold."""
    i_x, i_y, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    o_y = i_y * BLOCK_Y + tl.arange(0, BLOCK_Y)
    o_x = i_x * BLOCK_X + tl.arange(0, BLOCK_X)
    m_x = (o_x < W)[None, :]
    m = (o_y < H)[:, None] & m_x
    p_in = in_ptr + i_b * H * W + o_x[None, :]
    b_acc = tl.zeros([BLOCK_Y, BLOCK_X], dtype=tl.float32)
    if (i_y * BLOCK_Y >= radius) & ((i_y + 1) * BLOCK_Y + radius <= H):
        for j in range(0, 2 * radius + 1):
            d = (j - radius) * inv_sigma
            b_acc += tl.exp(-0.5 * d * d) * tl.load(p_in + (o_y + (j - radius))[:, None] * W, mask=m_x, other=0.0)
    else:
        for j in range(0, 2 * radius + 1):
            d = (j - radius) * inv_sigma
            if ONE_FOLD:
                src = _reflect_once(o_y + (j - radius), H)
            else:
                src = _reflect(o_y + (j - radius), H)
            b_acc += tl.exp(-0.5 * d * d) * tl.load(p_in + src[:, None] * W, mask=m, other=0.0)
    tl.store(out_ptr + i_b * H * W + o_x[None, :] * H + o_y[:, None], b_acc * inv_norm, mask=m)


def cosine_distance_triton(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``1 - cos`` over channels, float32 (B, h, w)."""
    t, t_strides = pixel_run(to_kernel_dtype(t))
    s, s_strides = pixel_run(to_kernel_dtype(s))
    b, c, h, w = t.shape
    out = torch.empty((b, h, w), dtype=torch.float32, device=t.device)
    grid = lambda meta: check_grid((cdiv(h * w, meta["BLOCK_P"]), b))  # noqa: E731
    _cosine_distance_kernel[grid](t, s, out, c, h * w, *t_strides, *s_strides, COSINE_EPS)
    return out


@functools.lru_cache(maxsize=16)
def _inverse_norm(sigma: float) -> float:
    """1 / the sum of the unnormalised taps exp(-d^2 / 2 sigma^2), |d| <= radius:
    the normalised centre tap."""
    return float(gaussian_taps(sigma, torch.float64)[gaussian_radius(sigma)])


def gaussian_blur_triton(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian (scipy 'reflect' border) of float32 (B, H, W) maps."""
    b, h, w = maps.shape
    radius = gaussian_radius(sigma)
    out = maps
    for rows, cols in ((h, w), (w, h)):  # down the columns, then down the columns of the transposed result
        block_y, block_x = block_size(rows, 32), block_size(cols, 32)
        src, out = out, torch.empty((b, cols, rows), dtype=torch.float32, device=maps.device)
        _gaussian_columns_kernel[check_grid((cdiv(cols, block_x), cdiv(rows, block_y), b))](
            src, out, rows, cols, radius, 1.0 / sigma, _inverse_norm(sigma), ONE_FOLD=radius <= rows,
            BLOCK_Y=block_y, BLOCK_X=block_x)
    return out


def cosine_anomaly_map_triton(teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor],
                              size: Sequence[int], sigma: float = 4.0, mode: str = "add",
                              border: int = 0) -> torch.Tensor:
    """Triton implementation of :func:`sacd_fast.kernels.anomaly_map.reference.cosine_anomaly_map` (float32 out)."""
    height, width = (int(v) for v in size)
    batch = teacher[0].shape[0]
    scales = []  # (distances, h, w, scale_y, scale_x, edge_y, edge_x) per scale
    for t, s in zip(teacher, student):
        distance = cosine_distance_triton(t, s)
        h, w = distance.shape[1:]
        scales.append((distance, h, w, (h - 1) / (height - 1) if height > 1 else 0.0,
                       (w - 1) / (width - 1) if width > 1 else 0.0,
                       border_band(h, border), border_band(w, border)))
    out = torch.empty((batch, height, width), dtype=torch.float32, device=teacher[0].device)
    block = block_size(height * width, 512)  # 4 pixels a thread: registers for 16 warps per SM
    for first in range(0, len(scales), 3):  # three scales a launch: SACD's whole map in one
        chunk = scales[first:first + 3]
        args = [a for scale in chunk + chunk[:1] * (3 - len(chunk)) for a in scale]  # unused slots: ignored
        _upsample_combine_kernel[check_grid((cdiv(height * width, block), batch))](
            out, height, width, *args, SCALES=len(chunk), ACCUMULATE=first > 0, MUL=mode == "mul", BLOCK=block)
    return gaussian_blur_triton(out, sigma) if sigma > 0 else out
