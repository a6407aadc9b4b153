"""VGG with BatchNorm for 32×32 inputs (Simonyan & Zisserman 2015; the CIFAR form of
chenyaofo/pytorch-cifar-models): five stages of 3×3 conv-BN-ReLU layers, each ending in a 2×2
max-pool, leave a 1×1×512 map; the classifier is 512 → 512 → 512 → classes with dropout.
torchvision's VGG expects 224×224 (a 7×7×512 map into 4096-wide layers), so the net is built
here from torchvision's conv-BN-ReLU unit.
"""

from __future__ import annotations

from torch import nn
from torchvision.ops.misc import Conv2dNormActivation

from .registry import register_model

_STAGE_WIDTHS = (64, 128, 256, 512, 512)


def _vgg(convs_per_stage: tuple[int, ...], num_classes: int, dropout: float) -> nn.Module:
    layers, in_channels = [], 3
    for width, convs in zip(_STAGE_WIDTHS, convs_per_stage):
        for _ in range(convs):
            layers.append(Conv2dNormActivation(in_channels, width, 3))
            in_channels = width
        layers.append(nn.MaxPool2d(2))
    model = nn.Sequential(
        nn.Sequential(*layers),
        nn.Flatten(),
        nn.Linear(512, 512), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(512, 512), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(512, num_classes),
    )  # fmt: skip
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return model


@register_model
def vgg11_bn(num_classes: int = 10, dropout: float = 0.5) -> nn.Module:
    """VGG-11 with BatchNorm: 8 conv layers (1/1/2/2/2 per stage), 3 linear layers (9.76M)."""
    return _vgg((1, 1, 2, 2, 2), num_classes, dropout)


@register_model
def vgg13_bn(num_classes: int = 10, dropout: float = 0.5) -> nn.Module:
    """VGG-13 with BatchNorm: 10 conv layers (2 per stage), 3 linear layers (9.94M)."""
    return _vgg((2, 2, 2, 2, 2), num_classes, dropout)


@register_model
def vgg16_bn(num_classes: int = 10, dropout: float = 0.5) -> nn.Module:
    """VGG-16 with BatchNorm: 13 conv layers (2/2/3/3/3 per stage), 3 linear layers (15.25M)."""
    return _vgg((2, 2, 3, 3, 3), num_classes, dropout)


@register_model
def vgg19_bn(num_classes: int = 10, dropout: float = 0.5) -> nn.Module:
    """VGG-19 with BatchNorm: 16 conv layers (2/2/4/4/4 per stage), 3 linear layers (20.57M)."""
    return _vgg((2, 2, 4, 4, 4), num_classes, dropout)
