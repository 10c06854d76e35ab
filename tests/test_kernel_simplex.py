"""Parity of the Triton simplex-noise and synthesis kernels (KERNEL_DEVICE:
the interpreter on a CPU, small shapes; real sizes on CUDA)."""

import numpy as np
import pytest
import torch
from conftest import KERNEL_DEVICE, SEEDS, assert_close, kernel_path, opensimplex_field, requires_cuda

from sacd_fast import synthesize
from sacd_fast.kernels.simplex import reference

simplex = pytest.importorskip("sacd_fast.kernels.simplex.triton")


def test_permutation_tables_match_opensimplex():
    from opensimplex import OpenSimplex

    perm, grad_index = simplex.simplex_permutations_triton(torch.tensor(SEEDS, device=KERNEL_DEVICE))
    for b, seed in enumerate(SEEDS):
        package = OpenSimplex(seed)
        assert np.array_equal(perm[b].cpu().numpy(), package._perm)
        assert np.array_equal(grad_index[b].cpu().numpy(), package._perm_grad_index3)


def test_noise_matches_opensimplex(poison_outputs):
    field = simplex.simplex_noise3d_triton((len(SEEDS), 2, 5, 7), torch.tensor(SEEDS, device=KERNEL_DEVICE))
    for b, seed in enumerate(SEEDS):
        assert_close(field[b], torch.from_numpy(opensimplex_field(seed, 2, 5, 7)), "noise")


def test_noise_other_settings_match_the_reference(poison_outputs):
    seeds = torch.tensor([3, -4], device=KERNEL_DEVICE)
    field = simplex.simplex_noise3d_triton((2, 3, 6, 5), seeds, octaves=2, persistence=0.5, frequency=3.0)
    expected = reference.simplex_noise3d((2, 3, 6, 5), seeds.cpu(), octaves=2, persistence=0.5,
                                         frequency=3.0)
    assert_close(field, expected, "noise")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_synthesis_kernel_matches_the_reference(dtype, poison_outputs):
    seeds = torch.tensor([11, -(2**40), 2**50 + 3], device=KERNEL_DEVICE)
    x = torch.rand(3, 3, 40, 44, device=KERNEL_DEVICE).to(dtype)
    out, masks = simplex.synthesize_triton(x, seeds, 0.2, (5, 12), (7, 13))
    expected, expected_masks = reference.synthesize_patches(x.cpu().double(), seeds.cpu(), 0.2, (5, 12), (7, 13))
    assert out.dtype == dtype and masks.shape == (3, 1, 40, 44)
    assert torch.equal(masks.cpu().double(), expected_masks)
    assert_close(out, expected, "synthesis", dtype)
    outside = masks.expand_as(x) == 0
    assert torch.equal(out[outside], x[outside])


def test_synthesis_kernel_places_patches_from_the_seeds(poison_outputs):
    """The kernel derives each patch from its seed in int64, as reference.patch_geometry does."""
    seeds = torch.cat([torch.tensor([0, -1, 2**63 - 1, -(2**63), 2**32 + 17]), torch.randint(-(2**62), 2**62, (3,))])
    x = torch.rand(len(seeds), 1, 20, 24, device=KERNEL_DEVICE)
    _, masks = simplex.synthesize_triton(x, seeds.to(KERNEL_DEVICE), 0.2, (3, 9), (2, 11))
    for b, (top, left, h, w) in enumerate(reference.patch_geometry(seeds, 20, 24, (3, 9), (2, 11)).tolist()):
        expected = torch.zeros(20, 24)
        expected[top:top + h, left:left + w] = 1
        assert torch.equal(masks[b, 0].cpu(), expected), (b, seeds[b].item())


def test_synthesize_dispatches_to_the_kernel(monkeypatch):
    x = torch.rand(2, 3, 32, 32, device=KERNEL_DEVICE)
    seeds = torch.tensor([1, 2])
    with kernel_path(triton=False):
        expected = synthesize(x.cpu(), seeds)
    calls = []
    real = simplex.synthesize_triton
    monkeypatch.setattr(simplex, "synthesize_triton", lambda *a: calls.append(1) or real(*a))
    with kernel_path(triton=True):
        out = synthesize(x, seeds)
    assert calls == [1]
    for a, b in zip(out, expected):
        assert_close(a, b, "synthesis")


@requires_cuda
def test_synthesis_cuda_matches_cpu_reference():
    seeds = torch.randint(-(2**62), 2**62, (16,))
    x = torch.rand(16, 3, 256, 256)
    cpu_out, cpu_masks = synthesize(x, seeds)
    gpu_out, gpu_masks = synthesize(x.cuda(), seeds.cuda())
    assert torch.equal(gpu_masks.cpu(), cpu_masks)
    assert_close(gpu_out, cpu_out, "synthesis")
    field = simplex.simplex_noise3d_triton((16, 3, 31, 31), seeds.cuda())
    assert_close(field, reference.simplex_noise3d((16, 3, 31, 31), seeds), "noise")
