"""Model registry: `create_model(name, num_classes=...)` over decorated builder functions (as timm).

Names with a namespace (`torchvision:resnet18`, `timm:convnext_nano`) are built by another
library (see external.py), so a fine-tuned ImageNet net is rebuilt from its name like any other.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..errors import CifarlabError
from .resize import resize_layers

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
_NAMESPACES: dict[str, "Namespace"] = {}


@dataclass(frozen=True)
class Namespace:
    """Models of another library: `check(arch)` raises a CifarlabError for a name it lacks (or
    when the library is missing); `build(arch, num_classes=..., **options)` makes one."""

    check: Callable[[str], None]
    build: Callable[..., nn.Module]


def register_namespace(prefix: str, namespace: Namespace) -> None:
    _NAMESPACES[prefix] = namespace


def register_model(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a builder under its function name; its docstring's first line describes it."""
    _BUILDERS[builder.__name__] = builder
    return builder


def list_models() -> list[str]:
    return sorted(_BUILDERS)


def describe_model(name: str) -> str:
    return (_get_builder(name).__doc__ or "").strip().splitlines()[0]


def _get_builder(name: str) -> Callable[..., nn.Module]:
    prefix, colon, arch = name.partition(":")
    if colon:
        namespace = _NAMESPACES.get(prefix)
        if namespace is None:
            raise CifarlabError(f"unknown model namespace '{prefix}:'; known: {', '.join(f'{p}:' for p in _NAMESPACES)}")
        namespace.check(arch)
        return functools.partial(namespace.build, arch)
    try:
        return _BUILDERS[name]
    except KeyError:
        raise CifarlabError(
            f"unknown model '{name}'; `cifarlab models` lists: {', '.join(list_models())} "
            f"(and {', '.join(f'{p}:<name>' for p in _NAMESPACES)})"
        ) from None


def check_model_name(name: str) -> None:
    """Raise a CifarlabError unless `create_model` can build `name`."""
    _get_builder(name)


def model_options(name: str) -> set[str] | None:
    """The options (keyword arguments besides num_classes) a registered builder takes; None for
    another library's nets, whose builders take open-ended keyword arguments."""
    if ":" in name:
        return None
    parameters = inspect.signature(_get_builder(name)).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return None
    return {p.name for p in parameters if p.name != "num_classes"}


def create_model(name: str, num_classes: int = 10, resized: dict | None = None, **kwargs) -> nn.Module:
    """Build a model with a fresh head for `num_classes` classes (no pretrained weights);
    `resized` shrinks layers as a channel-pruned net has them (see resize.py)."""
    builder = _get_builder(name)
    try:
        model = builder(num_classes=num_classes, **kwargs)
    except (TypeError, ValueError) as e:  # an unknown option, or a value out of range (e.g. dropout 1.5)
        raise CifarlabError(f"bad options for model '{name}': {e}") from None
    return resize_layers(model, resized) if resized else model


@dataclass
class ModelStats:
    params: int
    mflops: float  # forward pass of one 32×32 image, in millions of FLOPs (a multiply-add = 2)


def takes_side(model: nn.Module, side: int, device: torch.device | str | None = None) -> bool:
    """Whether `model` runs on side×side images (LeNet's fixed-size flatten runs on 32×32 only).
    In eval mode, so BatchNorm's running statistics stay as they were."""
    training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(2, 3, side, side, device=device))
        return True
    except (RuntimeError, AssertionError):  # a shape mismatch; torchvision's ViT asserts its image size
        return False
    finally:
        model.train(training)


def model_stats(model: nn.Module | str, image_size: int = 32) -> ModelStats:
    """Parameter count and FLOPs per image, counted by torch.utils.flop_counter. A name is
    built on the meta device: shapes only, no memory and no initialization, so counting all
    the registered models takes seconds, not the minutes that building them for real would."""
    if isinstance(model, str):
        with torch.device("meta"):
            model = create_model(model)
    params = sum(p.numel() for p in model.parameters())
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, image_size, image_size, device=next(model.parameters()).device))
    model.train(was_training)
    return ModelStats(params, counter.get_total_flops() / 1e6)
