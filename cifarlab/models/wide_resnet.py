"""Wide residual networks (Zagoruyko & Komodakis 2016): pre-activation ResNets for CIFAR made
shallow and wide. WRN-d-k has (d-4)/6 blocks in each of 3 stages of 16k/32k/64k channels,
after a 16-channel stem conv; `dropout` between a block's two convs is the paper's
regularizer (0.3 in its best CIFAR results). Built from resnet.py's pre-activation blocks.
"""

from __future__ import annotations

from torch import nn

from .registry import register_model
from .resnet import PreActBlock, ResNet


def _wide_resnet(depth: int, width: int, num_classes: int, dropout: float, drop_path: float) -> ResNet:
    n = (depth - 4) // 6
    widths = [16 * width, 32 * width, 64 * width]
    return ResNet(PreActBlock, widths, [n, n, n], num_classes, stem_width=16, drop_path=drop_path, dropout=dropout)


@register_model
def wrn16_4(num_classes: int = 10, dropout: float = 0.0, drop_path: float = 0.0) -> nn.Module:
    """WRN-16-4: 2 pre-activation blocks per stage, 64/128/256 channels (2.7M)."""
    return _wide_resnet(16, 4, num_classes, dropout, drop_path)


@register_model
def wrn16_8(num_classes: int = 10, dropout: float = 0.0, drop_path: float = 0.0) -> nn.Module:
    """WRN-16-8: 2 pre-activation blocks per stage, 128/256/512 channels (11.0M)."""
    return _wide_resnet(16, 8, num_classes, dropout, drop_path)


@register_model
def wrn28_10(num_classes: int = 10, dropout: float = 0.0, drop_path: float = 0.0) -> nn.Module:
    """WRN-28-10: 4 pre-activation blocks per stage, 160/320/640 channels (36.5M)."""
    return _wide_resnet(28, 10, num_classes, dropout, drop_path)
