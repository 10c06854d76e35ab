"""The student decoder S (docs/method.md, Architecture 3): the teacher mirrored.

Three stages, each opened by a block that doubles the resolution with a 2x2 s2
transposed convolution (also on its shortcut). From the OCBE code
(2*c3 x H/32) they produce, in teacher order, c1 x H/4, c2 x H/8, c3 x H/16.
WideResNet-50-2: Bottlenecks of width 2x, stages of 3, 4 and 6 blocks with
planes 256, 128, 64 (24.9 M parameters); ResNet-18 and Lite0: BasicBlocks,
2 per stage (RD4AD's de_resnet18 shape).
"""

from __future__ import annotations

import torch
from torch import nn

from sacd_fast.network.blocks import make_stage


class Decoder(nn.Module):
    """``forward(code) -> [s1, s2, s3]`` with the teacher's channels and strides."""

    def __init__(self, channels: tuple[int, int, int], block: type[nn.Module],
                 layers: tuple[int, int, int], width_per_group: int = 64):
        super().__init__()
        c1, c2, c3 = channels
        e = block.expansion
        self.layer1 = make_stage(block, 2 * c3, c3 // e, layers[0], width_per_group=width_per_group, upsample=True)
        self.layer2 = make_stage(block, c3, c2 // e, layers[1], width_per_group=width_per_group, upsample=True)
        self.layer3 = make_stage(block, c2, c1 // e, layers[2], width_per_group=width_per_group, upsample=True)

    def forward(self, code: torch.Tensor) -> list[torch.Tensor]:
        s3 = self.layer1(code)
        s2 = self.layer2(s3)
        return [self.layer3(s2), s2, s3]
