"""Simplex noise and anomaly synthesis: the opensimplex package on one CPU
core vs the PyTorch reference vs the Triton kernel (noise values per second),
a whole batch synthesised (images/s), and a training step with and without
synthesis in the loop."""

import warnings

import numpy as np
import pytest
import torch
from table import DEVICE, ON_GPU

from sacd_fast import SACD
from sacd_fast.data.synthesis import patch_bounds
from sacd_fast.kernels.simplex import reference
from sacd_fast.training import train
from sacd_fast.settings import TrainSettings
from sacd_fast.training.train import build_optimizer

PATCH = (3, 31, 31)  # one training image's noise patch at 256²
BATCH = 16


@pytest.mark.parametrize("provider", ["opensimplex", "reference", "fast"])
def test_noise(timed, provider):
    seeds = torch.arange(BATCH, device=DEVICE)
    if provider == "opensimplex":
        from opensimplex import OpenSimplex

        noise = OpenSimplex(0)
        grid = np.arange(31, dtype=np.float64)

        def fn():  # one patch, 6 octaves, with the package's own array API
            for o in range(6):
                s = 2.0**o / 32
                noise.noise3array(grid * s, grid * s, np.arange(3, dtype=np.float64) * s)

        timed(fn, items=int(np.prod(PATCH)), rounds=3)
        return
    if provider == "fast":
        if not ON_GPU:
            pytest.skip("the Triton kernels need a GPU")
        from sacd_fast.kernels.simplex.triton import simplex_noise3d_triton as noise_fn
    else:
        noise_fn = reference.simplex_noise3d
    timed(lambda: noise_fn((BATCH, *PATCH), seeds), items=BATCH * int(np.prod(PATCH)))


@pytest.mark.parametrize("provider", ["reference", "fast"])
def test_synthesize(timed, provider):
    """A whole batch corrupted, masks included: the target is under
    0.1 ms for 16 images at 256² on an H200. reference: the PyTorch ops."""
    size = 256 if ON_GPU else 128
    x01 = torch.rand(BATCH, 3, size, size, device=DEVICE)
    seeds = torch.arange(BATCH, device=DEVICE)
    if provider == "fast":
        if not ON_GPU:
            pytest.skip("the Triton kernels need a GPU")
        from sacd_fast.kernels.simplex.triton import synthesize_triton as fn
    else:
        fn = reference.synthesize_patches
    bounds = patch_bounds(size)
    timed(lambda: fn(x01, seeds, 0.2, bounds, bounds), items=BATCH, bytes=2 * x01.numel() * 4 + x01[:, :1].numel() * 4)


@pytest.mark.parametrize("provider", ["reference", "compiled", "fast"])
@pytest.mark.parametrize("synthesis", [False, True])
def test_training_step(timed, provider, synthesis, monkeypatch):
    """One optimiser step of both branches (``train_step``). reference: eager
    fp32; compiled: torch.compile of the training forward; fast: bf16 autocast +
    channels_last + the Triton kernels (GPU only). Without synthesis the
    abnormal branch sees the normal batch itself."""
    if provider == "fast" and not ON_GPU:
        pytest.skip("the fast training path needs a GPU")
    if not synthesis:
        monkeypatch.setattr(train, "synthesize", lambda x01, seeds: (x01, None))
    size, batch, backbone = (256, 16, "wide_resnet50_2") if ON_GPU else (128, 4, "efficientnet_lite0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = SACD(backbone, teacher_weights=None, image_size=size).to(DEVICE).train()
    optimizer = build_optimizer(model, TrainSettings())
    x01 = torch.rand(batch, 3, size, size, device=DEVICE)
    seeds = torch.arange(batch, device=DEVICE)
    autocast_dtype = None
    if provider == "fast":
        model.to(memory_format=torch.channels_last)
        x01 = x01.contiguous(memory_format=torch.channels_last)
        autocast_dtype = torch.bfloat16
    step_model = torch.compile(model) if provider == "compiled" else model
    timed(lambda: train.train_step(step_model, optimizer, x01, seeds, autocast_dtype), items=batch, rounds=5)
