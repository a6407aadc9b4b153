"""MobileNetV2 (Sandler et al. 2018) with the CIFAR stride plan: torchvision's network (inverted
residual blocks, width multiplier, dropout before the head) with a stride-1 stem and a
stride-1 second stage (the 24-channel one), so a 32×32 input is downsampled 8× (to 4×4)
instead of 32× (as in kuangliu/pytorch-cifar and chenyaofo/pytorch-cifar-models).
"""

from __future__ import annotations

from torch import nn
from torchvision.models import MobileNetV2

from .blocks import cifar_stem
from .registry import register_model

# expansion t, channels c, blocks n, stride s of the first block (the paper's Table 2)
_CIFAR_SETTING = [[1, 16, 1, 1], [6, 24, 2, 1], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]]


@register_model
def mobilenet_v2(num_classes: int = 10, width: float = 1.0, dropout: float = 0.2) -> nn.Module:
    """MobileNetV2 ×1.0, CIFAR strides (stem and 24-channel stage at stride 1): 17 inverted residuals (2.24M)."""
    model = MobileNetV2(num_classes, width_mult=width, inverted_residual_setting=_CIFAR_SETTING, dropout=dropout)
    model.features[0] = cifar_stem(model.features[0].out_channels, nn.ReLU6)
    return model
