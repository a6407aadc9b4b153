"""Densely connected networks (Huang et al. 2017) with a CIFAR stem.

torchvision's DenseNet has every part (bottleneck dense layers with `bn_size`, transitions
with compression 0.5, dropout as `drop_rate`); only its ImageNet stem (7×7 stride-2 conv,
BN, ReLU, max-pool) is replaced by one 3×3 stride-1 conv, as in the paper's CIFAR nets, whose
first dense layer normalizes the stem's output itself.
"""

from __future__ import annotations

from torch import nn
from torchvision.models import DenseNet

from .registry import register_model


def _cifar_densenet(growth: int, blocks: tuple[int, ...], stem_width: int, num_classes: int, dropout: float) -> nn.Module:
    model = DenseNet(growth, blocks, stem_width, bn_size=4, drop_rate=dropout, num_classes=num_classes)
    model.features.conv0 = nn.Conv2d(3, stem_width, 3, padding=1, bias=False)
    nn.init.kaiming_normal_(model.features.conv0.weight)
    del model.features.norm0, model.features.relu0, model.features.pool0
    return model


@register_model
def densenet_bc100(num_classes: int = 10, dropout: float = 0.0) -> nn.Module:
    """DenseNet-BC-100, growth 12: 3 dense blocks of 16 bottleneck layers, compression 0.5 (0.77M)."""
    return _cifar_densenet(12, (16, 16, 16), 24, num_classes, dropout)


@register_model
def densenet121(num_classes: int = 10, dropout: float = 0.0) -> nn.Module:
    """DenseNet-121 (growth 32, blocks 6/12/24/16) with a CIFAR stem (7.0M)."""
    return _cifar_densenet(32, (6, 12, 24, 16), 64, num_classes, dropout)
