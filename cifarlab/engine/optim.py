"""Optimizers over parameter groups by role, and learning-rate schedules as pure functions of
the step (so resuming needs only the step count)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import OptimConfig
from ..errors import CifarlabError
from .muon import Muon

_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
GROUP_OPTIONS = {"lr", "weight_decay", "momentum", "optimizer", "decay_epochs"}


def param_roles(model: nn.Module, trainable_only: bool = True) -> dict[str, list[nn.Parameter]]:
    """Trainable parameters by role: `head` (the last Linear layer), `norm` (normalization
    layers), `bias` (other vectors), `filters` (other matrices and conv kernels), plus any role
    a model declares in a `param_roles` dict (parameter name → role, e.g. airbench's
    'whiten.bias'). With `trainable_only=False`, frozen parameters too."""
    declared = getattr(model, "param_roles", {})
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    head = linears[-1] if linears else None
    norm_names = {
        f"{name}.{p}" for name, m in model.named_modules() if isinstance(m, _NORMS) for p, _ in m.named_parameters()
    }
    roles: dict[str, list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if trainable_only and not param.requires_grad:
            continue
        if name in declared:
            role = declared[name]
        elif head is not None and name.rpartition(".")[0] == head:
            role = "head"
        elif name in norm_names:
            role = "norm"
        else:
            role = "bias" if param.ndim <= 1 else "filters"
        roles.setdefault(role, []).append(param)
    return roles


def build_optimizers(
    model: nn.Module, cfg: OptimConfig, batch_size: int, param_options: dict[str, dict] | None = None
) -> list[torch.optim.Optimizer]:
    """One optimizer for most groups (SGD/Adam/AdamW), plus Muon for the groups that ask for it.

    `cfg.groups[role]` overrides lr, weight_decay, momentum, `decay_epochs` (this group's lr
    reaches its final value after that many epochs, e.g. airbench's whitening bias) or
    `optimizer: muon`. With `cfg.per_1024`, lr and weight decay are per 1024 examples
    (airbench's parametrization: both scale with the batch size, and the weight decay is the
    fraction of the weights removed per 1024 examples at peak lr, whatever the lr); Muon's lr
    is per step, since its update has a fixed size.

    `param_options` {parameter name: {lr_scale, start_epoch}}
    (fine-tuning's layer-wise lr decay and gradual unfreezing): parameters of one role with the
    same options share a group; `lr_scale` scales the group's whole step, weight decay
    included, and `start_epoch` holds the group until then (see set_learning_rates).
    """
    roles = param_roles(model)
    known = param_roles(model, trainable_only=False)  # a role may be all frozen (a linear probe's filters)
    unknown = set(cfg.groups) - set(known)
    if unknown:
        raise CifarlabError(f"optim.groups names roles this model lacks: {sorted(unknown)}; it has {sorted(known)}")
    scale = batch_size / 1024 if cfg.per_1024 else 1.0
    names = {id(p): name for name, p in model.named_parameters()}
    declared = param_options or {}
    main, muon = [], []
    for role, role_params in roles.items():
        options = cfg.groups.get(role, {})
        bad = set(options) - GROUP_OPTIONS
        if bad:
            raise CifarlabError(f"optim.groups.{role}: unknown option(s) {sorted(bad)}; allowed: {sorted(GROUP_OPTIONS)}")
        for extra, params in _split_by_declared_options(role_params, names, declared):
            lr_scale = extra.pop("lr_scale", 1.0)
            group = {"params": params, "role": role, "decay_epochs": options.get("decay_epochs"), **extra}
            if "momentum" in options:
                group["momentum"] = options["momentum"]
            if options.get("optimizer", cfg.name) == "muon":
                group["peak_lr"] = options.get("lr", cfg.lr) * lr_scale
                muon.append(group)
                continue
            peak = options.get("lr", cfg.lr) * scale
            decays = role in ("filters", "head") or cfg.decay_norm_and_bias
            decay = options.get("weight_decay", cfg.weight_decay if decays else 0.0)
            group["peak_lr"] = peak * lr_scale
            group["weight_decay"] = (decay * scale / peak if peak else 0.0) if cfg.per_1024 else decay
            main.append(group)
    for group in main + muon:
        group["lr"] = group["peak_lr"]
    optimizers = []
    if main:
        if cfg.name == "sgd":
            optimizers.append(torch.optim.SGD(main, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov))
        elif cfg.name in ("adam", "adamw"):
            cls = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
            optimizers.append(cls(main, lr=cfg.lr, betas=tuple(cfg.betas)))
        else:
            raise CifarlabError("optim.name=muon needs a fallback for non-matrix parameters; use sgd with groups")
    if muon:
        optimizers.append(Muon(muon, lr=cfg.lr, momentum=cfg.momentum, nesterov=True))
    return optimizers


def _split_by_declared_options(params: list[nn.Parameter], names: dict, declared: dict) -> list[tuple[dict, list]]:
    """(options, parameters) for each distinct set of declared options, in order of appearance."""
    split: dict[tuple, list[nn.Parameter]] = {}
    for p in params:
        split.setdefault(tuple(sorted(declared.get(names[id(p)], {}).items())), []).append(p)
    return [(dict(options), members) for options, members in split.items()]


def lr_factor(step: float, total_steps: int, steps_per_epoch: int, cfg: OptimConfig) -> float:
    """Multiplier of the peak lr at `step`: linear warmup, then the chosen decay."""
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    final = cfg.final_lr_factor
    if cfg.schedule == "cosine":
        return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * progress))
    if cfg.schedule == "linear":
        return final + (1 - final) * (1 - progress)
    if cfg.schedule == "step":
        return cfg.gamma ** sum(step >= m * steps_per_epoch for m in cfg.milestones)
    return 1.0


def set_learning_rates(
    optimizers: list[torch.optim.Optimizer], step: float, total_steps: int, steps_per_epoch: int, cfg: OptimConfig
) -> None:
    """Set every group's lr for `step` from its peak and its own schedule length. A group with a
    `start_epoch` is held until then: lr 0 and its gradients dropped, so that neither momentum,
    weight decay nor Muon's renormalization moves it (call this between backward and step)."""
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            if step < round(group.get("start_epoch", 0) * steps_per_epoch):
                group["lr"] = 0.0
                for p in group["params"]:
                    p.grad = None
                continue
            total = total_steps if group["decay_epochs"] is None else round(group["decay_epochs"] * steps_per_epoch)
            group["lr"] = group["peak_lr"] * lr_factor(step, total, steps_per_epoch, cfg)


def scale_learning_rates(optimizers: list[torch.optim.Optimizer], factor: float, cfg: OptimConfig) -> None:
    """Every group at `factor` × its peak lr, all by the same factor (the lr range test). With
    `per_1024` the weight decay is decoupled from the lr: each group keeps its lr × weight
    decay, as a run whose lrs were all × `factor` would have it."""
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            lr = group["peak_lr"] * factor
            if cfg.per_1024 and "weight_decay" in group and group["lr"] > 0 and lr > 0:
                group["weight_decay"] *= group["lr"] / lr
            group["lr"] = lr
