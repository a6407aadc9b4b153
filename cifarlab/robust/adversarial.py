"""Adversarial training: each training batch is replaced by L∞ adversarial images crafted
against the current weights (`train.adversarial`), then trained on as usual.

- fgsm: FGSM from a uniform random start in the ε-ball with step α = 1.25·ε (Wong, Rice &
  Kolter 2020, "Fast is better than free"): one extra forward and backward pass per step;
- pgd: PGD-k from a random start with step ε/4 (Madry et al. 2018): k extra passes.

The images are crafted by the suite's own `attacks.perturb`, in pixel space with the model's
normalization inside, so ε means 8/255 of the pixel range here as in `cifarlab robustness`.

BatchNorm: the model stays in train mode while crafting, as in both references (Wong et al.'s
code and Madry et al.'s): the attack climbs the same function (batch statistics) that the
training step then differentiates, and an eval-mode attack would use running statistics that
lag the weights. The crafting passes update the running statistics too, as there.

The crafting goes through the unwrapped model, not the DDP wrapper: its input-only gradient
must not trigger DDP's gradient all-reduce. The random start is keyed by (seed, step, rank),
so a resumed run draws the same starts without any saved generator state."""

from __future__ import annotations

import torch
from torch import nn

from ..config import TrainConfig
from ..data.augment import Stream, keyed_generator
from .attacks import Attack, Normalized, perturb


def training_attack(train: TrainConfig) -> Attack | None:
    """The attack `train.adversarial` names, with its defaults filled in; None for "none"."""
    eps, alpha = train.adversarial_eps, train.adversarial_alpha
    if train.adversarial == "fgsm":
        return Attack("fgsm", "linf", eps, 1, alpha or 1.25 * eps, random_start=True)
    if train.adversarial == "pgd":
        return Attack("pgd", "linf", eps, train.adversarial_steps, alpha or eps / 4, random_start=True)
    return None


class Adversary:
    """Turns a normalized training batch into its adversarial counterpart, also normalized."""

    def __init__(self, model: nn.Module, attack: Attack, mean, std, seed: int, rank: int = 0):
        self.attack, self.seed, self.rank = attack, seed, rank
        device = next(model.parameters()).device
        self.model = Normalized(model, mean, std).to(device)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, step: int) -> torch.Tensor:
        mean, std = self.model.mean, self.model.std
        pixels = (x * std + mean).clamp(0, 1)
        starts = keyed_generator(self.seed, Stream.ADVERSARIAL_START, step, self.rank)
        return (perturb(self.model, pixels, y, self.attack, starts) - mean) / std
