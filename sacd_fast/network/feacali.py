"""FeaCali: feature calibration of the student (docs/method.md, Architecture 4).

One module per scale: conv3x3 (with bias) -> InstanceNorm -> LeakyReLU blocks
whose channels halve ``layers`` times and come back, C -> C/2 -> C/4 -> C/2 -> C
for the default ``layers=2`` (RD++'s projection-layer shape). The last block
has no InstanceNorm unless ``norm_last``: normalising it would take away each
channel's level over the image, which the student's features it is compared
with carry (docs/method.md, "FeaCali's last block"). The blocks run through
:func:`sacd_fast.kernels.conv_in_lrelu_stack`: the reference ops, or the fused
Triton chain at inference and the Triton InstanceNorm + LeakyReLU (with cuDNN
convolutions) in training.
"""

from __future__ import annotations

import torch
from torch import nn

from sacd_fast import kernels


class FeaCali(nn.Module):
    """Calibrates one scale's student features, (B, C, H, W) -> (B, C, H, W).

    Args:
        channels: C, divisible by 2**layers.
        layers: L, how many times the channels halve before coming back.
        norm_last: whether the last block has InstanceNorm too.
    """

    def __init__(self, channels: int, layers: int = 2, eps: float = 1e-5, negative_slope: float = 0.01,
                 norm_last: bool = False):
        super().__init__()
        if layers < 1 or channels % 2**layers:
            raise ValueError(f"FeaCali needs layers >= 1 and channels divisible by 2**layers, "
                             f"got channels={channels}, layers={layers}")
        widths = [channels // 2**i for i in range(layers + 1)]
        widths = widths + widths[-2::-1]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1) for a, b in zip(widths, widths[1:]))
        self.eps = eps
        self.negative_slope = negative_slope
        self.norm_last = norm_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.conv_in_lrelu_stack(x, [c.weight for c in self.convs], [c.bias for c in self.convs],
                                           self.eps, self.negative_slope, self.norm_last)
