"""FeaCali's blocks in plain PyTorch, conv3x3 -> InstanceNorm -> LeakyReLU and,
for a last block that keeps its level, conv3x3 -> LeakyReLU: the CPU path and
the test oracle of :mod:`.triton`."""

from __future__ import annotations

from typing import Sequence

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


def conv_lrelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
               negative_slope: float = 0.01) -> torch.Tensor:
    """conv3x3 (padding 1) -> LeakyReLU, (B, C_out, H, W): a block without InstanceNorm."""
    return F.leaky_relu(F.conv2d(x, weight, bias, padding=1), negative_slope)


def conv_in_lrelu_stack(x: torch.Tensor, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor | None],
                        eps: float = 1e-5, negative_slope: float = 0.01, norm_last: bool = True,
                        block=conv_in_lrelu) -> torch.Tensor:
    """The blocks one after the other, the last one without InstanceNorm unless
    ``norm_last``; ``block`` runs each normalised block (the Triton training
    block on that path, with the same arguments as :func:`conv_in_lrelu`)."""
    last = len(weights) - 1
    for k, (weight, bias) in enumerate(zip(weights, biases)):
        if k == last and not norm_last:
            x = conv_lrelu(x, weight, bias, negative_slope)
        else:
            x = block(x, weight, bias, eps, negative_slope)
    return x
