"""Triton kernels for the multi-scale cosine anomaly map (docs/method.md, Inference).

Three steps, each a single pass over its data:

1. ``_cosine_distance_kernel``: per scale, ``1 - cos`` over channels for a
   block of pixels, reading each feature element once (any float dtype,
   contiguous or channels_last: the pixel and channel strides are arguments),
   accumulating in fp32, its tile autotuned per shape;
2. ``_upsample_combine_kernel``: bilinear upsampling (align_corners=True) of
   up to three scales' distances onto the output, summed (or multiplied) in
   the order of the scales, the map written once;
3. ``_gaussian_kernel``: one axis of the separable Gaussian with scipy's
   'reflect' border, on 2-D tiles so that both passes read rows coalesced.

The features dominate the traffic (478 MB for WideResNet at batch 32, 256²);
the maps themselves are 8 MB.
"""

from __future__ import annotations

from typing import Sequence

import torch
import triton
import triton.language as tl

from ..launch import block_size, cdiv, check_grid, kernel_dtype, next_power_of_2, pixel_run, quick_bench, tiles
from .reference import COSINE_EPS, gaussian_radius


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
def _bilinear(p_d, h, w, scale_y, scale_x, y, x, m):
    """Bilinear samples (align_corners=True) of one (h, w) map at output pixels (y, x)."""
    src_y = y.to(tl.float32) * scale_y
    src_x = x.to(tl.float32) * scale_x
    y0 = tl.minimum(src_y.to(tl.int32), h - 1)
    x0 = tl.minimum(src_x.to(tl.int32), w - 1)
    y1 = tl.minimum(y0 + 1, h - 1)
    x1 = tl.minimum(x0 + 1, w - 1)
    wy = src_y - y0.to(tl.float32)
    wx = src_x - x0.to(tl.float32)
    v00 = tl.load(p_d + y0 * w + x0, mask=m, other=0.0)
    v01 = tl.load(p_d + y0 * w + x1, mask=m, other=0.0)
    v10 = tl.load(p_d + y1 * w + x0, mask=m, other=0.0)
    v11 = tl.load(p_d + y1 * w + x1, mask=m, other=0.0)
    return (1.0 - wy) * ((1.0 - wx) * v00 + wx * v01) + wy * ((1.0 - wx) * v10 + wx * v11)


@triton.jit
def _upsample_combine_kernel(out_ptr, H, W, d0_ptr, h0, w0, sy0, sx0, d1_ptr, h1, w1, sy1, sx1,
                             d2_ptr, h2, w2, sy2, sx2,
                             SCALES: tl.constexpr, ACCUMULATE: tl.constexpr, MUL: tl.constexpr, BLOCK: tl.constexpr):
    """Up to three scales' distances, upsampled and summed (or multiplied) in
    order, written to ``out`` (or combined with it, with ``ACCUMULATE``)."""
    i_o, i_b = tl.program_id(0), tl.program_id(1).to(tl.int64)
    o = i_o * BLOCK + tl.arange(0, BLOCK)
    m = o < H * W
    y, x = o // W, o % W
    b_v = _bilinear(d0_ptr + i_b * h0 * w0, h0, w0, sy0, sx0, y, x, m)
    if SCALES > 1:
        b_k = _bilinear(d1_ptr + i_b * h1 * w1, h1, w1, sy1, sx1, y, x, m)
        b_v = b_v * b_k if MUL else b_v + b_k
    if SCALES > 2:
        b_k = _bilinear(d2_ptr + i_b * h2 * w2, h2, w2, sy2, sx2, y, x, m)
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
def _gaussian_kernel(in_ptr, out_ptr, H, W, radius, inv_sigma,
                     AXIS: tl.constexpr, BLOCK_Y: tl.constexpr, BLOCK_X: tl.constexpr):
    i_x, i_y, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    o_y = i_y * BLOCK_Y + tl.arange(0, BLOCK_Y)
    o_x = i_x * BLOCK_X + tl.arange(0, BLOCK_X)
    m = (o_y < H)[:, None] & (o_x < W)[None, :]
    p_in = in_ptr + i_b * H * W
    norm = 0.0  # the taps, exp(-d^2 / 2 sigma^2) normalised to sum 1, are made here: no table to upload
    for j in range(0, 2 * radius + 1):
        d = (j - radius) * inv_sigma
        norm += tl.exp(-0.5 * d * d)
    b_acc = tl.zeros([BLOCK_Y, BLOCK_X], dtype=tl.float32)
    for j in range(0, 2 * radius + 1):
        d = (j - radius) * inv_sigma
        tap = tl.exp(-0.5 * d * d) / norm
        if AXIS == 0:
            src = _reflect(o_y + (j - radius), H)
            offsets = src[:, None] * W + o_x[None, :]
        else:
            src = _reflect(o_x + (j - radius), W)
            offsets = o_y[:, None] * W + src[None, :]
        b_acc += tap * tl.load(p_in + offsets, mask=m, other=0.0)
    tl.store(out_ptr + i_b * H * W + o_y[:, None] * W + o_x[None, :], b_acc, mask=m)


