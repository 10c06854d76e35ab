"""OCBE: the one-class bottleneck embedding (docs/method.md, Architecture 2).

It fuses the teacher's three scales into one compact code at stride 32:

    f1 (c1 x H/4)  -> conv3x3 s2 c1->c2, BN, ReLU -> conv3x3 s2 c2->c3, BN, ReLU
    f2 (c2 x H/8)  -> conv3x3 s2 c2->c3, BN, ReLU
    concat with f3 -> 3*c3 x H/16
    residual stage of ``blocks`` blocks (the first stride 2 with a 1x1 s2 + BN
    shortcut)        -> 2*c3 x H/32

For WideResNet-50-2 (c = 256, 512, 1024; three Bottlenecks of width 1024) this
is 3072 -> 2048 x 8 x 8 at 256², 58.9 M parameters.
"""

from __future__ import annotations

import torch
from torch import nn

from sacd_fast.network.blocks import conv3x3, make_stage


def conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(conv3x3(cin, cout, 2), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class OCBE(nn.Module):
    """Multi-scale fusion + one-class embedding; ``forward([f1, f2, f3]) -> (B, 2*c3, H/32, W/32)``."""

    def __init__(self, channels: tuple[int, int, int], block: type[nn.Module], blocks: int,
                 width_per_group: int = 64):
        super().__init__()
        c1, c2, c3 = channels
        self.down1 = nn.Sequential(conv_bn_relu(c1, c2), conv_bn_relu(c2, c3))
        self.down2 = conv_bn_relu(c2, c3)
        self.embed = make_stage(block, 3 * c3, 2 * c3 // block.expansion, blocks, 2, width_per_group)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        f1, f2, f3 = features
        return self.embed(torch.cat([self.down1(f1), self.down2(f2), f3], dim=1))
