"""Head surgery and strategies: source weights in the target's net with a fresh head, the
net's parameters grouped by depth, and each strategy as frozen parameters or per-parameter
optimizer options (returned for engine.optim.build_optimizers).

All of it is a function of the config and the source, so resuming rebuilds the same net
and optimizer groups, then loads `checkpoints/last` over them.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.vision_transformer import Encoder

from ..config import FinetuneConfig
from ..engine.checkpoint import load_weights_into
from ..models import create_model

# Modules whose children are layers. torchvision's ViT encoder (position embedding, a stack of
# blocks, a final norm) is one: as a single layer, its blocks would share one lr and unfreeze at once.
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict, Encoder)
_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def fresh_keys(model: nn.Module, num_classes: int, source_arch: str, source_options: dict,
               source_resized: dict | None = None, keep_head: bool = False) -> set[str]:  # fmt: skip
    """The keys of `model` (built for `num_classes`) that source weights cannot fill: those
    shaped differently in the source's architecture. That is the head (compared at another
    class count, so that it is replaced, unless `keep_head` and the count is the source's)
    and whatever the model's options rebuilt (a CIFAR stem)."""
    classes = num_classes if keep_head else num_classes + 1
    with torch.device("meta"):
        reference = create_model(source_arch, classes, source_resized, **source_options).state_dict()
    return {k for k, v in model.state_dict().items() if k not in reference or reference[k].shape != v.shape}


def load_source(model: nn.Module, weights: dict[str, torch.Tensor], fresh: set[str], label: str) -> None:
    """Load `weights` into every key of `model` but the fresh ones; a key the weights lack, do
    not need or hold in another shape is named in the error."""
    target = model.state_dict()
    kept = {k: v for k, v in weights.items() if k not in fresh}
    load_weights_into(model, {**kept, **{k: target[k] for k in fresh}}, label)


def depth_groups(model: nn.Module) -> list[list[str]]:
    """Parameter names in depth order, one list per layer, input side first: the units that
    layer-wise lr decay scales and gradual unfreezing releases, one at a time from the top.

    A layer is a child of a container (Sequential, ModuleList, ModuleDict, ViT's encoder or the
    model itself) that holds parameters; containers are opened recursively, anything else (a conv, a
    residual block) is one layer, and a norm layer joins the layer before it. This follows
    the registration order of the modules, which is the depth order of every net here.
    """
    out: list[list[str]] = []

    def visit(module: nn.Module, prefix: str, is_container: bool) -> None:
        if is_container:
            own = [prefix + name for name, _ in module.named_parameters(recurse=False)]
            if own:
                out.append(own)
            for name, child in module.named_children():
                visit(child, f"{prefix}{name}.", isinstance(child, _CONTAINERS))
            return
        names = [prefix + name for name, _ in module.named_parameters()]
        if names and isinstance(module, _NORMS) and out:
            out[-1].extend(names)
        elif names:
            out.append(names)

    visit(model, "", True)
    return out


def apply_strategy(model: nn.Module, cfg: FinetuneConfig, fresh: set[str]) -> dict[str, dict]:
    """Freeze or schedule the pretrained parameters; the fresh ones (the new head, a new stem)
    always train from the start at the full lr.

    Counting pretrained layers from the top (1 = just below the head): `linear` freezes them
    all; `full` scales layer d's lr by layer_decay**d; `gradual` also holds layer d until epoch
    d × unfreeze_every (ULMFiT's gradual unfreezing with discriminative lrs).
    Returns {parameter name: {lr_scale, start_epoch}} for engine.optim.build_optimizers.
    """
    pretrained = [names for layer in depth_groups(model) if (names := [n for n in layer if n not in fresh])]
    params = dict(model.named_parameters())
    options = {}
    for depth, names in enumerate(reversed(pretrained), start=1):
        for name in names:
            if cfg.strategy == "linear":
                params[name].requires_grad_(False)
                continue
            option = {"lr_scale": cfg.layer_decay**depth} if cfg.layer_decay != 1 else {}
            if cfg.strategy == "gradual":
                option["start_epoch"] = depth * cfg.unfreeze_every
            if option:
                options[name] = option
    if cfg.freeze_bn:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.register_forward_pre_hook(_keep_in_eval_mode)
    return options


def keep_zeros(model: nn.Module) -> None:
    """Hold the zero weights of every conv and linear layer at zero while the net trains (an
    unstructured-pruned source): they are zeroed again before each forward pass and each
    state_dict, so no output and no checkpoint sees what an optimizer step put there (a
    masked gradient would not do: Muon's orthogonalized step is dense)."""
    for module in model.modules():
        if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)) and bool((module.weight == 0).any()):
            module.register_buffer("zeros_kept", (module.weight != 0).to(module.weight.dtype), persistent=False)
            module.register_forward_pre_hook(_zero_again)
            module.register_state_dict_pre_hook(_zero_again)


def _zero_again(module: nn.Module, *args) -> None:
    with torch.no_grad():
        module.weight.mul_(module.zeros_kept)


def _keep_in_eval_mode(module: nn.Module, args: tuple) -> None:
    """A BatchNorm with this pre-hook normalizes with its running statistics and never updates
    them, whatever `model.train()` said."""
    module.train(False)
