"""Residual networks for 32×32 inputs.

Two families: He et al.'s CIFAR ResNets (resnet20…: 3 stages of 16/32/64 channels,
parameter-free "option A" shortcuts, 6n+2 layers) and the ImageNet ResNets with a CIFAR stem
(resnet18…: a 3×3 stride-1 first conv and no max-pool, so the 32×32 input is not
downsampled 4× before the first block).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_model


class BasicBlock(nn.Module):
    """Two 3×3 convs with BatchNorm; the shortcut is a 1×1 conv (option B) or, when
    `pad_shortcut`, stride-2 subsampling plus zero channels (option A, no parameters)."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1, pad_shortcut: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != channels:
            if pad_shortcut:
                self.shortcut = _PadShortcut(channels - in_channels, stride)
            else:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_channels, channels, 1, stride, bias=False), nn.BatchNorm2d(channels)
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class _PadShortcut(nn.Module):
    def __init__(self, extra_channels: int, stride: int):
        super().__init__()
        self.extra_channels, self.stride = extra_channels, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        half = self.extra_channels // 2
        return F.pad(x, (0, 0, 0, 0, half, self.extra_channels - half))


class ResNet(nn.Module):
    """Stem conv → stages of residual blocks (the first block of each later stage halves the
    resolution) → global average pool → linear head."""

    def __init__(self, widths: list[int], depths: list[int], num_classes: int, pad_shortcut: bool = False):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        blocks, in_channels = [], widths[0]
        for stage, (width, depth) in enumerate(zip(widths, depths)):
            for i in range(depth):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(in_channels, width, stride, pad_shortcut))
                in_channels = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_channels, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


def _cifar_resnet(depth: int, num_classes: int) -> ResNet:
    n = (depth - 2) // 6
    return ResNet([16, 32, 64], [n, n, n], num_classes, pad_shortcut=True)


@register_model
def resnet20(num_classes: int = 10) -> nn.Module:
    """He et al. 2016 CIFAR ResNet-20: 3×3 basic blocks 16/32/64, option-A shortcuts (0.27M)."""
    return _cifar_resnet(20, num_classes)


@register_model
def resnet18(num_classes: int = 10) -> nn.Module:
    """ResNet-18 with a CIFAR stem (3×3 conv, no max-pool): basic blocks 64/128/256/512 (11.2M)."""
    return ResNet([64, 128, 256, 512], [2, 2, 2, 2], num_classes)
