"""OpenSimplex parity and anomaly synthesis."""

import pytest
import torch
from conftest import SEEDS, assert_close, opensimplex_field

from sacd_fast import synthesize
from sacd_fast.data.synthesis import patch_bounds
from sacd_fast.kernels.simplex import reference
from sacd_fast.kernels.simplex.reference import patch_geometry, simplex_noise3d


def test_simplex_noise_matches_opensimplex():
    field = simplex_noise3d((len(SEEDS), 3, 13, 17), torch.tensor(SEEDS))
    assert field.dtype == torch.float32 and tuple(field.shape) == (len(SEEDS), 3, 13, 17)
    for b, seed in enumerate(SEEDS):
        assert_close(field[b], torch.from_numpy(opensimplex_field(seed, 3, 13, 17)), "noise")


def test_simplex_noise_other_settings():
    field = simplex_noise3d((1, 2, 9, 11), torch.tensor([7]), octaves=3, persistence=0.5, frequency=4.0)
    assert_close(field[0], torch.from_numpy(opensimplex_field(7, 2, 9, 11, 3, 0.5, 4.0)), "noise")


def test_simplex_noise_in_chunks_matches_opensimplex(monkeypatch):
    """Grids larger than one evaluation's chunk of points give the same values."""
    whole = simplex_noise3d((2, 3, 13, 17), torch.tensor(SEEDS[:2]))
    monkeypatch.setattr(reference, "NOISE_CHUNK", 100)  # 1326 points: 14 chunks, the last one partial
    field = simplex_noise3d((2, 3, 13, 17), torch.tensor(SEEDS[:2]))
    assert torch.equal(field, whole)
    assert_close(field[1], torch.from_numpy(opensimplex_field(SEEDS[1], 3, 13, 17)), "noise")


def test_patch_geometry_follows_rd_plus_plus():
    assert patch_bounds(256) == (10, 32)
    geometry = patch_geometry(torch.randint(-(2**62), 2**62, (4000,)), 256, 192, patch_bounds(256), patch_bounds(192))
    top, left, h, w = geometry.unbind(1)
    assert int(h.min()) == 10 and int(h.max()) == 31
    assert int(w.min()) == 10 and int(w.max()) == 23
    assert bool((top >= 0).all() and (top + h <= 256).all() and (left + w <= 192).all())
    assert int(top.min()) == 0 and int((top + h).max()) == 256  # the whole image is reachable


def test_synthesize_corrupts_one_patch_with_scaled_noise():
    x = torch.rand(3, 3, 128, 128)
    seeds = torch.tensor([5, -9, 2**40])
    x_synth, masks = synthesize(x, seeds)
    again, _ = synthesize(x, seeds)
    assert torch.equal(x_synth, again)
    assert tuple(masks.shape) == (3, 1, 128, 128)
    noise = simplex_noise3d((3, 3, 16, 16), seeds)
    geometry = patch_geometry(seeds, 128, 128, patch_bounds(128), patch_bounds(128))
    for b, (top, left, h, w) in enumerate(geometry.tolist()):
        inside = torch.zeros(128, 128, dtype=torch.bool)
        inside[top:top + h, left:left + w] = True
        assert torch.equal(masks[b, 0].bool(), inside)
        assert torch.equal(x_synth[b][:, ~inside], x[b][:, ~inside])
        delta = x_synth[b, :, top:top + h, left:left + w] - x[b, :, top:top + h, left:left + w]
        assert_close(delta, 0.2 * noise[b, :, :h, :w], "synthesis")
        assert delta.abs().max() > 0.01


def test_synthesize_draws_seeds_from_a_generator():
    x = torch.rand(2, 3, 64, 64)
    a, _ = synthesize(x, generator=torch.Generator().manual_seed(1))
    b, _ = synthesize(x, generator=torch.Generator().manual_seed(1))
    c, _ = synthesize(x, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="too small"):
        synthesize(torch.rand(1, 3, 8, 8))
