"""Triton kernels for FeaCali's conv3x3 -> InstanceNorm -> LeakyReLU blocks
(docs/method.md, Architecture 4).

Inference, a whole stack of blocks:

* ``_conv3x3_stats_kernel``: implicit-GEMM 3x3 convolution (``tl.dot``, any
  input strides, channels_last preferred; tiles autotuned per shape). Its
  epilogue rounds the output to the stored dtype and takes the InstanceNorm
  statistics of those stored values: each (pixel tile, sample, channel block)
  writes its tile's mean and sum of squared deviations, and the program that
  finishes a (sample, channel block) last combines every tile's partials, a
  few tiles per load and in a fixed order, into the mean and 1/std (the mean
  of the tile means, then the tiles' squared deviations plus each tile's
  count times its mean's squared distance from that mean). The statistics are
  therefore numerically stable (no E[y^2] - mean^2) and bit-deterministic for
  a given tile configuration, whatever order the programs run in. With
  ``NORM_INPUT`` it applies the previous block's InstanceNorm + LeakyReLU to
  its input as it loads it, so every conv output is written once and read once.
  Without ``NORM_OUTPUT`` (a last block without InstanceNorm) the epilogue
  adds the bias and applies the LeakyReLU instead, and takes no statistics.
  The weights are repacked to (tap, C_in, C_out) once per weight and dtype
  (``packed_weight``; :func:`prepare_stack` makes them before any CUDA-graph
  capture, and a capture never adds to that cache: memory allocated then
  belongs to the graph's pool). The arrival counters are one zeroed buffer
  per chain call, which each launch leaves zero again for the next block, so
  two chains on different streams or threads never share one.
  fp32 inputs multiply in TF32 when ``torch.backends.cudnn.allow_tf32`` is set
  (PyTorch's default for convolutions, which cuDNN's chain follows too) and in
  IEEE fp32 otherwise.
* ``_in_lrelu_apply_kernel``: the light pass that normalises the last block
  when it has InstanceNorm, on [pixels x channels] tiles.

``fastest_stack`` times this chain against the cuDNN chain once per shape on
CUDA and keeps the faster; ``SACD_FEACALI=fused`` or ``cudnn`` fixes the
choice instead (the same in every process).

At inference the bias of a block with InstanceNorm is dropped: InstanceNorm
subtracts each channel's mean, so a per-channel constant never reaches the
output. In training it stays in the convolution, and its gradient comes out
zero up to rounding.

Training, one block at a time: the convolution and its gradients run in cuDNN
under autograd; ``InstanceNormLReLU`` (``_in_lrelu_forward_kernel`` and
``_in_lrelu_backward_kernel``) does InstanceNorm + LeakyReLU and its
backward, one program per (sample, channel) row, two passes in fp32.
"""

from __future__ import annotations

import os
import weakref
from typing import Sequence

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ..launch import (INTERPRET, block_size, cdiv, check_grid, empty_like_layout, next_power_of_2, pick_faster,
                      pixel_run, quick_bench, tiles, to_kernel_dtype)
from . import reference

MIN_BLOCK_M, MIN_BLOCK_N = 32, 32  # the smallest conv tiles: they size the partial-statistics buffers
# Tiles whose partial statistics the last program loads at once. A 64x64 map in 64-pixel tiles has 64 of
# them: the serial combination made 64 dependent L2 round trips (about 0.3 us each on an H100: some 20 us
# at the end of every normalised convolution); 8 at a time make 16 (8 per pass) for 2 x 8 x BLOCK_N more
# fp32 values in registers.
COMBINE_TILES = 8


def _conv_configs() -> list[triton.Config]:
    """Tiles for Hopper-class GPUs, tuned per shape."""
    return tiles([triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k}, num_warps=warps, num_stages=stages)
                  for m, n, k, warps, stages in [(64, 64, 32, 4, 3), (128, 64, 32, 4, 3), (64, 128, 32, 4, 3),
                                                 (128, 128, 32, 8, 3), (128, 128, 64, 8, 3), (128, 64, 64, 8, 4)]],
                 triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32}))


