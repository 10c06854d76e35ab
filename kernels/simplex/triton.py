"""Triton kernels for OpenSimplex noise and anomaly synthesis (docs/method.md,
"Anomaly synthesis").

* ``_permutation_kernel``: opensimplex's seeded permutation tables, one
  program per seed: each lane follows one index through the shuffle's 256
  swaps, with no reduction, and the draws' modulo runs in 32 bits.
* ``_noise_field_kernel``: fractal noise on a (B, C, H, W) grid, as the
  reference :func:`sacd_fast.kernels.simplex.reference.simplex_noise3d`.
* ``_copy_mask_kernel`` and ``_patch_noise_kernel``: the synthesis, two
  launches for the whole batch, each placing every image's patch from its
  seed (as ``reference.patch_geometry``). The first copies every image and
  writes the masks, bandwidth-bound and free of float64; the second runs only
  over patch-sized grids and adds ``strength * noise`` (patch-local
  coordinates) inside each patch, small tiles keeping the float64 noise in
  registers.

The noise is evaluated in float64, as opensimplex does, so that it matches the
package to 1e-5 at every octave; the field is stored in float32.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ..launch import block_size, cdiv, check_grid
from . import reference
from .reference import GRADIENTS_3D

# The reference's constants, as compile-time constants of the kernels.
_LCG_MULTIPLIER = tl.constexpr(reference.LCG_MULTIPLIER)
_LCG_INCREMENT = tl.constexpr(reference.LCG_INCREMENT)
_STRETCH_3D = tl.constexpr(reference.STRETCH_3D)
_SQUISH_3D = tl.constexpr(reference.SQUISH_3D)
_NORM_3D = tl.constexpr(reference.NORM_3D)
_GEOMETRY_SALT = tl.constexpr(reference.GEOMETRY_SALT)
_DRAW_SHIFT = tl.constexpr(reference.DRAW_SHIFT)
_DRAW_MASK = tl.constexpr(reference.DRAW_MASK)
_GRADIENTS = tl.constexpr(len(GRADIENTS_3D))  # gradient vectors in the table


def _signed(value: int) -> int:
    """``value`` mod 2**64 as a signed 64-bit integer (the kernels' int64 wraps like C)."""
    return (value + 2**63) % 2**64 - 2**63


def _lcg_power(steps: int) -> tuple[int, int]:
    """(a, c) such that ``steps`` LCG steps take ``state`` to ``a * state + c`` (wrapping)."""
    c = 0
    for _ in range(steps):
        c = reference.lcg_step(c)  # the steps from state 0
    return _signed(pow(reference.LCG_MULTIPLIER, steps, 2**64)), c


# The shuffle's last draw is the seed's 3 + 256th LCG state; the inverse multiplier steps the LCG back.
_LAST_DRAW_MULTIPLIER, _LAST_DRAW_INCREMENT = (tl.constexpr(v) for v in _lcg_power(3 + 256))
_LCG_INVERSE = tl.constexpr(_signed(pow(reference.LCG_MULTIPLIER, -1, 2**64)))


@triton.jit
def _lcg(state):
    return state * _LCG_MULTIPLIER + _LCG_INCREMENT


@triton.jit
def _shuffle_index(state, n):
    """opensimplex's ``(state + 31) % n`` (floor modulo of the int64 ``state``,
    1 <= n <= 256) in 32-bit arithmetic: Horner's rule on the state's base-2**16
    digits, every partial value below 2**18."""
    digit = 65536 % n
    r = (state >> 32).to(tl.int32) % n + n  # the signed top digit; C's remainder, made positive
    r = (r * digit + ((state >> 16) & 0xFFFF).to(tl.int32)) % n
    return (r * digit + (state & 0xFFFF).to(tl.int32) + 31) % n


@triton.jit
def _permutation_kernel(seeds_ptr, perm_ptr, grad_index_ptr):
    """opensimplex's shuffle is the product of the swaps (i, r_i), i = 255..0.
    Each lane p follows its own index through them, last swap first, so
    ``perm[p]`` needs no exchange between lanes; the draws r_i come from the
    LCG run backwards from its last state."""
    i_b = tl.program_id(0).to(tl.int64)
    o = tl.arange(0, 256)
    state = tl.load(seeds_ptr + i_b) * _LAST_DRAW_MULTIPLIER + _LAST_DRAW_INCREMENT
    b_q = o
    for i in range(256):
        r = _shuffle_index(state, i + 1)
        b_q = tl.where(b_q == i, r, tl.where(b_q == r, i, b_q))
        state = (state - _LCG_INCREMENT) * _LCG_INVERSE
    tl.store(perm_ptr + i_b * 256 + o, b_q)
    tl.store(grad_index_ptr + i_b * 256 + o, (b_q % _GRADIENTS) * 3)


@triton.jit
def _contribution(dx0, dy0, dz0, xsb, ysb, zsb, i, j, k, p_perm, p_grad, p_vectors):
    s = (i + j + k).to(tl.float64) * _SQUISH_3D
    dx = dx0 - i.to(tl.float64) - s
    dy = dy0 - j.to(tl.float64) - s
    dz = dz0 - k.to(tl.float64) - s
    attn = tl.maximum(2.0 - dx * dx - dy * dy - dz * dz, 0.0)
    h = tl.load(p_perm + ((xsb + i) & 255))
    h = tl.load(p_perm + ((h + ysb + j) & 255))
    g = tl.load(p_grad + ((h + zsb + k) & 255))
    ramp = tl.load(p_vectors + g) * dx + tl.load(p_vectors + g + 1) * dy + tl.load(p_vectors + g + 2) * dz
    attn = attn * attn
    return attn * attn * ramp


@triton.jit
def _tetrahedron_0_extras(xins, yins, zins, in_sum, zero):
    """The two extra vertices in region 0 (the tetrahedron at the origin): the
    closest two of (1,0,0), (0,1,0), (0,0,1) decide them."""
    a_s = xins
    b_s = yins
    a_p = zero + 1
    b_p = zero + 2
    up_b = (a_s >= b_s) & (zins > b_s)
    up_a = (a_s < b_s) & (zins > a_s)
    b_s = tl.where(up_b, zins, b_s)
    b_p = tl.where(up_b, 4, b_p)
    a_s = tl.where(up_a, zins, a_s)
    a_p = tl.where(up_a, 4, a_p)
    near = ((1 - in_sum) > a_s) | ((1 - in_sum) > b_s)
    c = tl.where(b_s > a_s, b_p, a_p)
    cx = (c & 1) != 0
    cy = (c & 2) != 0
    cz = (c & 4) != 0
    d = a_p | b_p
    dx_ = (d & 1) != 0
    dy_ = (d & 2) != 0
    dz_ = (d & 4) != 0
    r0x0 = tl.where(near, tl.where(cx, 1, -1), tl.where(dx_, 1, 0))
    r0y0 = tl.where(near, tl.where(cy, 1, tl.where(cx, -1, 0)), tl.where(dy_, 1, 0))
    r0z0 = tl.where(near, tl.where(cz, 1, 0), tl.where(dz_, 1, 0))
    r0x1 = tl.where(near, tl.where(cx, 1, 0), tl.where(dx_, 1, -1))
    r0y1 = tl.where(near, tl.where(cy, 1, tl.where(cx, 0, -1)), tl.where(dy_, 1, -1))
    r0z1 = tl.where(near, tl.where(cz, 1, -1), tl.where(dz_, 1, -1))
    return r0x0, r0y0, r0z0, r0x1, r0y1, r0z1


@triton.jit
def _tetrahedron_1_extras(xins, yins, zins, in_sum, zero):
    """The two extra vertices in region 1 (the tetrahedron at (1,1,1)): the
    closest two of (1,1,0), (1,0,1), (0,1,1) decide them."""
    a_s = xins
    b_s = yins
    a_p = zero + 6
    b_p = zero + 5
    up_b = (a_s <= b_s) & (zins < b_s)
    up_a = (a_s > b_s) & (zins < a_s)
    b_s = tl.where(up_b, zins, b_s)
    b_p = tl.where(up_b, 3, b_p)
    a_s = tl.where(up_a, zins, a_s)
    a_p = tl.where(up_a, 3, a_p)
    near = ((3 - in_sum) < a_s) | ((3 - in_sum) < b_s)
    c = tl.where(b_s < a_s, b_p, a_p)
    cx = (c & 1) != 0
    cy = (c & 2) != 0
    cz = (c & 4) != 0
    d = a_p & b_p
    dx_ = (d & 1) != 0
    dy_ = (d & 2) != 0
    dz_ = (d & 4) != 0
    r1x0 = tl.where(near, tl.where(cx, 2, 0), tl.where(dx_, 1, 0))
    r1y0 = tl.where(near, tl.where(cy, tl.where(cx, 1, 2), 0), tl.where(dy_, 1, 0))
    r1z0 = tl.where(near, tl.where(cz, 1, 0), tl.where(dz_, 1, 0))
    r1x1 = tl.where(near, tl.where(cx, 1, 0), tl.where(dx_, 2, 0))
    r1y1 = tl.where(near, tl.where(cy, tl.where(cx, 2, 1), 0), tl.where(dy_, 2, 0))
    r1z1 = tl.where(near, tl.where(cz, 2, 0), tl.where(dz_, 2, 0))
    return r1x0, r1y0, r1z0, r1x1, r1y1, r1z1


@triton.jit
def _octahedron_extras(xins, yins, zins):
    """The two extra vertices in region 2 (the octahedron between): the closest
    of the pairs (0,0,1)/(1,1,0), (0,1,0)/(1,0,1), (1,0,0)/(0,1,1) decide them."""
    p1 = xins + yins
    p2 = xins + zins
    p3 = yins + zins
    a_far = p1 > 1
    b_far = p2 > 1
    a_s = tl.where(a_far, p1 - 1, 1 - p1)
    a_p = tl.where(a_far, 3, 4)
    b_s = tl.where(b_far, p2 - 1, 1 - p2)
    b_p = tl.where(b_far, 5, 2)
    p3_far = p3 > 1
    score = tl.where(p3_far, p3 - 1, 1 - p3)
    p3_point = tl.where(p3_far, 6, 1)
    swap_a = (a_s <= b_s) & (a_s < score)
    swap_b = (a_s > b_s) & (b_s < score)
    a_p = tl.where(swap_a, p3_point, a_p)
    a_far = tl.where(swap_a, p3_far, a_far)
    b_p = tl.where(swap_b, p3_point, b_p)
    b_far = tl.where(swap_b, p3_far, b_far)
    both_far = (a_far == b_far) & a_far
    both_near = (a_far == b_far) & (a_far == 0)
    c1 = tl.where(a_far, a_p, b_p)
    c2 = tl.where(a_far, b_p, a_p)
    # (1,1,-1) permutation: -1 on the first axis that m lacks; (0,0,2): 2 on the first axis that n has.
    m = tl.where(both_near, a_p | b_p, c1)
    mx = (m & 1) != 0
    my = (m & 2) != 0
    n = tl.where(both_far, a_p & b_p, c2)
    nx = (n & 1) != 0
    ny = (n & 2) != 0
    r2x0 = tl.where(both_far, 1, tl.where(both_near, 0, tl.where(mx, 1, -1)))
    r2y0 = tl.where(both_far, 1, tl.where(both_near, 0, tl.where(mx & ~my, -1, 1)))
    r2z0 = tl.where(both_far, 1, tl.where(both_near, 0, tl.where(mx & my, -1, 1)))
    r2x1 = tl.where(both_near, tl.where(mx, 1, -1), tl.where(nx, 2, 0))
    r2y1 = tl.where(both_near, tl.where(mx & ~my, -1, 1), tl.where(~nx & ny, 2, 0))
    r2z1 = tl.where(both_near, tl.where(mx & my, -1, 1), tl.where(~nx & ~ny, 2, 0))
    return r2x0, r2y0, r2z0, r2x1, r2y1, r2z1


@triton.jit
def _noise3(x, y, z, p_perm, p_grad, p_vectors):
    """Legacy OpenSimplex noise3 (opensimplex's branch tree with tl.where)."""
    stretch = (x + y + z) * _STRETCH_3D
    xsf = tl.floor(x + stretch)
    ysf = tl.floor(y + stretch)
    zsf = tl.floor(z + stretch)
    squish = (xsf + ysf + zsf) * _SQUISH_3D
    dx0 = x - (xsf + squish)
    dy0 = y - (ysf + squish)
    dz0 = z - (zsf + squish)
    xins = x + stretch - xsf
    yins = y + stretch - ysf
    zins = z + stretch - zsf
    xsb = xsf.to(tl.int32)
    ysb = ysf.to(tl.int32)
    zsb = zsf.to(tl.int32)
    in_sum = xins + yins + zins
    zero = tl.zeros(x.shape, dtype=tl.int32)

    r0x0, r0y0, r0z0, r0x1, r0y1, r0z1 = _tetrahedron_0_extras(xins, yins, zins, in_sum, zero)
    r1x0, r1y0, r1z0, r1x1, r1y1, r1z1 = _tetrahedron_1_extras(xins, yins, zins, in_sum, zero)
    r2x0, r2y0, r2z0, r2x1, r2y1, r2z1 = _octahedron_extras(xins, yins, zins)

    region0 = in_sum <= 1
    region1 = in_sum >= 2
    e0x = tl.where(region0, r0x0, tl.where(region1, r1x0, r2x0))
    e0y = tl.where(region0, r0y0, tl.where(region1, r1y0, r2y0))
    e0z = tl.where(region0, r0z0, tl.where(region1, r1z0, r2z0))
    e1x = tl.where(region0, r0x1, tl.where(region1, r1x1, r2x1))
    e1y = tl.where(region0, r0y1, tl.where(region1, r1y1, r2y1))
    e1z = tl.where(region0, r0z1, tl.where(region1, r1z1, r2z1))

    one = zero + 1
    value = _contribution(dx0, dy0, dz0, xsb, ysb, zsb, e0x, e0y, e0z, p_perm, p_grad, p_vectors)
    value += _contribution(dx0, dy0, dz0, xsb, ysb, zsb, e1x, e1y, e1z, p_perm, p_grad, p_vectors)
    # Cube corners: region 0 uses sums 0 and 1, region 1 sums 2 and 3, region 2 sums 1 and 2.
    value += tl.where(region0, _contribution(dx0, dy0, dz0, xsb, ysb, zsb, zero, zero, zero,
                                             p_perm, p_grad, p_vectors), 0.0)
    value += tl.where(region1, _contribution(dx0, dy0, dz0, xsb, ysb, zsb, one, one, one,
                                             p_perm, p_grad, p_vectors), 0.0)
    low = ~region1
    value += tl.where(low, _contribution(dx0, dy0, dz0, xsb, ysb, zsb, one, zero, zero, p_perm, p_grad, p_vectors), 0.0)
    value += tl.where(low, _contribution(dx0, dy0, dz0, xsb, ysb, zsb, zero, one, zero, p_perm, p_grad, p_vectors), 0.0)
    value += tl.where(low, _contribution(dx0, dy0, dz0, xsb, ysb, zsb, zero, zero, one, p_perm, p_grad, p_vectors), 0.0)
    high = ~region0
    value += tl.where(high, _contribution(dx0, dy0, dz0, xsb, ysb, zsb, one, one, zero, p_perm, p_grad, p_vectors), 0.0)
    value += tl.where(high, _contribution(dx0, dy0, dz0, xsb, ysb, zsb, one, zero, one, p_perm, p_grad, p_vectors), 0.0)
    value += tl.where(high, _contribution(dx0, dy0, dz0, xsb, ysb, zsb, zero, one, one, p_perm, p_grad, p_vectors), 0.0)
    return value / _NORM_3D


@triton.jit
def _fractal(x, y, z, p_perm, p_grad, p_vectors, persistence, inv_frequency, OCTAVES: tl.constexpr):
    total = tl.zeros(x.shape, dtype=tl.float64)
    amplitude = 1.0
    scale = inv_frequency
    for _ in tl.static_range(OCTAVES):
        total += amplitude * _noise3(x * scale, y * scale, z * scale, p_perm, p_grad, p_vectors)
        amplitude *= persistence
        scale *= 2.0
    return total


@triton.jit
def _noise_field_kernel(perm_ptr, grad_index_ptr, vectors_ptr, params_ptr, out_ptr, C, H, W,
                        OCTAVES: tl.constexpr, BLOCK: tl.constexpr):
    i_o, i_b = tl.program_id(0), tl.program_id(1).to(tl.int64)
    o = i_o * BLOCK + tl.arange(0, BLOCK)
    m = o < C * H * W
    z = (o // (H * W)).to(tl.float64)
    y = ((o // W) % H).to(tl.float64)
    x = (o % W).to(tl.float64)
    noise = _fractal(x, y, z, perm_ptr + i_b * 256, grad_index_ptr + i_b * 256, vectors_ptr,
                     tl.load(params_ptr), tl.load(params_ptr + 1), OCTAVES)
    tl.store(out_ptr + i_b * C * H * W + o, noise.to(tl.float32), mask=m)


@triton.jit
def _draw(state):
    state = _lcg(state)
    return state, (state >> _DRAW_SHIFT) & _DRAW_MASK


@triton.jit
def _patch_geometry(seed, H, W, lo_h, hi_h, lo_w, hi_w):
    """(top, left, height, width) as :func:`sacd_fast.kernels.simplex.reference.patch_geometry`."""
    state = seed ^ _GEOMETRY_SALT
    state, d_h = _draw(state)
    state, d_w = _draw(state)
    state, d_top = _draw(state)
    state, d_left = _draw(state)
    height = lo_h + d_h % (hi_h - lo_h)
    width = lo_w + d_w % (hi_w - lo_w)
    top = d_top % (H - height + 1)
    left = d_left % (W - width + 1)
    return top.to(tl.int32), left.to(tl.int32), height.to(tl.int32), width.to(tl.int32)


@triton.jit
def _copy_mask_kernel(x_ptr, out_ptr, mask_ptr, seeds_ptr, C, H, W, lo_h, hi_h, lo_w, hi_w, BLOCK: tl.constexpr):
    """Copies a block of pixels of one image, every channel, and writes its mask
    from the image's patch. No noise here: every block runs at full occupancy."""
    i_o, i_b = tl.program_id(0), tl.program_id(1).to(tl.int64)
    top, left, height, width = _patch_geometry(tl.load(seeds_ptr + i_b), H, W, lo_h, hi_h, lo_w, hi_w)
    o = i_o * BLOCK + tl.arange(0, BLOCK)
    m = o < H * W
    y = o // W
    x = o % W
    inside = (y >= top) & (y < top + height) & (x >= left) & (x < left + width)
    tl.store(mask_ptr + i_b * H * W + o, tl.where(inside, 1.0, 0.0).to(mask_ptr.dtype.element_ty), mask=m)
    for i_c in range(C):
        offsets = (i_b * C + i_c) * H * W + o
        tl.store(out_ptr + offsets, tl.load(x_ptr + offsets, mask=m), mask=m)


@triton.jit
def _patch_noise_kernel(x_ptr, out_ptr, seeds_ptr, perm_ptr, grad_index_ptr, vectors_ptr, params_ptr,
                        C, H, W, lo_h, hi_h, lo_w, hi_w, strength,
                        OCTAVES: tl.constexpr, BLOCK_Y: tl.constexpr, BLOCK_X: tl.constexpr):
    """``out = x + strength * noise`` on one tile of one channel's patch, in
    patch-local coordinates. The grid covers the largest patch the bounds
    allow; a tile beyond its own image's patch does nothing."""
    i_bc, i_y, i_x = tl.program_id(0).to(tl.int64), tl.program_id(1), tl.program_id(2)
    i_b = i_bc // C
    top, left, height, width = _patch_geometry(tl.load(seeds_ptr + i_b), H, W, lo_h, hi_h, lo_w, hi_w)
    if (i_y * BLOCK_Y < height) & (i_x * BLOCK_X < width):
        l_y = i_y * BLOCK_Y + tl.arange(0, BLOCK_Y)
        l_x = i_x * BLOCK_X + tl.arange(0, BLOCK_X)
        m = (l_y < height)[:, None] & (l_x < width)[None, :]
        offsets = i_bc * H * W + (top + l_y)[:, None] * W + (left + l_x)[None, :]
        zeros = tl.zeros([BLOCK_Y, BLOCK_X], dtype=tl.float64)
        noise = _fractal(zeros + l_x[None, :].to(tl.float64), zeros + l_y[:, None].to(tl.float64),
                         zeros + (i_bc % C).to(tl.float64), perm_ptr + i_b * 256, grad_index_ptr + i_b * 256,
                         vectors_ptr, tl.load(params_ptr), tl.load(params_ptr + 1), OCTAVES)
        b_x = tl.load(x_ptr + offsets, mask=m, other=0.0).to(tl.float32) + strength * noise.to(tl.float32)
        tl.store(out_ptr + offsets, b_x.to(out_ptr.dtype.element_ty), mask=m)


@functools.lru_cache(maxsize=16)
def _vectors(device: torch.device) -> torch.Tensor:
    """opensimplex's gradient table on ``device``, made once (no copy per call)."""
    return torch.tensor(GRADIENTS_3D, dtype=torch.float64, device=device).reshape(-1)


@functools.lru_cache(maxsize=16)
def _params(persistence: float, frequency: float, device: torch.device) -> torch.Tensor:
    """float64 [persistence, 1 / frequency], made once per setting: kernel float
    arguments would be rounded to float32."""
    return torch.tensor([persistence, 1.0 / frequency], dtype=torch.float64, device=device)


def simplex_permutations_triton(seeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``perm`` and ``perm_grad_index3`` tables, int32 (B, 256), on ``seeds.device``."""
    seeds = seeds.to(torch.int64).reshape(-1).contiguous()
    perm = torch.empty((seeds.numel(), 256), dtype=torch.int32, device=seeds.device)
    grad_index = torch.empty_like(perm)
    # One warp per seed: 8 indices a lane, 256 short dependent steps.
    _permutation_kernel[check_grid((seeds.numel(),))](seeds, perm, grad_index, num_warps=1)
    return perm, grad_index


def simplex_noise3d_triton(shape, seeds: torch.Tensor, octaves: int = 6, persistence: float = 0.6,
                           frequency: float = 32.0) -> torch.Tensor:
    """Triton implementation of :func:`sacd_fast.kernels.simplex.reference.simplex_noise3d`."""
    b, c, h, w = (int(v) for v in shape)
    perm, grad_index = simplex_permutations_triton(seeds)
    out = torch.empty((b, c, h, w), dtype=torch.float32, device=seeds.device)
    block = block_size(c * h * w, 256)
    _noise_field_kernel[check_grid((cdiv(c * h * w, block), b))](
        perm, grad_index, _vectors(seeds.device), _params(persistence, frequency, seeds.device), out, c, h, w,
        OCTAVES=octaves, BLOCK=block)
    return out


def synthesize_triton(x01: torch.Tensor, seeds: torch.Tensor, strength: float, bounds_h: tuple[int, int],
                      bounds_w: tuple[int, int], octaves: int = 6, persistence: float = 0.6, frequency: float = 32.0
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Corrupt a (B, C, H, W) batch: the permutation tables, a copy of every
    image with its float mask (B, 1, H, W), then the noise added inside each
    patch, each image's patch placed from its seed."""
    b, c, h, w = x01.shape
    x01 = x01.contiguous()
    seeds = seeds.to(torch.int64).reshape(-1).contiguous()
    perm, grad_index = simplex_permutations_triton(seeds)
    out = torch.empty(x01.shape, dtype=x01.dtype, device=x01.device)
    masks = torch.empty((b, 1, h, w), dtype=x01.dtype, device=x01.device)
    block = block_size(h * w)
    _copy_mask_kernel[check_grid((cdiv(h * w, block), b))](
        x01, out, masks, seeds, c, h, w, *bounds_h, *bounds_w, BLOCK=block)
    # 128 points a tile, one per thread: the float64 noise then fits in registers.
    block_y, block_x = 8, 16
    grid = check_grid((b * c, cdiv(bounds_h[1] - 1, block_y), cdiv(bounds_w[1] - 1, block_x)))
    _patch_noise_kernel[grid](x01, out, seeds, perm, grad_index, _vectors(x01.device),
                              _params(persistence, frequency, x01.device), c, h, w, *bounds_h, *bounds_w,
                              float(strength), OCTAVES=octaves, BLOCK_Y=block_y, BLOCK_X=block_x)
    return out, masks