def cosine_distance_triton(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``1 - cos`` over channels, float32 (B, h, w)."""
    t, t_strides = pixel_run(t.to(kernel_dtype(t)))
    s, s_strides = pixel_run(s.to(kernel_dtype(s)))
    b, c, h, w = t.shape
    out = torch.empty((b, h, w), dtype=torch.float32, device=t.device)
    grid = lambda meta: check_grid((cdiv(h * w, meta["BLOCK_P"]), b))  # noqa: E731
    _cosine_distance_kernel[grid](t, s, out, c, h * w, *t_strides, *s_strides, COSINE_EPS)
    return out


def gaussian_blur_triton(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian (scipy 'reflect' border) of float32 (B, H, W) maps."""
    b, h, w = maps.shape
    radius = gaussian_radius(sigma)
    block_y, block_x = block_size(h, 16), block_size(w, 64)
    grid = check_grid((cdiv(w, block_x), cdiv(h, block_y), b))
    rows = torch.empty((b, h, w), dtype=torch.float32, device=maps.device)
    _gaussian_kernel[grid](maps, rows, h, w, radius, 1.0 / sigma, AXIS=1, BLOCK_Y=block_y, BLOCK_X=block_x)
    out = torch.empty((b, h, w), dtype=torch.float32, device=maps.device)
    _gaussian_kernel[grid](rows, out, h, w, radius, 1.0 / sigma, AXIS=0, BLOCK_Y=block_y, BLOCK_X=block_x)
    return out


def cosine_anomaly_map_triton(teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor],
                              size: Sequence[int], sigma: float = 4.0, mode: str = "add") -> torch.Tensor:
    """Triton implementation of :func:`sacd_fast.kernels.reference.cosine_anomaly_map` (float32 out)."""
    height, width = (int(v) for v in size)
    batch = teacher[0].shape[0]
    scales = []  # (distances, h, w, scale_y, scale_x) per scale
    for t, s in zip(teacher, student):
        distance = cosine_distance_triton(t, s)
        h, w = distance.shape[1:]
        scales.append((distance, h, w, (h - 1) / (height - 1) if height > 1 else 0.0,
                       (w - 1) / (width - 1) if width > 1 else 0.0))
    out = torch.empty((batch, height, width), dtype=torch.float32, device=teacher[0].device)
    block = block_size(height * width, 512)  # 4 pixels a thread: registers for 16 warps per SM
    for first in range(0, len(scales), 3):  # three scales a launch: SACD's whole map in one
        chunk = scales[first:first + 3]
        args = [a for scale in chunk + chunk[:1] * (3 - len(chunk)) for a in scale]  # unused slots: ignored
        _upsample_combine_kernel[check_grid((cdiv(height * width, block), batch))](
            out, height, width, *args, SCALES=len(chunk), ACCUMULATE=first > 0, MUL=mode == "mul", BLOCK=block)
    return gaussian_blur_triton(out, sigma) if sigma > 0 else out
