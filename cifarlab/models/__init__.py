"""Model families and the registry; importing a family module registers its models."""

from . import (  # noqa: F401  (registration)
    airbench, classic, convmixer, densenet, efficientnet, mobilenet, resnet, shufflenet, vgg, vit, wide_resnet,
)
from .registry import ModelStats, create_model, describe_model, list_models, model_stats, register_model

__all__ = ["ModelStats", "create_model", "describe_model", "list_models", "model_stats", "register_model"]
