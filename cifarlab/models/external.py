"""Architectures of torchvision and timm by namespaced name (`torchvision:resnet18`,
`timm:resnet18.a1_in1k`), built with a fresh head and no weights: fine-tuning loads the
weights, and a fine-tuned run is rebuilt from its name and options alone.

ImageNet nets are made for ~224-px images; at 32 px a ResNet's stride-32 trunk ends on a
1×1 map. Two ways to adapt them, as model options (so a checkpoint rebuilds the same net):
- `input_size`: upsample each batch to that side inside the model: every pretrained weight
  keeps its meaning, at (input_size / 32)² times the compute;
- `cifar_stem` (torchvision ResNets): a fresh 3×3 stride-1 first conv and no max-pool: 32-px
  inputs stay cheap (a 4×4 map after the trunk), but the pretrained first layer is lost.
"""

from __future__ import annotations

import importlib

import torch.nn.functional as F
import torchvision
from torch import nn

from ..errors import CifarlabError
from .registry import Namespace, register_namespace


class ResizeInputs:
    """Forward pre-hook that resizes the images a model gets (bilinear). A hook rather than a
    wrapper module, so the state-dict keys stay those of the pretrained weights."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        x, *rest = args
        return (F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False), *rest)


def _adapt(model: nn.Module, name: str, input_size: int | None, cifar_stem: bool) -> nn.Module:
    if cifar_stem:
        conv = getattr(model, "conv1", None)
        if not isinstance(conv, nn.Conv2d) or not hasattr(model, "maxpool"):
            raise CifarlabError(f"cifar_stem needs a ResNet stem (conv1 + maxpool); '{name}' has none: use input_size")
        model.conv1 = nn.Conv2d(conv.in_channels, conv.out_channels, 3, 1, 1, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
        model.maxpool = nn.Identity()
    if input_size:
        model.register_forward_pre_hook(ResizeInputs(input_size))
    return model


def _check_torchvision(arch: str) -> None:
    names = torchvision.models.list_models(module=torchvision.models)
    if arch not in names:
        raise CifarlabError(f"unknown torchvision model '{arch}'; its classification models: {', '.join(names)}")


def _build_torchvision(arch: str, num_classes: int = 10, input_size: int | None = None, cifar_stem: bool = False):
    model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    return _adapt(model, f"torchvision:{arch}", input_size, cifar_stem)


def import_timm():
    """timm is an optional extra: say how to get it when it is missing."""
    try:
        return importlib.import_module("timm")
    except ImportError:
        raise CifarlabError("timm: models need the timm package: pip install timm (or 'cifarlab[timm]')") from None


def _check_timm(arch: str) -> None:
    if not import_timm().is_model(arch):
        raise CifarlabError(f"unknown timm model '{arch}' (timm.list_models() lists them)")


def _build_timm(arch: str, num_classes: int = 10, input_size: int | None = None) -> nn.Module:
    model = import_timm().create_model(arch, pretrained=False, num_classes=num_classes)
    return _adapt(model, f"timm:{arch}", input_size, cifar_stem=False)


register_namespace("torchvision", Namespace(_check_torchvision, _build_torchvision))
register_namespace("timm", Namespace(_check_timm, _build_timm))
