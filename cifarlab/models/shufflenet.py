"""ShuffleNetV2 (Ma et al. 2018) with a CIFAR stem: torchvision's network with a stride-1 first
conv and no max-pool, so the three stride-2 stages take a 32×32 input to 4×4 (as in
chenyaofo/pytorch-cifar-models).
"""

from __future__ import annotations

from torch import nn
from torchvision.models import ShuffleNetV2

from .blocks import cifar_stem
from .registry import register_model

_REPEATS = [4, 8, 4]


def _cifar_shufflenet(channels: list[int], num_classes: int) -> nn.Module:
    model = ShuffleNetV2(_REPEATS, channels, num_classes)
    model.conv1 = cifar_stem(channels[0])
    model.maxpool = nn.Identity()
    return model


@register_model
def shufflenet_v2_x0_5(num_classes: int = 10) -> nn.Module:
    """ShuffleNetV2 ×0.5, CIFAR stem: stages of 48/96/192 channels, 1024 before the head (0.35M)."""
    return _cifar_shufflenet([24, 48, 96, 192, 1024], num_classes)


@register_model
def shufflenet_v2_x1_0(num_classes: int = 10) -> nn.Module:
    """ShuffleNetV2 ×1.0, CIFAR stem: stages of 116/232/464 channels, 1024 before the head (1.26M)."""
    return _cifar_shufflenet([24, 116, 232, 464, 1024], num_classes)


@register_model
def shufflenet_v2_x1_5(num_classes: int = 10) -> nn.Module:
    """ShuffleNetV2 ×1.5, CIFAR stem: stages of 176/352/704 channels, 1024 before the head (2.49M)."""
    return _cifar_shufflenet([24, 176, 352, 704, 1024], num_classes)


@register_model
def shufflenet_v2_x2_0(num_classes: int = 10) -> nn.Module:
    """ShuffleNetV2 ×2.0, CIFAR stem: stages of 244/488/976 channels, 2048 before the head (5.37M)."""
    return _cifar_shufflenet([24, 244, 488, 976, 2048], num_classes)