def _prune_tiles(configs, named_args, **kwargs):
    """No BLOCK_N wider than the output channels need (FeaCali's narrowest layers
    have 6), no 64-deep K steps on fp32 inputs (their register tiles spill), and
    no 4-warp tile beyond 64x64 where C_in is not a multiple of 16 (Lite0's 24,
    40, 112 and their halves: unaligned channel rows take masked scalar loads,
    and the 128x64 tile spilled at 255 registers with InstanceNorm on both sides)."""
    widest = max(16, next_power_of_2(named_args["C_out"]))
    deepest = 32 if named_args["x_ptr"].element_size() == 4 else 64
    unaligned = named_args["C_in"] % 16 != 0
    return [c for c in configs if c.kwargs["BLOCK_N"] <= widest and c.kwargs["BLOCK_K"] <= deepest
            and not (unaligned and c.num_warps == 4 and c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] > 64 * 64)] \
        or configs[:1]


def batch_bucket(n: int) -> int:
    """The batch as the convolution's autotuner sees it: 1, 2, 4, 8, 16 or 32 and
    more. The grid grows with the batch, so the best tile does too; one tuning
    per bucket, not per batch size (a smaller last batch re-tunes nothing)."""
    return min(next_power_of_2(n), 32)


@triton.autotune(configs=_conv_configs(), key=["C_in", "C_out", "H", "W", "x_sc", "NORM_INPUT", "NORM_OUTPUT",
                                               "n_bucket"],
                 prune_configs_by={"early_config_prune": _prune_tiles},
                 do_bench=quick_bench)
