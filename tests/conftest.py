import os
import warnings

import pytest
import torch

if not torch.cuda.is_available():
    # Kernel tests run the Triton kernels in the interpreter (it must be set
    # before Triton is imported); everything else uses the fast references.
    os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ.setdefault("SACD_DISABLE_TRITON", "1")

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def poison_outputs(monkeypatch):
    """Every torch.empty / empty_like made during the test starts as NaN, so an
    element that a kernel forgets to write fails the comparison."""
    empty, empty_like = torch.empty, torch.empty_like

    def nan_empty(*args, **kwargs):
        out = empty(*args, **kwargs)
        return out.fill_(float("nan")) if out.is_floating_point() else out

    def nan_empty_like(*args, **kwargs):
        out = empty_like(*args, **kwargs)
        return out.fill_(float("nan")) if out.is_floating_point() else out

    monkeypatch.setattr(torch, "empty", nan_empty)
    monkeypatch.setattr(torch, "empty_like", nan_empty_like)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def random_teacher_model(backbone="resnet18", image_size=64, **kwargs):
    """A SACD model with a random teacher (the warning is expected and silenced)."""
    from sacd_fast import SACD

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SACD(backbone, teacher_weights=None, image_size=image_size, **kwargs)
