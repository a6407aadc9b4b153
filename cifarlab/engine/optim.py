"""Optimizers with weight-decay exclusion, and learning-rate schedules as pure functions of the step."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import OptimConfig


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Decay only weight matrices and conv filters unless asked: decaying BatchNorm scales and
    biases shrinks them toward 0 for no regularization benefit (they set scale, not capacity)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.decay_norm_and_bias:
        return [{"params": params, "weight_decay": cfg.weight_decay}]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    return [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    optimizer = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
    return optimizer(groups, lr=cfg.lr, betas=tuple(cfg.betas))


def lr_factor(step: int, total_steps: int, steps_per_epoch: int, cfg: OptimConfig) -> float:
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


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, steps_per_epoch, cfg)
    )
