"""Model families and the registry; importing a family module registers its models."""

from . import (  # noqa: F401  (registration)
    airbench, classic, convmixer, densenet, efficientnet, mobilenet, resnet, shufflenet, vgg, vit, wide_resnet,
)
from . import external  # noqa: F401  (the torchvision: and timm: namespaces)
from .registry import (ModelStats, check_model_name, create_model, describe_model, list_models, model_options, model_stats,
                       takes_side)
from .registry import register_model

__all__ = ["ModelStats", "check_model_name", "create_model", "describe_model", "list_models", "model_options", "model_stats",
           "register_model", "takes_side"]  # fmt: skip
