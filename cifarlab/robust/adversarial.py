"""Adversarial training: each training batch is replaced by L∞ adversarial images crafted
against the current weights (`train.adversarial`), then trained on as usual.

- fgsm: FGSM from a uniform random start in the ε-ball with step α = 1.25·ε (Wong, Rice &
  Kolter 2020, "Fast is better than free"): one extra forward and backward pass per step;
- nfgsm: FGSM from uniform noise of twice the radius (2ε) with step α = ε, not clipped back
  into the ε-ball (de Jorge et al. 2022, "Make some noise"): the same cost as fgsm, and the
  stronger noise keeps single-step training from catastrophic overfitting, where fgsm's
  robustness to multi-step attacks collapses to zero within an epoch;
- pgd: PGD-k from a random start with step ε/4 (Madry et al. 2018): k extra passes.

The images are crafted by the suite's own `attacks.perturb`, in pixel space with the model's
normalization inside, so ε means 8/255 of the pixel range here as in `cifarlab robustness`.

BatchNorm: the model stays in train mode while crafting, as in both references (Wong et al.'s
code and Madry et al.'s): the attack climbs the same function (batch statistics) that the
training step then differentiates, and an eval-mode attack would use running statistics that
lag the weights. The crafting passes update the running statistics too, as there.

After each epoch `held_out_check` measures PGD-10 accuracy on held-out images, so a collapse
is seen when it happens, not only after training.

The crafting goes through the unwrapped model, not the DDP wrapper: its input-only gradient
must not trigger DDP's gradient all-reduce. The random start is keyed by (seed, step, rank),
so a resumed run draws the same starts without any saved generator state."""

from __future__ import annotations

import torch
from torch import nn

from ..config import TrainConfig
from ..data import ImageSet
from ..data.augment import Stream, keyed_generator
from .attacks import Attack, Normalized, perturb, pgd_linf, robust_accuracy


def training_attack(train: TrainConfig) -> Attack | None:
    """The attack `train.adversarial` names, with its defaults filled in; None for "none"."""
    eps, alpha = train.adversarial_eps, train.adversarial_alpha
    if train.adversarial == "fgsm":
        return Attack("fgsm", "linf", eps, 1, alpha or 1.25 * eps, random_start=True)
    if train.adversarial == "nfgsm":  # a ball of the start's radius plus the step: the projection never binds
        alpha = alpha or eps
        return Attack("nfgsm", "linf", 2 * eps + alpha, 1, alpha, random_start=True, start=2 * eps)
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


def held_out_check(model: nn.Module, held_out: ImageSet, train: TrainConfig, mean, std,
                   epoch: int) -> tuple[float, int]:  # fmt: skip
    """PGD-10 L∞ accuracy at the training ε (the suite's attack, `cifarlab robustness`) of
    `model` in eval mode on the first train.adversarial_check held-out images, and how many
    were checked; its random starts are keyed by (seed, epoch). Costs about 11 forward and
    backward passes per image."""
    attack = pgd_linf(train.adversarial_eps)
    device = next(model.parameters()).device
    images, labels = held_out.images[: train.adversarial_check], held_out.labels[: train.adversarial_check]
    training = model.training
    model.eval()
    try:
        correct, _ = robust_accuracy(Normalized(model, mean, std).to(device), images, labels, attack,
                                     keyed_generator(train.seed, Stream.ADVERSARIAL_CHECK, epoch), train.eval_batch_size)  # fmt: skip
    finally:
        model.train(training)
    return correct / len(images), len(images)
