"""Unstructured magnitude pruning with torch.nn.utils.prune: the smallest weights of all conv
and linear layers (one global L1 threshold) become zeros, for good.

The net keeps its shape, and dense kernels multiply the zeros like any other weight: this
saves no time and no memory as it runs here. It measures how many weights a net can do
without; sparse kernels or compressed storage would be needed to turn that into savings.
"""

from __future__ import annotations

from torch import nn
from torch.nn.utils import prune


def prunable_layers(model: nn.Module) -> list[nn.Module]:
    """The conv and linear layers whose weights train (a frozen one, like airbench's whitening, is left as it is)."""
    return [m for m in model.modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) and m.weight.requires_grad]


def prune_unstructured(model: nn.Module, amount: float) -> None:
    """Zero the `amount` fraction of the smallest-magnitude weights over all prunable layers, in place."""
    layers = prunable_layers(model)
    prune.global_unstructured([(m, "weight") for m in layers], pruning_method=prune.L1Unstructured, amount=amount)
    for m in layers:
        prune.remove(m, "weight")  # the masked weight becomes the plain weight: no mask in the state dict


def sparsity(model: nn.Module) -> float:
    """The fraction of zeros among the weights of the prunable layers."""
    weights = [m.weight for m in prunable_layers(model)]
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
