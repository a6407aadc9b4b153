"""ConvMixer (Trockman & Kolter 2022, "Patches Are All You Need?"): a patch-embedding conv, then
blocks that mix space with a depthwise conv (with a residual) and channels with a 1×1 conv,
each followed by GELU and BatchNorm, at one resolution throughout. ConvMixer-256/8 with 5×5
kernels and 2×2 patches is the CIFAR-10 setting of locuslab/convmixer-cifar10. torchvision has
no ConvMixer, and its conv-norm-activation unit puts the norm before the activation, so the
blocks are written out here.
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import register_model


def _conv_gelu_bn(in_channels: int, out_channels: int, kernel_size: int, **conv_options) -> nn.Sequential:
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, **conv_options)
    return nn.Sequential(conv, nn.GELU(), nn.BatchNorm2d(out_channels))


class _MixerBlock(nn.Module):
    def __init__(self, width: int, kernel_size: int):
        super().__init__()
        self.spatial = _conv_gelu_bn(width, width, kernel_size, groups=width, padding="same")
        self.channel = _conv_gelu_bn(width, width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.channel(x + self.spatial(x))


def _convmixer(width: int, depth: int, kernel_size: int, patch_size: int, num_classes: int) -> nn.Module:
    return nn.Sequential(
        _conv_gelu_bn(3, width, patch_size, stride=patch_size),
        *[_MixerBlock(width, kernel_size) for _ in range(depth)],
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, num_classes),
    )


@register_model
def convmixer_256_8(num_classes: int = 10, kernel_size: int = 5, patch_size: int = 2) -> nn.Module:
    """ConvMixer-256/8: 2×2 patches, 8 blocks of 5×5 depthwise + 1×1 convs at width 256 (0.59M)."""
    return _convmixer(256, 8, kernel_size, patch_size, num_classes)
