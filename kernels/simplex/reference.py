"""Fractal 3-D OpenSimplex noise and the anomaly synthesis in plain PyTorch:
the CPU path and the test oracle of :mod:`.triton`. The noise is value for
value the ``opensimplex`` package's ``OpenSimplex(seed).noise3`` (its legacy
3-D algorithm), evaluated in float64.
"""

from __future__ import annotations

from typing import Sequence

import torch

LCG_MULTIPLIER = 6364136223846793005
LCG_INCREMENT = 1442695040888963407
STRETCH_3D = -1.0 / 6.0
SQUISH_3D = 1.0 / 3.0
NORM_3D = 103.0
GRADIENTS_3D = (
    (-11, 4, 4), (-4, 11, 4), (-4, 4, 11), (11, 4, 4), (4, 11, 4), (4, 4, 11),
    (-11, -4, 4), (-4, -11, 4), (-4, -4, 11), (11, -4, 4), (4, -11, 4), (4, -4, 11),
    (-11, 4, -4), (-4, 11, -4), (-4, 4, -11), (11, 4, -4), (4, 11, -4), (4, 4, -11),
    (-11, -4, -4), (-4, -11, -4), (-4, -4, -11), (11, -4, -4), (4, -11, -4), (4, -4, -11),
)  # fmt: skip


def lcg_step(state):
    """One step of the 64-bit LCG opensimplex seeds with (int64, wrapping), on
    an int64 tensor or a Python integer."""
    if isinstance(state, torch.Tensor):
        return state * LCG_MULTIPLIER + LCG_INCREMENT
    return (state * LCG_MULTIPLIER + LCG_INCREMENT + 2**63) % 2**64 - 2**63


