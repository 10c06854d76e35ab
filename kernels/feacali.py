"""Triton kernels for FeaCali's conv3x3 -> InstanceNorm -> LeakyReLU blocks
(SACD.md, Architecture 4).

Inference, a whole stack of blocks:

* ``_conv3x3_stats_kernel``: implicit-GEMM 3x3 convolution (``tl.dot``, any
  input strides, channels_last preferred; tiles autotuned per shape) whose
  epilogue adds each (sample, channel)'s sum and sum of squares into a small
  fp32 buffer. With
  ``NORM_INPUT`` it applies the previous block's InstanceNorm + LeakyReLU to
  its input as it loads it, so every conv output is written once and read once.
* ``_in_lrelu_apply_kernel``: the light pass that normalises the last block.

``fastest_stack`` times this chain against the cuDNN chain once per shape on
CUDA and keeps the faster.

At inference the conv bias is dropped: InstanceNorm subtracts each channel's
mean, so a per-channel constant never reaches the output. In training it stays
in the convolution, and its gradient comes out zero up to rounding.

Training, one block at a time: the convolution and its gradients run in cuDNN
under autograd; ``InstanceNormLReLU`` (``_in_lrelu_forward_kernel`` and
``_in_lrelu_backward_kernel``) does InstanceNorm + LeakyReLU and its
backward, one program per (sample, channel) row.
"""

from __future__ import annotations

import os
from typing import Sequence

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from . import reference
from .layout import kernel_dtype, pixel_run, pixel_strides
from .tuning import pick_faster, quick_bench


