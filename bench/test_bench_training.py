"""Training throughput, images/s, one epoch at a time, data and synthesis included.

``reference`` is the training epoch as it was before these changes: every
image decoded from disk each epoch, the model in NCHW, every 'same'
convolution of Lite0 padding a copy of its input, the teacher run on the
normal and the synthetic batch, and the CPU synthesis evaluating the noise
on every patch's whole bounding grid with permutation tables built in 256
rounds of tensor ops. ``fast`` is what ``fit`` does now: decoded
images kept in memory, channels_last, and the normal images' teacher features
computed once and reused (one teacher pass per step). ``fast_bf16`` adds
bf16 autocast (``TrainSettings(precision="bf16")``: on CUDA, or on a CPU with native bf16).
All run on the same
images, warmed up by an epoch, side by side in one run. CPU: Lite0 and
ResNet-18 at 256², batch 8; GPU: WideResNet-50-2 at 256², batch 16."""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from table import DEVICE, ON_GPU
from torch.utils.data import DataLoader

from sacd_fast import SACD
from sacd_fast.cpu import native_bf16
from sacd_fast.data.datasets import AnomalyDataset
from sacd_fast.data.synthdata import write_dataset
from sacd_fast.kernels.simplex import reference
from sacd_fast.network.teacher import Conv2dSame
from sacd_fast.settings import TrainSettings
from sacd_fast.training.train import TeacherCache, build_optimizer, epoch_batches, train_step

CASES = ["wide_resnet50_2"] if ON_GPU else ["efficientnet_lite0", "efficientnet_lite2", "resnet18"]
BATCH = 16 if ON_GPU else 8
IMAGES = 2 * BATCH


@pytest.fixture(scope="module")
def product(tmp_path_factory):
    root = tmp_path_factory.mktemp("product")
    write_dataset(root, "disc", seed=0, n_train=IMAGES, n_test_good=0, n_per_defect=0, progress=False)
    return root


def padded_forward(self, x):
    """Conv2dSame as it was: an explicitly padded copy of the input for every convolution."""
    pads = []
    for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
        total = max((math.ceil(size / s) - 1) * s + k - size, 0)
        pads += [total // 2, total - total // 2]
    return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def permutations_as_they_were(seeds):
    """opensimplex's tables built as they were: 256 rounds of batched tensor ops."""
    state = seeds.to(torch.int64).reshape(-1).clone()
    rows = torch.arange(state.numel())
    source = torch.arange(256).repeat(state.numel(), 1)
    perm = torch.empty_like(source)
    for _ in range(3):
        state = reference.lcg_step(state)
    for i in range(255, -1, -1):
        state = reference.lcg_step(state)
        r = (torch.remainder(state, i + 1) + 31) % (i + 1)
        perm[:, i] = source[rows, r]
        source[rows, r] = source[:, i].clone()
    return perm, (perm % len(reference.GRADIENTS_3D)) * 3


def synthesis_as_it_was(x01, seeds, strength, bounds_h, bounds_w):
    """The CPU synthesis as it was: the noise on the (B, C, high_h, high_w) grid, then gathered into place."""
    b, c, height, width = x01.shape
    top, left, h, w = reference.patch_geometry(seeds, height, width, bounds_h, bounds_w).unbind(1)
    noise = reference.simplex_noise3d((b, c, bounds_h[1], bounds_w[1]), seeds)
    rows = torch.arange(height).view(1, height) - top.view(b, 1)
    cols = torch.arange(width).view(1, width) - left.view(b, 1)
    masks = (((rows >= 0) & (rows < h.view(b, 1)))[:, :, None] & ((cols >= 0) & (cols < w.view(b, 1)))[:, None, :])
    masks = masks.unsqueeze(1)
    placed = noise[torch.arange(b).view(b, 1, 1, 1), torch.arange(c).view(1, c, 1, 1),
                   rows.clamp(0, noise.shape[2] - 1).view(b, 1, height, 1),
                   cols.clamp(0, noise.shape[3] - 1).view(b, 1, 1, width)]
    return x01 + strength * placed.to(x01.dtype) * masks, masks.to(x01.dtype)


@pytest.mark.parametrize("provider", ["reference", "fast", "fast_bf16"])
@pytest.mark.parametrize("backbone", CASES)
def test_training_epoch(timed, product, provider, backbone, monkeypatch):
    if provider == "fast_bf16" and not (ON_GPU or native_bf16()):
        pytest.skip("this CPU has no native bf16")
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = SACD(backbone, teacher_weights=None, image_size=256).to(DEVICE).train()
    optimizer = build_optimizer(model, TrainSettings())
    fast = provider != "reference"
    autocast_dtype = torch.bfloat16 if provider == "fast_bf16" else None
    if not fast:
        monkeypatch.setattr(Conv2dSame, "forward", padded_forward)
        if not ON_GPU:
            monkeypatch.setattr(reference, "simplex_permutations", permutations_as_they_were)
            monkeypatch.setattr(reference, "synthesize_patches", synthesis_as_it_was)
        for module in model.teacher.modules():
            if isinstance(module, Conv2dSame):
                module.padding = (0, 0)
    dataset = AnomalyDataset(product, "disc", "train", 256, cache_mb=1024 if fast else 0)
    cache = TeacherCache(model.teacher, 4096 if fast else 0)
    if fast:
        model.to(memory_format=torch.channels_last)
    batches = epoch_batches(list(range(len(dataset))), BATCH, None)
    seeds = torch.arange(BATCH)

    def epoch():
        for indices, batch in zip(batches, DataLoader(dataset, batch_sampler=batches)):
            x01 = batch["image"].to(DEVICE)
            if fast:
                x01 = x01.contiguous(memory_format=torch.channels_last)
                train_step(model, optimizer, x01, seeds, autocast_dtype,
                           teacher=lambda x, indices=indices: cache(x, indices))
            else:
                train_step(model, optimizer, x01, seeds)

    timed(epoch, items=IMAGES, rounds=3)
