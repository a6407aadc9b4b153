"""Pieces several model families share: the CIFAR stem, the zero-padding shortcut and the
stochastic-depth schedule."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops.misc import Conv2dNormActivation


def cifar_stem(out_channels: int, activation: type[nn.Module] = nn.ReLU) -> nn.Module:
    """3×3 stride-1 conv + BatchNorm + activation: replaces an ImageNet stem (stride 2, often
    followed by a max-pool), which would shrink a 32×32 image 4× before the first block."""
    stem = Conv2dNormActivation(3, out_channels, 3, stride=1, activation_layer=activation)
    nn.init.kaiming_normal_(stem[0].weight, mode="fan_out", nonlinearity="relu")
    return stem


class ChannelPad(nn.Module):
    """Every `stride`-th pixel of the input's `in_channels` with `before` zero channels ahead of
    them and `after` behind: the parameter-free ("option A") shortcut of He et al.'s CIFAR ResNets.
    Its sizes are attributes, so that a channel-pruned net records and rebuilds them as it does a
    conv's (models/resize.py)."""

    def __init__(self, in_channels: int, before: int, after: int, stride: int):
        super().__init__()
        self.in_channels, self.before, self.after, self.stride = in_channels, before, after, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, self.before, self.after))

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, before={self.before}, after={self.after}, stride={self.stride}"


def drop_path_rates(rate: float, blocks: int) -> list[float]:
    """Stochastic depth (Huang et al. 2016) drop rates per residual block: growing linearly
    from 0 for the first block to `rate` for the last, so early features are kept."""
    return [rate * i / max(blocks - 1, 1) for i in range(blocks)]