def simplex_permutations(seeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """opensimplex's seeded tables, batched: ``perm`` and ``perm_grad_index3``,
    both int64 (B, 256) on ``seeds.device``. Built in Python integers (256
    dependent steps per seed: cheaper than 256 rounds of tiny tensor ops)."""
    rows = []
    for state in seeds.reshape(-1).tolist():
        for _ in range(3):
            state = lcg_step(state)
        source, perm = list(range(256)), [0] * 256
        for i in range(255, -1, -1):
            state = lcg_step(state)
            r = (state % (i + 1) + 31) % (i + 1)  # Python's % is torch.remainder's floor modulo
            perm[i] = source[r]
            source[r] = source[i]
        rows.append(perm)
    perm = torch.tensor(rows, dtype=torch.int64, device=seeds.device).view(-1, 256)
    return perm, (perm % len(GRADIENTS_3D)) * 3


def _bits(c):
    """The x, y and z flags of a vertex code (bit 0: x, bit 1: y, bit 2: z)."""
    return (c & 1) != 0, (c & 2) != 0, (c & 4) != 0


def _tetrahedron_0_extras(xins, yins, zins, in_sum, one):
    """Region 0 (the tetrahedron at the origin): the two extra vertices that the
    closest two of (1,0,0), (0,1,0), (0,0,1) decide."""
    w = torch.where
    a_s, b_s = xins, yins
    a_p, b_p = one * 1, one * 2
    up_b = (a_s >= b_s) & (zins > b_s)
    up_a = (a_s < b_s) & (zins > a_s)
    b_s, b_p = w(up_b, zins, b_s), w(up_b, 4, b_p)
    a_s, a_p = w(up_a, zins, a_s), w(up_a, 4, a_p)
    wins = 1 - in_sum
    near_origin = (wins > a_s) | (wins > b_s)
    cx, cy, cz = _bits(w(b_s > a_s, b_p, a_p))
    near = ((w(cx, 1, -1), w(cy, 1, w(cx, -1, 0)), w(cz, 1, 0)),
            (w(cx, 1, 0), w(cy, 1, w(cx, 0, -1)), w(cz, 1, -1)))
    cx, cy, cz = _bits(a_p | b_p)
    far = ((w(cx, 1, 0), w(cy, 1, 0), w(cz, 1, 0)), (w(cx, 1, -1), w(cy, 1, -1), w(cz, 1, -1)))
    return tuple(tuple(w(near_origin, n, f) for n, f in zip(vn, vf)) for vn, vf in zip(near, far))


def _tetrahedron_1_extras(xins, yins, zins, in_sum, one):
    """Region 1 (the tetrahedron at (1,1,1)): the two extra vertices that the
    closest two of (1,1,0), (1,0,1), (0,1,1) decide."""
    w = torch.where
    a_s, b_s = xins, yins
    a_p, b_p = one * 6, one * 5
    up_b = (a_s <= b_s) & (zins < b_s)
    up_a = (a_s > b_s) & (zins < a_s)
    b_s, b_p = w(up_b, zins, b_s), w(up_b, 3, b_p)
    a_s, a_p = w(up_a, zins, a_s), w(up_a, 3, a_p)
    wins = 3 - in_sum
    near_corner = (wins < a_s) | (wins < b_s)
    cx, cy, cz = _bits(w(b_s < a_s, b_p, a_p))
    near = ((w(cx, 2, 0), w(cy, w(cx, 1, 2), 0), w(cz, 1, 0)),
            (w(cx, 1, 0), w(cy, w(cx, 2, 1), 0), w(cz, 2, 0)))
    cx, cy, cz = _bits(a_p & b_p)
    far = ((w(cx, 1, 0), w(cy, 1, 0), w(cz, 1, 0)), (w(cx, 2, 0), w(cy, 2, 0), w(cz, 2, 0)))
    return tuple(tuple(w(near_corner, n, f) for n, f in zip(vn, vf)) for vn, vf in zip(near, far))


def _octahedron_extras(xins, yins, zins, one):
    """Region 2 (the octahedron between): the two extra vertices that the closest
    of the pairs (0,0,1)/(1,1,0), (0,1,0)/(1,0,1), (1,0,0)/(0,1,1) decides."""
    w = torch.where
    zero = one * 0
    p1, p2, p3 = xins + yins, xins + zins, yins + zins
    a_far, b_far = p1 > 1, p2 > 1
    a_s, a_p = w(a_far, p1 - 1, 1 - p1), w(a_far, 3, 4)
    b_s, b_p = w(b_far, p2 - 1, 1 - p2), w(b_far, 5, 2)
    p3_far = p3 > 1
    score = w(p3_far, p3 - 1, 1 - p3)
    p3_point = w(p3_far, 6, 1)
    swap_a = (a_s <= b_s) & (a_s < score)
    swap_b = (a_s > b_s) & (b_s < score)
    a_p, a_far = w(swap_a, p3_point, a_p), w(swap_a, p3_far, a_far)
    b_p, b_far = w(swap_b, p3_point, b_p), w(swap_b, p3_far, b_far)

    def minus_one_vertex(c):  # the permutation of (1,1,-1) with -1 on the first axis c lacks
        cx, cy, _ = _bits(c)
        return (w(~cx, -1, 1), w(cx & ~cy, -1, 1), w(cx & cy, -1, 1))

    def two_vertex(c):  # the permutation of (0,0,2) on the first axis c has
        cx, cy, _ = _bits(c)
        return (w(cx, 2, 0), w(~cx & cy, 2, 0), w(~cx & ~cy, 2, 0))

    same = a_far == b_far
    both_far = same & a_far
    both_near = same & ~a_far
    c1, c2 = w(a_far, a_p, b_p), w(a_far, b_p, a_p)
    ext0_far, ext1_far = (one, one, one), two_vertex(a_p & b_p)
    ext0_near, ext1_near = (zero, zero, zero), minus_one_vertex(a_p | b_p)
    ext0_mixed, ext1_mixed = minus_one_vertex(c1), two_vertex(c2)
    return tuple(
        tuple(w(both_far, f, w(both_near, n, m)) for f, n, m in zip(vf, vn, vm))
        for vf, vn, vm in ((ext0_far, ext0_near, ext0_mixed), (ext1_far, ext1_near, ext1_mixed))
    )


def _corner_offsets(xins, yins, zins):
    """The region test and the two 'extra' lattice vertices of legacy 3-D OpenSimplex.

    Returns ``region`` (0: tetrahedron at (0,0,0), 1: tetrahedron at (1,1,1),
    2: the octahedron between) and the integer offsets (relative to the
    rhombohedron origin) of the two extra vertices, each a tuple of three int64
    tensors. This is opensimplex's branch tree written with ``torch.where``:
    each region's vertices are computed everywhere, then picked by region.
    """
    in_sum = xins + yins + zins
    one = torch.ones_like(xins, dtype=torch.int64)
    r0 = _tetrahedron_0_extras(xins, yins, zins, in_sum, one)
    r1 = _tetrahedron_1_extras(xins, yins, zins, in_sum, one)
    r2 = _octahedron_extras(xins, yins, zins, one)
    region = torch.where(in_sum <= 1, 0 * one, torch.where(in_sum >= 2, one, 2 * one))
    ext = tuple(
        tuple(torch.where(region == 0, a, torch.where(region == 1, b, c)) for a, b, c in zip(v0, v1, v2))
        for v0, v1, v2 in zip(r0, r1, r2)
    )
    return region, ext


def _noise3(x, y, z, batch, perm, grad_index):
    """Legacy OpenSimplex noise3 at float64 points; ``batch`` picks each point's tables."""
    stretch = (x + y + z) * STRETCH_3D
    xsb, ysb, zsb = torch.floor(x + stretch), torch.floor(y + stretch), torch.floor(z + stretch)
    squish = (xsb + ysb + zsb) * SQUISH_3D
    dx0, dy0, dz0 = x - (xsb + squish), y - (ysb + squish), z - (zsb + squish)
    xins, yins, zins = x + stretch - xsb, y + stretch - ysb, z + stretch - zsb
    region, ext = _corner_offsets(xins, yins, zins)
    xsb, ysb, zsb = xsb.long(), ysb.long(), zsb.long()
    gradients = torch.tensor(GRADIENTS_3D, dtype=x.dtype, device=x.device).reshape(-1)
    base = batch * 256

    def contribution(i, j, k):
        s = (i + j + k) * SQUISH_3D
        dx, dy, dz = dx0 - i - s, dy0 - j - s, dz0 - k - s
        attn = (2 - dx * dx - dy * dy - dz * dz).clamp_min(0)
        # index_select, not advanced indexing: the same gather, several times faster on a CPU
        hashed = perm.index_select(0, base + ((xsb + i) & 255))
        hashed = perm.index_select(0, base + ((hashed + ysb + j) & 255))
        g = grad_index.index_select(0, base + ((hashed + zsb + k) & 255))
        gx, gy, gz = (gradients.index_select(0, g + axis) for axis in range(3))
        ramp = gx * dx + gy * dy + gz * dz
        return attn.square().square() * ramp

    value = torch.zeros_like(x)
    for i, j, k in ((0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 0, 1), (0, 1, 1), (1, 1, 1)):
        n = i + j + k
        used = {0: region == 0, 1: region != 1, 2: region != 0, 3: region == 1}[n]
        value = value + torch.where(used, contribution(i, j, k), 0.0)
    for i, j, k in ext:
        value = value + contribution(i, j, k)
    return value / NORM_3D


def simplex_noise3d(
    shape: Sequence[int],
    seeds: torch.Tensor,
    octaves: int = 6,
    persistence: float = 0.6,
    frequency: float = 32.0,
) -> torch.Tensor:
    """Fractal 3-D OpenSimplex noise, float32 (B, C, H, W) on ``seeds.device``.

    ``noise[b, c, y, x] = sum_{o < octaves} persistence**o *
    OpenSimplex(seeds[b]).noise3(x * 2**o / frequency, y * 2**o / frequency,
    c * 2**o / frequency)``, evaluated in float64.

    Args:
        shape: (B, C, H, W).
        seeds: int64 (B,), any int64 value (negative and > 2**32 included).
    """
    b, c, h, w = (int(n) for n in shape)
    batch, zc, yc, xc = (i.reshape(-1) for i in torch.meshgrid(
        *(torch.arange(n, device=seeds.device) for n in (b, c, h, w)), indexing="ij"))
    return _fractal_noise(seeds, batch, zc, yc, xc, octaves, persistence, frequency).view(b, c, h, w)


NOISE_CHUNK = 1 << 16  # points per noise evaluation (times the octaves)


def _fractal_noise(seeds, batch, zc, yc, xc, octaves=6, persistence=0.6, frequency=32.0) -> torch.Tensor:
    """:func:`simplex_noise3d` at the integer points (zc, yc, xc) of the images ``batch``
    (four int64 vectors), float32: only the points needed are evaluated."""
    perm, grad_index = (t.reshape(-1) for t in simplex_permutations(seeds))
    scales = torch.tensor([2.0**o / frequency for o in range(octaves)], dtype=torch.float64,
                          device=xc.device).view(-1, 1)
    totals = []
    # Every octave of a chunk of points in one call: at patch sizes the per-op cost dominates,
    # and the chunks bound the memory of large grids.
    for z, y, x, b in zip(*(v.split(NOISE_CHUNK) for v in (zc, yc, xc, batch))):
        z, y, x = (v.to(torch.float64) * scales for v in (z, y, x))
        noise = _noise3(x.reshape(-1), y.reshape(-1), z.reshape(-1), b.repeat(octaves), perm, grad_index)
        total = torch.zeros(len(b), dtype=torch.float64, device=b.device)
        for o, octave in enumerate(noise.view(octaves, -1)):
            total += persistence**o * octave
        totals.append(total)
    return torch.cat(totals).float()


GEOMETRY_SALT = 0x5DEECE66D  # xor-ed into the seed: the patch draws differ from the noise's own stream
DRAW_SHIFT, DRAW_MASK = 17, 0x3FFFFFFF  # a draw keeps 30 bits of the LCG state, from bit 17


def patch_geometry(seeds: torch.Tensor, height: int, width: int, bounds_h: tuple[int, int],
                   bounds_w: tuple[int, int]) -> torch.Tensor:
    """Per-image patch (top, left, h, w), int64 (B, 4), from four draws of each
    seed's LCG stream: sides uniform in [low, high) of ``bounds_h``/``bounds_w``,
    then a uniform place inside the image."""
    (lo_h, hi_h), (lo_w, hi_w) = bounds_h, bounds_w
    state, draws = seeds ^ GEOMETRY_SALT, []
    for _ in range(4):
        state = lcg_step(state)
        draws.append(state >> DRAW_SHIFT & DRAW_MASK)
    d_h, d_w, d_top, d_left = draws
    h = lo_h + d_h % (hi_h - lo_h)
    w = lo_w + d_w % (hi_w - lo_w)
    return torch.stack([d_top % (height - h + 1), d_left % (width - w + 1), h, w], dim=1)


def synthesize_patches(x01: torch.Tensor, seeds: torch.Tensor, strength: float, bounds_h: tuple[int, int],
                       bounds_w: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Add ``strength * noise`` (6-octave simplex noise in patch-local coordinates)
    inside each image's patch (:func:`patch_geometry`). Returns the batch and
    float masks (B, 1, H, W)."""
    b, c, height, width = x01.shape
    top, left, h, w = patch_geometry(seeds, height, width, bounds_h, bounds_w).unbind(1)
    rows = torch.arange(height, device=x01.device).view(1, height) - top.view(b, 1)  # (B, H)
    cols = torch.arange(width, device=x01.device).view(1, width) - left.view(b, 1)  # (B, W)
    inside_rows = (rows >= 0) & (rows < h.view(b, 1))
    inside_cols = (cols >= 0) & (cols < w.view(b, 1))
    masks = (inside_rows[:, :, None] & inside_cols[:, None, :]).unsqueeze(1)  # (B, 1, H, W)
    # The noise only at the patches' points (patch-local coordinates), then added in place.
    local_y = torch.arange(bounds_h[1] - 1, device=x01.device).view(1, 1, -1, 1)
    local_x = torch.arange(bounds_w[1] - 1, device=x01.device).view(1, 1, 1, -1)
    inside = ((local_y < h.view(b, 1, 1, 1)) & (local_x < w.view(b, 1, 1, 1))).expand(b, c, -1, -1)
    batch, channel, y, x = inside.nonzero().unbind(1)
    noise = _fractal_noise(seeds, batch, channel, y, x)
    index = (batch, channel, top[batch] + y, left[batch] + x)
    x_synth = x01.clone()
    x_synth[index] = x01[index] + strength * noise.to(x01.dtype)
    return x_synth, masks.to(x01.dtype)