def _conv_configs() -> list[triton.Config]:
    """Tiles for Hopper-class GPUs, tuned per shape. The interpreter checks
    numbers, not speed: one small tile there."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32})]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k}, num_warps=warps, num_stages=stages)
            for m, n, k, warps, stages in [(64, 64, 32, 4, 3), (128, 64, 32, 4, 3), (64, 128, 32, 4, 3),
                                           (128, 128, 32, 8, 3), (128, 128, 64, 8, 3), (128, 64, 64, 4, 4)]]


def _drop_wide_tiles(configs, named_args, **kwargs):
    """No BLOCK_N wider than the output channels need (FeaCali's narrowest layers have 6)."""
    widest = max(16, triton.next_power_of_2(named_args["C_out"]))
    return [c for c in configs if c.kwargs["BLOCK_N"] <= widest] or configs[:1]


@triton.autotune(configs=_conv_configs(), key=["C_in", "C_out", "H", "W", "x_sc", "NORM_INPUT"],
                 reset_to_zero=["out_stats_ptr"], prune_configs_by={"early_config_prune": _drop_wide_tiles},
                 do_bench=quick_bench)
@triton.jit
def _conv3x3_stats_kernel(x_ptr, w_ptr, y_ptr, in_stats_ptr, out_stats_ptr,
                          C_in, C_out, H, W, x_sn, x_sc, x_sh, x_sw, y_sn, y_sc, y_sh, y_sw,
                          inv_hw, eps, slope,
                          NORM_INPUT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                          BLOCK_K: tl.constexpr):
    i_m, i_n, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    o_m = i_m * BLOCK_M + tl.arange(0, BLOCK_M)
    o_n = i_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_m = o_m < H * W
    m_n = o_n < C_out
    o_h = o_m // W
    o_w = o_m % W
    b_acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for tap in range(9):
        i_h = o_h + tap // 3 - 1
        i_w = o_w + tap % 3 - 1
        m_pix = m_m & (i_h >= 0) & (i_h < H) & (i_w >= 0) & (i_w < W)
        p_pix = x_ptr + i_b * x_sn + i_h * x_sh + i_w * x_sw
        for k0 in range(0, C_in, BLOCK_K):
            o_k = k0 + tl.arange(0, BLOCK_K)
            m_k = o_k < C_in
            m_a = m_pix[:, None] & m_k[None, :]
            b_a = tl.load(p_pix[:, None] + o_k[None, :] * x_sc, mask=m_a, other=0.0).to(tl.float32)
            if NORM_INPUT:
                p_stats = in_stats_ptr + (i_b * C_in + o_k) * 2
                mean = tl.load(p_stats, mask=m_k, other=0.0) * inv_hw
                var = tl.load(p_stats + 1, mask=m_k, other=0.0) * inv_hw - mean * mean
                rstd = 1.0 / tl.sqrt(tl.maximum(var, 0.0) + eps)
                b_a = (b_a - mean[None, :]) * rstd[None, :]
                b_a = tl.where(m_a, tl.where(b_a >= 0, b_a, b_a * slope), 0.0)
            p_w = w_ptr + (tap * C_in + o_k[:, None]) * C_out + o_n[None, :]
            b_w = tl.load(p_w, mask=m_k[:, None] & m_n[None, :], other=0.0)
            b_acc += tl.dot(b_a.to(b_w.dtype), b_w)
    m_out = m_m[:, None] & m_n[None, :]
    b_acc = tl.where(m_out, b_acc, 0.0)
    p_y = y_ptr + i_b * y_sn + o_n[None, :] * y_sc + o_h[:, None] * y_sh + o_w[:, None] * y_sw
    tl.store(p_y, b_acc.to(y_ptr.dtype.element_ty), mask=m_out)
    p_out = out_stats_ptr + (i_b * C_out + o_n) * 2
    tl.atomic_add(p_out, tl.sum(b_acc, axis=0), mask=m_n)
    tl.atomic_add(p_out + 1, tl.sum(b_acc * b_acc, axis=0), mask=m_n)


@triton.jit
def _in_lrelu_apply_kernel(y_ptr, stats_ptr, out_ptr, C, HW, y_sn, y_sc, y_sp, o_sn, o_sc, o_sp,
                           inv_hw, eps, slope, BLOCK: tl.constexpr):
    i_p, i_row = tl.program_id(0), tl.program_id(1).to(tl.int64)
    i_n, i_c = i_row // C, i_row % C
    o_p = i_p * BLOCK + tl.arange(0, BLOCK)
    m = o_p < HW
    mean = tl.load(stats_ptr + i_row * 2) * inv_hw
    var = tl.load(stats_ptr + i_row * 2 + 1) * inv_hw - mean * mean
    rstd = 1.0 / tl.sqrt(tl.maximum(var, 0.0) + eps)
    b_y = tl.load(y_ptr + i_n * y_sn + i_c * y_sc + o_p * y_sp, mask=m, other=0.0).to(tl.float32)
    b_z = (b_y - mean) * rstd
    b_z = tl.where(b_z >= 0, b_z, b_z * slope)
    tl.store(out_ptr + i_n * o_sn + i_c * o_sc + o_p * o_sp, b_z.to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def _in_lrelu_forward_kernel(y_ptr, out_ptr, stats_ptr, C, HW, y_sn, y_sc, y_sp, o_sn, o_sc, o_sp,
                             eps, slope, BLOCK: tl.constexpr):
    """One (sample, channel) row: mean and rstd (two-pass, in fp32), then the output."""
    i_row = tl.program_id(0).to(tl.int64)
    p_y = y_ptr + (i_row // C) * y_sn + (i_row % C) * y_sc
    p_o = out_ptr + (i_row // C) * o_sn + (i_row % C) * o_sc
    b_sum = tl.zeros([BLOCK], dtype=tl.float32)
    for p0 in range(0, HW, BLOCK):
        o_p = p0 + tl.arange(0, BLOCK)
        b_sum += tl.load(p_y + o_p * y_sp, mask=o_p < HW, other=0.0).to(tl.float32)
    mean = tl.sum(b_sum, axis=0) / HW
    b_sq = tl.zeros([BLOCK], dtype=tl.float32)
    for p0 in range(0, HW, BLOCK):
        o_p = p0 + tl.arange(0, BLOCK)
        b_d = tl.load(p_y + o_p * y_sp, mask=o_p < HW, other=0.0).to(tl.float32) - mean
        b_sq += tl.where(o_p < HW, b_d * b_d, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(b_sq, axis=0) / HW + eps)
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
    return b_z, tl.where(b_z >= 0, b_g, b_g * slope)


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


def _like(x: torch.Tensor, channels: int) -> torch.Tensor:
    n, _, h, w = x.shape
    return torch.empty((n, channels, h, w), dtype=x.dtype, device=x.device, memory_format=torch.channels_last)


def _conv_stats(x: torch.Tensor, weight: torch.Tensor, in_stats: torch.Tensor | None,
                eps: float, slope: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One implicit-GEMM conv3x3 (its input normalised on load when ``in_stats``
    is given) and the fp32 (N, C_out, 2) sums of its output."""
    n, c_in, h, w = x.shape
    c_out = weight.shape[0]
    packed = torch.empty((3, 3, c_in, c_out), dtype=x.dtype, device=x.device)
    packed.copy_(weight.permute(2, 3, 1, 0))  # (tap, C_in, C_out) in x's dtype: one pass over the weights
    y = _like(x, c_out)
    stats = torch.zeros((n, c_out, 2), dtype=torch.float32, device=x.device)
    grid = lambda meta: (triton.cdiv(h * w, meta["BLOCK_M"]), triton.cdiv(c_out, meta["BLOCK_N"]), n)  # noqa: E731
    _conv3x3_stats_kernel[grid](
        x, packed, y, stats if in_stats is None else in_stats, stats, c_in, c_out, h, w, *x.stride(),
        *y.stride(), 1.0 / (h * w), eps, slope, NORM_INPUT=in_stats is not None)
    return y, stats


def conv_in_lrelu_stack_triton(x: torch.Tensor, weights: Sequence[torch.Tensor], eps: float = 1e-5,
                               negative_slope: float = 0.01) -> torch.Tensor:
    """A chain of conv3x3 -> InstanceNorm -> LeakyReLU blocks, inference only
    (biases cancel under InstanceNorm). Returns (N, C_last, H, W), channels_last."""
    x = x.to(kernel_dtype(x))
    y, stats = None, None
    for weight in weights:
        y, stats = _conv_stats(x if y is None else y, weight, stats, eps, negative_slope)
    n, c, h, w = y.shape
    out = _like(y, c)
    block = min(triton.next_power_of_2(h * w), 1024)
    _in_lrelu_apply_kernel[(triton.cdiv(h * w, block), n * c)](
        y, stats, out, c, h * w, *pixel_strides(y), *pixel_strides(out), 1.0 / (h * w), eps, negative_slope,
        BLOCK=block)
    return out


def fastest_stack(x: torch.Tensor, weights: Sequence[torch.Tensor], eps: float = 1e-5,
                  negative_slope: float = 0.01) -> torch.Tensor:
    """The inference chain, fused (:func:`conv_in_lrelu_stack_triton`) or cuDNN.

    On CUDA both are timed once per shape and the faster one is kept: attorch
    found Triton convolutions slower than cuDNN, so the winner is measured, not
    assumed. Under the interpreter the fused chain always runs (correctness,
    not timings). Either way the result is channels_last in ``kernel_dtype(x)``,
    whatever autocast state the caller is in."""

    def fused():
        return conv_in_lrelu_stack_triton(x, weights, eps, negative_slope)

    def cudnn():
        out = x.to(kernel_dtype(x))
        with torch.autocast(x.device.type, enabled=False):
            for weight in weights:
                out = reference.conv_in_lrelu(out, weight.to(out.dtype), None, eps, negative_slope)
        return out.contiguous(memory_format=torch.channels_last)

    if not x.is_cuda:
        return fused()
    key = ("feacali", tuple(x.shape), x.dtype, x.is_contiguous(memory_format=torch.channels_last),
           tuple(tuple(w.shape) for w in weights), x.device)
    return fused() if pick_faster(key, {"fused": fused, "cudnn": cudnn}) == "fused" else cudnn()


class InstanceNormLReLU(torch.autograd.Function):
    """InstanceNorm + LeakyReLU of a convolution's output ``y`` (N, C, H, W),
    forward and backward in Triton; autograd differentiates the convolution."""

    @staticmethod
    def forward(ctx, y, eps, negative_slope):
        y = pixel_run(y)
        n, c, h, w = y.shape
        out = torch.empty_like(y)
        stats = torch.empty((n * c, 2), dtype=torch.float32, device=y.device)
        block = min(triton.next_power_of_2(h * w), 1024)
        _in_lrelu_forward_kernel[(n * c,)](y, out, stats, c, h * w, *pixel_strides(y), *pixel_strides(out),
                                           eps, negative_slope, BLOCK=block)
        ctx.save_for_backward(y, stats)
        ctx.slope = negative_slope
        return out

    @staticmethod
    def backward(ctx, grad_out):
        y, stats = ctx.saved_tensors
        grad_out = pixel_run(grad_out)
        n, c, h, w = y.shape
        dy = torch.empty_like(y)
        block = min(triton.next_power_of_2(h * w), 1024)
        _in_lrelu_backward_kernel[(n * c,)](y, grad_out, dy, stats, c, h * w, *pixel_strides(y),
                                            *pixel_strides(grad_out), *pixel_strides(dy), ctx.slope, BLOCK=block)
        return dy, None, None


def conv_in_lrelu_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                         eps: float = 1e-5, negative_slope: float = 0.01) -> torch.Tensor:
    """One block; when gradients are needed, the convolution (cuDNN under autograd)
    then :class:`InstanceNormLReLU`, else the fused kernels."""
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return InstanceNormLReLU.apply(F.conv2d(x, weight, bias, padding=1), eps, negative_slope)
    return conv_in_lrelu_stack_triton(x, [weight], eps, negative_slope)
