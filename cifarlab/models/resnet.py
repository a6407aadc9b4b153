"""Residual networks for 32×32 inputs.

Three families share one network class and its blocks:
- He et al.'s CIFAR ResNets (resnet20…resnet110): 3 stages of 16/32/64 channels,
  parameter-free "option A" shortcuts, 6n+2 layers;
- the ImageNet ResNets with a CIFAR stem (resnet18…resnet101): a 3×3 stride-1 first conv and
  no max-pool, so the 32×32 input is not downsampled 4× before the first block;
- the pre-activation ResNets (He et al. 2016b, "Identity Mappings"): BatchNorm and ReLU
  before each conv and nothing on the identity path; wide_resnet.py builds on them.

Every block takes `drop_path`: stochastic depth (Huang et al. 2016) skips the residual
branch for a random subset of the batch's samples in training (torchvision's StochasticDepth).
Hand-written rather than torchvision's ResNet: it has no option-A shortcut, no pre-activation
block and no stochastic depth.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import StochasticDepth

from .blocks import drop_path_rates
from .registry import register_model


class BasicBlock(nn.Module):
    """Two 3×3 convs with BatchNorm; the shortcut is a 1×1 conv (option B) or, when
    `pad_shortcut`, stride-2 subsampling plus zero channels (option A, no parameters)."""

    expansion = 1

    def __init__(
        self, in_channels: int, channels: int, stride: int = 1, pad_shortcut: bool = False, drop_path: float = 0.0
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.drop_path = StochasticDepth(drop_path, "row")
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != channels:
            if pad_shortcut:
                self.shortcut = _PadShortcut(channels - in_channels, stride)
            else:
                self.shortcut = _projection(in_channels, channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.drop_path(self.bn2(self.conv2(out)))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1×1 conv down to `channels`, 3×3 conv (carrying the stride), 1×1 conv up to 4×
    `channels`: the deep ResNets' block, cheaper per layer than two 3×3 convs."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1, drop_path: float = 0.0):
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.drop_path = StochasticDepth(drop_path, "row")
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = _projection(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.drop_path(self.bn3(self.conv3(out)))
        return F.relu(out + self.shortcut(x))


class PreActBlock(nn.Module):
    """BN → ReLU → 3×3 conv, twice, with optional dropout between the convs (the wide ResNets'
    regularizer). A projecting shortcut (1×1 conv) takes the normalized input, as in the paper."""

    expansion = 1
    preact = True

    def __init__(self, in_channels: int, channels: int, stride: int = 1, dropout: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.drop_path = StochasticDepth(drop_path, "row")
        self.shortcut = None
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Conv2d(in_channels, channels, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv2(self.dropout(F.relu(self.bn2(self.conv1(out)))))
        return self.drop_path(out) + shortcut


def _projection(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels))


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
    resolution) → global average pool → linear head. With pre-activation blocks the stem is a
    bare conv and the head starts with the BatchNorm + ReLU the last block leaves out."""

    def __init__(
        self,
        block: type[nn.Module],
        widths: list[int],
        depths: list[int],
        num_classes: int,
        stem_width: int | None = None,
        drop_path: float = 0.0,
        **block_options,
    ):
        super().__init__()
        preact = getattr(block, "preact", False)
        in_channels = stem_width or widths[0]
        stem = [nn.Conv2d(3, in_channels, 3, 1, 1, bias=False)]
        self.stem = nn.Sequential(*stem if preact else [*stem, nn.BatchNorm2d(in_channels), nn.ReLU()])
        rates = iter(drop_path_rates(drop_path, sum(depths)))
        blocks = []
        for stage, (width, depth) in enumerate(zip(widths, depths)):
            for i in range(depth):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(block(in_channels, width, stride, drop_path=next(rates), **block_options))
                in_channels = width * block.expansion
        self.blocks = nn.Sequential(*blocks)
        final_norm = [nn.BatchNorm2d(in_channels), nn.ReLU()] if preact else []
        self.head = nn.Sequential(*final_norm, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_channels, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


def _cifar_resnet(depth: int, num_classes: int, drop_path: float) -> ResNet:
    n = (depth - 2) // 6
    return ResNet(BasicBlock, [16, 32, 64], [n, n, n], num_classes, drop_path=drop_path, pad_shortcut=True)


@register_model
def resnet20(num_classes: int = 10, drop_path: float = 0.0) -> nn.Module:
    """He et al. 2016 CIFAR ResNet-20: 3×3 basic blocks 16/32/64, option-A shortcuts (0.27M)."""
    return _cifar_resnet(20, num_classes, drop_path)


@register_model
def resnet32(num_classes: int = 10, drop_path: float = 0.0) -> nn.Module:
    """He et al. 2016 CIFAR ResNet-32: 5 basic blocks per stage, option-A shortcuts (0.46M)."""
    return _cifar_resnet(32, num_classes, drop_path)


@register_model
def resnet44(num_classes: int = 10, drop_path: float = 0.0) -> nn.Module:
    """He et al. 2016 CIFAR ResNet-44: 7 basic blocks per stage, option-A shortcuts (0.66M)."""
    return _cifar_resnet(44, num_classes, drop_path)


@register_model
def resnet56(num_classes: int = 10, drop_path: float = 0.0) -> nn.Module:
    """He et al. 2016 CIFAR ResNet-56: 9 basic blocks per stage, option-A shortcuts (0.85M)."""
    return _cifar_resnet(56, num_classes, drop_path)


@register_model
def resnet110(num_classes: int = 10, drop_path: float = 0.0) -> nn.Module:
    """He et al. 2016 CIFAR ResNet-110: 18 basic blocks per stage, option-A shortcuts (1.7M)."""
    return _cifar_resnet(110, num_classes, drop_path)


_WIDTHS = [64, 128, 256, 512]


@register_model
def resnet18(num_classes: int = 10, drop_path: float = 0.0) -> nn.Module:
    """ResNet-18 with a CIFAR stem (3×3 conv, no max-pool): basic blocks 64/128/256/512 (11.2M)."""
    return ResNet(BasicBlock, _WIDTHS, [2, 2, 2, 2], num_classes, drop_path=drop_path)


@register_model
def resnet34(num_classes: int = 10, drop_path: float = 0.0) -> nn.Module:
    """ResNet-34 with a CIFAR stem: basic blocks 3/4/6/3 (21.3M)."""
    return ResNet(BasicBlock, _WIDTHS, [3, 4, 6, 3], num_classes, drop_path=drop_path)


@register_model
def resnet50(num_classes: int = 10, drop_path: float = 0.0) -> nn.Module:
    """ResNet-50 with a CIFAR stem: bottleneck blocks 3/4/6/3, 256…2048 channels out (23.5M)."""
    return ResNet(Bottleneck, _WIDTHS, [3, 4, 6, 3], num_classes, drop_path=drop_path)


@register_model
def resnet101(num_classes: int = 10, drop_path: float = 0.0) -> nn.Module:
    """ResNet-101 with a CIFAR stem: bottleneck blocks 3/4/23/3 (42.5M)."""
    return ResNet(Bottleneck, _WIDTHS, [3, 4, 23, 3], num_classes, drop_path=drop_path)


@register_model
def preact_resnet18(num_classes: int = 10, drop_path: float = 0.0) -> nn.Module:
    """Pre-activation ResNet-18 (He et al. 2016b), CIFAR stem: BN-ReLU-conv blocks 64…512 (11.2M)."""
    return ResNet(PreActBlock, _WIDTHS, [2, 2, 2, 2], num_classes, drop_path=drop_path)


@register_model
def preact_resnet34(num_classes: int = 10, drop_path: float = 0.0) -> nn.Module:
    """Pre-activation ResNet-34 (He et al. 2016b), CIFAR stem: BN-ReLU-conv blocks 3/4/6/3 (21.3M)."""
    return ResNet(PreActBlock, _WIDTHS, [3, 4, 6, 3], num_classes, drop_path=drop_path)
