import warnings

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def random_teacher_model(backbone="resnet18", image_size=64, **kwargs):
    """A SACD model with a random teacher (the warning is expected and silenced)."""
    from sacd_fast import SACD

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SACD(backbone, teacher_weights=None, image_size=image_size, **kwargs)
