"""One FeaCali block in plain PyTorch, conv3x3 -> InstanceNorm -> LeakyReLU:
the CPU path and the test oracle of :mod:`.triton`."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def conv_in_lrelu(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
    negative_slope: float = 0.01,
) -> torch.Tensor:
    """conv3x3 (padding 1) -> InstanceNorm (no affine) -> LeakyReLU, (B, C_out, H, W)."""
    y = F.conv2d(x, weight, bias, padding=1)
    return F.leaky_relu(F.instance_norm(y, eps=eps), negative_slope)
