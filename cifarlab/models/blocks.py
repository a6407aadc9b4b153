"""Pieces several model families share: the CIFAR stem and the stochastic-depth schedule."""

from __future__ import annotations

from torch import nn
from torchvision.ops.misc import Conv2dNormActivation


def cifar_stem(out_channels: int, activation: type[nn.Module] = nn.ReLU) -> nn.Module:
    """3×3 stride-1 conv + BatchNorm + activation: replaces an ImageNet stem (stride 2, often
    followed by a max-pool), which would shrink a 32×32 image 4× before the first block."""
    stem = Conv2dNormActivation(3, out_channels, 3, stride=1, activation_layer=activation)
    nn.init.kaiming_normal_(stem[0].weight, mode="fan_out", nonlinearity="relu")
    return stem


def drop_path_rates(rate: float, blocks: int) -> list[float]:
    """Stochastic depth (Huang et al. 2016) drop rates per residual block: growing linearly
    from 0 for the first block to `rate` for the last, so early features are kept."""
    return [rate * i / max(blocks - 1, 1) for i in range(blocks)]
