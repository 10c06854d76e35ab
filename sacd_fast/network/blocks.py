"""ResNet building blocks shared by the teacher, the OCBE bottleneck and the decoder.

Attribute names follow torchvision (conv1, bn1, ..., downsample.0/1) so that
ImageNet state dicts load with ``strict=True``. The decoder variants replace
the strided 3x3 convolution by a 2x2 transposed convolution (RD4AD's de_resnet).
"""

from __future__ import annotations

import torch
from torch import nn


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride, bias=False)


def deconv2x2(cin: int, cout: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(cin, cout, 2, 2, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions; ``upsample=True`` makes the first a 2x2 s2 transposed conv."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, shortcut: nn.Module | None = None,
                 width_per_group: int = 64, upsample: bool = False):
        super().__init__()
        if width_per_group != 64:
            raise ValueError("BasicBlock only supports width_per_group=64")
        self.conv1 = deconv2x2(cin, planes) if upsample else conv3x3(cin, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 bottleneck (torchvision v1.5: stride on the 3x3);
    ``upsample=True`` makes the 3x3 a 2x2 s2 transposed conv."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, shortcut: nn.Module | None = None,
                 width_per_group: int = 64, upsample: bool = False):
        super().__init__()
        width = planes * width_per_group // 64
        self.conv1 = conv1x1(cin, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = deconv2x2(width, width) if upsample else conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def make_stage(block: type[nn.Module], cin: int, planes: int, blocks: int, stride: int = 1,
               width_per_group: int = 64, upsample: bool = False) -> nn.Sequential:
    """A torchvision-style stage. With ``upsample`` the first block doubles the
    resolution and its shortcut is a 2x2 s2 transposed conv + BN."""
    cout = planes * block.expansion
    shortcut = None
    if upsample:
        shortcut = nn.Sequential(deconv2x2(cin, cout), nn.BatchNorm2d(cout))
    elif stride != 1 or cin != cout:
        shortcut = nn.Sequential(conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))
    layers = [block(cin, planes, stride, shortcut, width_per_group, upsample)]
    layers += [block(cout, planes, 1, None, width_per_group) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}  # the block names backbone records use
