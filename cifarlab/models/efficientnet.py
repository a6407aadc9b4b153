"""EfficientNet-B0 (Tan & Le 2019) with a CIFAR stem: torchvision's network (MBConv blocks with
squeeze-excitation, SiLU, stochastic depth, dropout before the head) with a stride-1 stem and
a stride-1 second stage, so a 32×32 input ends at 4×4 (8× down, as in kuangliu/pytorch-cifar)
instead of 1×1. Its defaults are the paper's: dropout 0.2 and stochastic depth 0.2.
"""

from __future__ import annotations

from torch import nn
from torchvision.models.efficientnet import EfficientNet, MBConvConfig

from .blocks import cifar_stem
from .registry import register_model

# expand ratio, kernel, stride, in channels, out channels, layers: the paper's Table 1, with the
# second stage at stride 1 instead of 2
_B0_CIFAR = [(1, 3, 1, 32, 16, 1), (6, 3, 1, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
             (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1)]  # fmt: skip


@register_model
def efficientnet_b0(num_classes: int = 10, dropout: float = 0.2, drop_path: float = 0.2) -> nn.Module:
    """EfficientNet-B0, CIFAR strides (stem and second stage at stride 1): 16 MBConv blocks with SE (4.0M)."""
    setting = [MBConvConfig(*row) for row in _B0_CIFAR]
    model = EfficientNet(setting, dropout=dropout, stochastic_depth_prob=drop_path, num_classes=num_classes)
    model.features[0] = cifar_stem(32, nn.SiLU)
    return model