@triton.jit(do_not_specialize=["N", "n_bucket"])  # one binary for every batch size
def _conv3x3_stats_kernel(x_ptr, w_ptr, bias_ptr, y_ptr, in_stats_ptr, part_ptr, count_ptr, out_stats_ptr,
                          N, C_in, C_out, H, W, x_sn, x_sc, x_sh, x_sw, y_sn, y_sc, y_sh, y_sw, eps, slope,
                          n_bucket,  # batch_bucket(N): read by the autotuner only
                          NORM_INPUT: tl.constexpr, NORM_OUTPUT: tl.constexpr, DOT_FP32: tl.constexpr,
                          DOT_PRECISION: tl.constexpr, COMBINE: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    i_m, i_n, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    o_m = i_m * BLOCK_M + tl.arange(0, BLOCK_M)
    o_n = i_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_m = o_m < H * W
    m_n = o_n < C_out
    o_h = o_m // W
    o_w = o_m % W
    b_acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    # One loop over the 9 taps x the C_in blocks, so that the software pipeline
    # (num_stages) runs across taps instead of restarting at each of them.
    k_blocks = tl.cdiv(C_in, BLOCK_K)
    for step in range(0, 9 * k_blocks):
        tap = step // k_blocks
        i_h = o_h + tap // 3 - 1
        i_w = o_w + tap % 3 - 1
        m_pix = m_m & (i_h >= 0) & (i_h < H) & (i_w >= 0) & (i_w < W)
        o_k = (step - tap * k_blocks) * BLOCK_K + tl.arange(0, BLOCK_K)
        m_k = o_k < C_in
        m_a = m_pix[:, None] & m_k[None, :]
        p_a = x_ptr + i_b * x_sn + (i_h * x_sh + i_w * x_sw)[:, None] + o_k[None, :] * x_sc
        b_a = tl.load(p_a, mask=m_a, other=0.0).to(tl.float32)
        if NORM_INPUT:
            p_stats = in_stats_ptr + (i_b * C_in + o_k) * 2
            mean = tl.load(p_stats, mask=m_k, other=0.0)
            rstd = tl.load(p_stats + 1, mask=m_k, other=0.0)
            b_a = (b_a - mean[None, :]) * rstd[None, :]
            b_a = tl.where(m_a, tl.where(b_a >= 0, b_a, b_a * slope), 0.0)
        p_w = w_ptr + (tap * C_in + o_k[:, None]) * C_out + o_n[None, :]
        b_w = tl.load(p_w, mask=m_k[:, None] & m_n[None, :], other=0.0)
        if DOT_FP32:  # the interpreter's bf16 tl.dot is wrong: the GPU's rounding of the operands, exact products
            b_acc += tl.dot(b_a.to(b_w.dtype).to(tl.float32), b_w.to(tl.float32))
        else:  # fp32 operands: TF32 or IEEE products (DOT_PRECISION); fp16/bf16: the tensor cores' own
            b_acc += tl.dot(b_a.to(b_w.dtype), b_w, input_precision=DOT_PRECISION)
    m_out = m_m[:, None] & m_n[None, :]
    p_y = y_ptr + i_b * y_sn + o_n[None, :] * y_sc + o_h[:, None] * y_sh + o_w[:, None] * y_sw
    if not NORM_OUTPUT:  # a block without InstanceNorm: bias and LeakyReLU here, no statistics
        b_z = b_acc + tl.load(bias_ptr + o_n, mask=m_n, other=0.0).to(tl.float32)[None, :]
        tl.store(p_y, tl.where(b_z >= 0, b_z, b_z * slope).to(y_ptr.dtype.element_ty), mask=m_out)
        return
    b_y = b_acc.to(y_ptr.dtype.element_ty)
    tl.store(p_y, b_y, mask=m_out)
    # Statistics of the stored (rounded) values: this tile's mean and sum of squared deviations.
    b_v = tl.where(m_out, b_y.to(tl.float32), 0.0)
    count = tl.minimum(BLOCK_M, H * W - i_m * BLOCK_M).to(tl.float32)
    b_rough = tl.sum(b_v, axis=0) / count
    b_dev = tl.where(m_out, b_v - b_rough[None, :], 0.0)
    b_shift = tl.sum(b_dev, axis=0)  # corrected two-pass: refines the mean and the squares
    p_part = part_ptr + ((i_m * N + i_b) * C_out + o_n) * 2
    tl.store(p_part, b_rough + b_shift / count, mask=m_n)
    tl.store(p_part + 1, tl.maximum(tl.sum(b_dev * b_dev, axis=0) - b_shift * b_shift / count, 0.0), mask=m_n)
    # The last program of this (sample, channel block) to finish combines the tiles: the mean of their
    # means, then M2 = sum(M2_t + n_t (mean_t - mean)^2), COMBINE tiles per load (one L2 round trip for
    # COMBINE tiles, not one per tile), summed in a fixed order.
    tl.debug_barrier()
    tiles = tl.cdiv(H * W, BLOCK_M)
    arrived = tl.atomic_add(count_ptr + i_b * tl.cdiv(C_out, BLOCK_N) + i_n, 1, sem="acq_rel")
    if arrived == tiles - 1:
        o_t = tl.arange(0, COMBINE)
        b_sum = tl.zeros([BLOCK_N], dtype=tl.float32)
        for t0 in range(0, tiles, COMBINE):
            m_t = t0 + o_t < tiles
            n_t = tl.where(m_t, tl.minimum(BLOCK_M, H * W - (t0 + o_t) * BLOCK_M), 0).to(tl.float32)
            p_t = part_ptr + (((t0 + o_t)[:, None] * N + i_b) * C_out + o_n[None, :]) * 2
            b_mean = tl.load(p_t, mask=m_t[:, None] & m_n[None, :], other=0.0, cache_modifier=".cg")
            b_sum += tl.sum(b_mean * n_t[:, None], axis=0)
        mean = b_sum / (H * W)
        m2 = tl.zeros([BLOCK_N], dtype=tl.float32)
        for t0 in range(0, tiles, COMBINE):
            m_t = t0 + o_t < tiles
            n_t = tl.where(m_t, tl.minimum(BLOCK_M, H * W - (t0 + o_t) * BLOCK_M), 0).to(tl.float32)
            p_t = part_ptr + (((t0 + o_t)[:, None] * N + i_b) * C_out + o_n[None, :]) * 2
            m_a = m_t[:, None] & m_n[None, :]
            b_mean = tl.load(p_t, mask=m_a, other=0.0, cache_modifier=".cg")
            b_m2 = tl.load(p_t + 1, mask=m_a, other=0.0, cache_modifier=".cg")
            b_d = tl.where(m_a, b_mean - mean[None, :], 0.0)
            m2 += tl.sum(b_m2 + n_t[:, None] * b_d * b_d, axis=0)
        p_out = out_stats_ptr + (i_b * C_out + o_n) * 2
        tl.store(p_out, mean, mask=m_n)
        tl.store(p_out + 1, 1.0 / tl.sqrt(m2 / (H * W) + eps), mask=m_n)
        # Every tile has arrived: the counter goes back to zero for the next launch.
        tl.store(count_ptr + i_b * tl.cdiv(C_out, BLOCK_N) + i_n, 0)


@triton.jit
def _in_lrelu_apply_kernel(y_ptr, stats_ptr, out_ptr, C, HW, y_sn, y_sc, y_sp, o_sn, o_sc, o_sp, slope,
                           BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """InstanceNorm (from the conv's mean and 1/std) + LeakyReLU on a [pixels x channels] tile."""
    i_b, i_p, i_c = tl.program_id(0).to(tl.int64), tl.program_id(1), tl.program_id(2)
    o_p = i_p * BLOCK_P + tl.arange(0, BLOCK_P)
    o_c = i_c * BLOCK_C + tl.arange(0, BLOCK_C)
    m_c = o_c < C
    m = (o_p < HW)[:, None] & m_c[None, :]
    p_stats = stats_ptr + (i_b * C + o_c) * 2
    mean = tl.load(p_stats, mask=m_c, other=0.0)
    rstd = tl.load(p_stats + 1, mask=m_c, other=0.0)
    b_y = tl.load(y_ptr + i_b * y_sn + o_c[None, :] * y_sc + o_p[:, None] * y_sp, mask=m, other=0.0)
    b_z = (b_y.to(tl.float32) - mean[None, :]) * rstd[None, :]
    b_z = tl.where(b_z >= 0, b_z, b_z * slope)
    tl.store(out_ptr + i_b * o_sn + o_c[None, :] * o_sc + o_p[:, None] * o_sp, b_z.to(out_ptr.dtype.element_ty),
             mask=m)


@triton.jit
def _in_lrelu_forward_kernel(y_ptr, out_ptr, stats_ptr, C, HW, y_sn, y_sc, y_sp, o_sn, o_sc, o_sp,
                             eps, slope, BLOCK: tl.constexpr):
    """One (sample, channel) row: mean and rstd by the corrected two-pass
    algorithm in fp32 (the second pass also corrects the first pass's mean), then the output."""
    i_row = tl.program_id(0).to(tl.int64)
    p_y = y_ptr + (i_row // C) * y_sn + (i_row % C) * y_sc
    p_o = out_ptr + (i_row // C) * o_sn + (i_row % C) * o_sc
    b_sum = tl.zeros([BLOCK], dtype=tl.float32)
    for p0 in range(0, HW, BLOCK):
        o_p = p0 + tl.arange(0, BLOCK)
        b_sum += tl.load(p_y + o_p * y_sp, mask=o_p < HW, other=0.0).to(tl.float32)
    rough = tl.sum(b_sum, axis=0) / HW
    b_dev = tl.zeros([BLOCK], dtype=tl.float32)
    b_sq = tl.zeros([BLOCK], dtype=tl.float32)
    for p0 in range(0, HW, BLOCK):
        o_p = p0 + tl.arange(0, BLOCK)
        b_d = tl.where(o_p < HW, tl.load(p_y + o_p * y_sp, mask=o_p < HW, other=0.0).to(tl.float32) - rough, 0.0)
        b_dev += b_d
        b_sq += b_d * b_d
    dev = tl.sum(b_dev, axis=0)
    mean = rough + dev / HW
    rstd = 1.0 / tl.sqrt(tl.maximum(tl.sum(b_sq, axis=0) - dev * dev / HW, 0.0) / HW + eps)
    for p0 in range(0, HW, BLOCK):
        o_p = p0 + tl.arange(0, BLOCK)
        b_z = (tl.load(p_y + o_p * y_sp, mask=o_p < HW, other=0.0).to(tl.float32) - mean) * rstd
        tl.store(p_o + o_p * o_sp, tl.where(b_z >= 0, b_z, b_z * slope).to(out_ptr.dtype.element_ty),
                 mask=o_p < HW)
    tl.store(stats_ptr + i_row * 2, mean)
    tl.store(stats_ptr + i_row * 2 + 1, rstd)


@triton.jit
def _z_and_dz(p_y, p_g, o_p, m, y_sp, g_sp, mean, rstd, slope):
    """Normalised input z and the gradient dz = g * LeakyReLU'(z) at pixels ``o_p``."""
    b_z = (tl.load(p_y + o_p * y_sp, mask=m, other=0.0).to(tl.float32) - mean) * rstd
    b_g = tl.load(p_g + o_p * g_sp, mask=m, other=0.0).to(tl.float32)
    return b_z, tl.where(b_z > 0, b_g, b_g * slope)  # PyTorch's convention: slope at exactly 0


@triton.jit
def _in_lrelu_backward_kernel(y_ptr, g_ptr, dy_ptr, stats_ptr, C, HW, y_sn, y_sc, y_sp, g_sn, g_sc, g_sp,
                              d_sn, d_sc, d_sp, slope, BLOCK: tl.constexpr):
    """dy = rstd * (dz - mean(dz) - z * mean(dz * z)), dz = g * LeakyReLU'(z), z = (y - mean) * rstd."""
    i_row = tl.program_id(0).to(tl.int64)
    i_n, i_c = i_row // C, i_row % C
    mean = tl.load(stats_ptr + i_row * 2)
    rstd = tl.load(stats_ptr + i_row * 2 + 1)
    p_y = y_ptr + i_n * y_sn + i_c * y_sc
    p_g = g_ptr + i_n * g_sn + i_c * g_sc
    b_dz_sum = tl.zeros([BLOCK], dtype=tl.float32)
    b_dzz_sum = tl.zeros([BLOCK], dtype=tl.float32)
    for p0 in range(0, HW, BLOCK):
        o_p = p0 + tl.arange(0, BLOCK)
        b_z, b_dz = _z_and_dz(p_y, p_g, o_p, o_p < HW, y_sp, g_sp, mean, rstd, slope)
        b_dz_sum += b_dz
        b_dzz_sum += b_dz * b_z
    mean_dz = tl.sum(b_dz_sum, axis=0) / HW
    mean_dzz = tl.sum(b_dzz_sum, axis=0) / HW
    for p0 in range(0, HW, BLOCK):
        o_p = p0 + tl.arange(0, BLOCK)
        b_z, b_dz = _z_and_dz(p_y, p_g, o_p, o_p < HW, y_sp, g_sp, mean, rstd, slope)
        b_dy = rstd * (b_dz - mean_dz - b_z * mean_dzz)
        tl.store(dy_ptr + i_n * d_sn + i_c * d_sc + o_p * d_sp, b_dy.to(dy_ptr.dtype.element_ty), mask=o_p < HW)


# id(weight) -> (a weak reference to it, (version, data_ptr, dtype), its (tap, C_in, C_out) copy); an entry
# goes when its weight does. (torch.utils.weak.WeakIdKeyDictionary does this at about 10x the lookup cost.)
_PACKED: dict[int, tuple[weakref.ref, tuple, torch.Tensor]] = {}


def capturing(device: torch.device) -> bool:
    """Whether ``device``'s current stream is capturing a CUDA graph (memory allocated now belongs to the
    graph's private pool: nothing made now may be kept beyond the call)."""
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def packed_weight(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``weight`` (C_out, C_in, 3, 3) as (3, 3, C_in, C_out) in ``dtype``, the
    layout the convolution reads. Made once and kept while the weight lives;
    remade when its data change (an in-place update bumps the version counter,
    ``.data =`` or loading another storage moves the data pointer). While a
    CUDA graph is being captured a missing copy is made for the call only."""
    key = (weight._version, weight.data_ptr(), dtype)
    cached = _PACKED.get(id(weight))
    if cached is not None and cached[0]() is weight and cached[1] == key:
        return cached[2]
    c_out, c_in = weight.shape[:2]
    packed = torch.empty((3, 3, c_in, c_out), dtype=dtype, device=weight.device)
    packed.copy_(weight.detach().permute(2, 3, 1, 0))
    if capturing(weight.device):
        return packed
    ident = id(weight)
    _PACKED[ident] = (weakref.ref(weight, lambda _, ident=ident: _PACKED.pop(ident, None)), key, packed)
    return packed


def prepare_stack(weights: Sequence[torch.Tensor], dtype: torch.dtype) -> None:
    """Make the packed copies a chain of ``weights`` reads in ``dtype`` now,
    before any CUDA-graph capture or torch.compile warm-up could allocate them
    in a graph's memory pool (:func:`sacd_fast.fast` calls it)."""
    for weight in weights:
        packed_weight(weight, dtype)


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot``'s input precision for ``dtype`` operands: for fp32, TF32 when PyTorch allows it in
    convolutions (``torch.backends.cudnn.allow_tf32``), IEEE fp32 otherwise."""
    return "ieee" if dtype == torch.float32 and not torch.backends.cudnn.allow_tf32 else "tf32"


# The convolution's fp32-product path (the GPU's operand rounding, exact products): the interpreter's, whose
# low-precision tl.dot is wrong; tests set it to False to run the GPU's path where the interpreter is right.
DOT_FP32 = INTERPRET


def _conv_stats(x: torch.Tensor, weight: torch.Tensor, in_stats: torch.Tensor | None, partials: torch.Tensor,
                arrivals: torch.Tensor, eps: float, slope: float, bias: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """One implicit-GEMM conv3x3 (its input normalised on load when ``in_stats``
    is given): its channels_last output and the fp32 (N, C_out, 2) mean and 1/std.
    With a ``bias`` the block has no InstanceNorm: the output is LeakyReLU(conv + bias)
    and the statistics are not taken (the second value returned is ``in_stats``).
    ``partials``: fp32 scratch of at least (H*W / MIN_BLOCK_M) * N * C_out * 2 values;
    ``arrivals``: at least N * C_out / MIN_BLOCK_N int32 zeros, left zero."""
    n, c_in, h, w = x.shape
    c_out = weight.shape[0]
    packed = packed_weight(weight, x.dtype)
    y = torch.empty((n, c_out, h, w), dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    stats = torch.empty((n, c_out, 2), dtype=torch.float32, device=x.device) if bias is None else in_stats
    grid = lambda meta: check_grid(  # noqa: E731
        (cdiv(h * w, meta["BLOCK_M"]), cdiv(c_out, meta["BLOCK_N"]), n))
    unused = partials  # stands for a pointer that this variant of the kernel never reads or writes
    _conv3x3_stats_kernel[grid](
        x, packed, unused if bias is None else bias, y, unused if in_stats is None else in_stats, partials,
        arrivals, unused if stats is None else stats, n, c_in, c_out, h, w, *x.stride(), *y.stride(), eps, slope,
        batch_bucket(n), NORM_INPUT=in_stats is not None, NORM_OUTPUT=bias is None, DOT_FP32=DOT_FP32,
        DOT_PRECISION=dot_precision(x.dtype), COMBINE=COMBINE_TILES)
    return y, stats


def _apply_blocks(hw: int, c: int) -> tuple[int, int]:
    """(BLOCK_P, BLOCK_C) of the normalisation pass: up to 4,096 elements a tile."""
    block_c = block_size(c, 64)
    return block_size(hw, 4096 // block_c), block_c


def conv_in_lrelu_stack_triton(x: torch.Tensor, weights: Sequence[torch.Tensor], eps: float = 1e-5,
                               negative_slope: float = 0.01, last_bias: torch.Tensor | None = None,
                               norm_last: bool = True) -> torch.Tensor:
    """A chain of conv3x3 -> InstanceNorm -> LeakyReLU blocks, inference only
    (biases cancel under InstanceNorm); with ``norm_last=False`` the last block
    is conv3x3 + ``last_bias`` (zero when None) -> LeakyReLU, fused into its
    convolution. Returns (N, C_last, H, W), channels_last."""
    x = to_kernel_dtype(x)
    n, _, h, w = x.shape
    # One scratch for every block's per-tile statistics and one set of arrival counters, each block
    # leaving them zero for the next: the blocks run one after the other.
    widest = max(wt.shape[0] for wt in weights)
    partials = torch.empty(cdiv(h * w, MIN_BLOCK_M) * n * widest * 2, dtype=torch.float32, device=x.device)
    arrivals = torch.zeros(n * cdiv(widest, MIN_BLOCK_N), dtype=torch.int32, device=x.device)
    y, stats = x, None
    for k, weight in enumerate(weights):
        bias = None
        if k == len(weights) - 1 and not norm_last:
            bias = last_bias if last_bias is not None else x.new_zeros(weight.shape[0])  # read in fp32
        y, stats = _conv_stats(y, weight, stats, partials, arrivals, eps, negative_slope, bias)
    if not norm_last:
        return y
    c = y.shape[1]
    out = torch.empty((n, c, h, w), dtype=y.dtype, device=y.device, memory_format=torch.channels_last)
    y, y_strides = pixel_run(y)
    _, out_strides = pixel_run(out)
    block_p, block_c = _apply_blocks(h * w, c)
    _in_lrelu_apply_kernel[check_grid((n, cdiv(h * w, block_p), cdiv(c, block_c)))](
        y, stats, out, c, h * w, *y_strides, *out_strides, negative_slope, BLOCK_P=block_p, BLOCK_C=block_c)
    return out


def fastest_stack(x: torch.Tensor, weights: Sequence[torch.Tensor], eps: float = 1e-5,
                  negative_slope: float = 0.01, last_bias: torch.Tensor | None = None,
                  norm_last: bool = True) -> torch.Tensor:
    """The inference chain, fused (:func:`conv_in_lrelu_stack_triton`) or cuDNN.

    On CUDA both are timed once per shape and the faster one is kept: attorch
    found Triton convolutions slower than cuDNN, so the winner is measured, not
    assumed. Under the interpreter the fused chain always runs (correctness,
    not timings). Either way the result is channels_last in ``kernel_dtype(x)``,
    whatever autocast state the caller is in."""

    def fused():
        return conv_in_lrelu_stack_triton(x, weights, eps, negative_slope, last_bias, norm_last)

    def cudnn():
        out = to_kernel_dtype(x)
        biases = [None] * (len(weights) - 1) + [None if last_bias is None else last_bias.to(out.dtype)]
        with torch.autocast(x.device.type, enabled=False):
            out = reference.conv_in_lrelu_stack(out, [weight.to(out.dtype) for weight in weights], biases, eps,
                                                negative_slope, norm_last)
        return out.contiguous(memory_format=torch.channels_last)

    forced = os.environ.get("SACD_FEACALI", "")
    if forced not in ("", "fused", "cudnn"):
        raise ValueError(f"SACD_FEACALI must be 'fused' or 'cudnn' (or unset: the faster per shape), got {forced!r}")
    if forced == "cudnn":
        return cudnn()
    if not x.is_cuda or forced == "fused":
        return fused()
    key = ("feacali", tuple(x.shape), x.dtype, x.is_contiguous(memory_format=torch.channels_last),
           tuple(tuple(w.shape) for w in weights), norm_last, x.device)
    return fused() if pick_faster(key, {"fused": fused, "cudnn": cudnn}) == "fused" else cudnn()


class InstanceNormLReLU(torch.autograd.Function):
    """InstanceNorm + LeakyReLU of a convolution's output ``y`` (N, C, H, W),
    forward and backward in Triton; autograd differentiates the convolution."""

    @staticmethod
    def forward(ctx, y, eps, negative_slope):
        y, y_strides = pixel_run(y)
        n, c, h, w = y.shape
        out = empty_like_layout(y)
        stats = torch.empty((n * c, 2), dtype=torch.float32, device=y.device)
        block = block_size(h * w)
        _in_lrelu_forward_kernel[check_grid((n * c,))](y, out, stats, c, h * w, *y_strides, *pixel_run(out)[1],
                                                       eps, negative_slope, BLOCK=block)
        ctx.save_for_backward(y, stats)
        ctx.slope = negative_slope
        return out

    @staticmethod
    def backward(ctx, grad_out):
        y, stats = ctx.saved_tensors
        y, y_strides = pixel_run(y)
        grad_out, g_strides = pixel_run(grad_out)
        n, c, h, w = y.shape
        dy = empty_like_layout(y)
        block = block_size(h * w)
        _in_lrelu_backward_kernel[check_grid((n * c,))](y, grad_out, dy, stats, c, h * w, *y_strides, *g_strides,
                                                        *pixel_run(dy)[1], ctx.slope, BLOCK=block)
        return dy, None, None


def conv_in_lrelu_train(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                        eps: float = 1e-5, negative_slope: float = 0.01) -> torch.Tensor:
    """One block with gradients: the convolution (cuDNN under autograd), then
    :class:`InstanceNormLReLU`."""
    return InstanceNormLReLU.apply(F.conv2d(x, weight, bias, padding=1), eps, negative_slope)
