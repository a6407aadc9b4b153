"""White-box attacks in pixel space: FGSM, PGD-L∞ and PGD-L2 (Madry et al. 2018), batched.

Images are floats in [0, 1]; the model's normalization is a layer in front of it
(`Normalized`), so ε means what the literature means (8/255 of the pixel range) and every
step is clipped back into the valid image range. Hand-written rather than torchattacks: the
three attacks are a dozen lines together, and the package would add a dependency for them.
AutoAttack (APGD-CE + APGD-DLR) is not included: its authors' package is not on PyPI, and
the port in torchattacks has had no release since 2023.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class Normalized(nn.Module):
    """`model` with its input normalization inside: it takes images in [0, 1]."""

    def __init__(self, model: nn.Module, mean, std):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


@dataclass(frozen=True)
class Attack:
    """One attack's settings; `steps=1` without random start and step ε is FGSM."""

    name: str
    norm: str  # "linf" | "l2"
    eps: float  # the radius of the ball the images are projected back into
    steps: int
    alpha: float  # step size
    random_start: bool
    start: float | None = None  # the random start's radius; None: eps


def pgd_linf(eps: float, steps: int = 10) -> Attack:
    """PGD-L∞ from a random start with α = ε/4 (2/255 at ε = 8/255)."""
    return Attack("pgd", "linf", eps, steps, eps / 4, True)


def standard_attacks(names: list[str], eps_linf: float, eps_l2: float, steps: int = 10) -> list[Attack]:
    """FGSM (one step of ε), PGD-L∞ (`pgd_linf`) and PGD-L2 (α = 2.5·ε/steps, Madry et al.'s
    rule, so the iterate can cross the ball), both from a random start."""
    table = {"fgsm": Attack("fgsm", "linf", eps_linf, 1, eps_linf, False),
             "pgd": pgd_linf(eps_linf, steps),
             "pgd-l2": Attack("pgd-l2", "l2", eps_l2, steps, 2.5 * eps_l2 / steps, True)}  # fmt: skip
    return [table[name] for name in names]


def _l2(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)


def _project(delta: torch.Tensor, attack: Attack) -> torch.Tensor:
    if attack.norm == "linf":
        return delta.clamp(-attack.eps, attack.eps)
    return delta * (attack.eps / _l2(delta)).clamp(max=1.0)


def perturb(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: Attack,
            generator: torch.Generator | None = None) -> torch.Tensor:  # fmt: skip
    """Adversarial images for a batch (model taking [0, 1] images; eval mode to measure it,
    train mode to train on them, see adversarial.py): steepest ascent of the cross-entropy,
    projected onto the ε-ball around x and onto [0, 1]."""
    delta = torch.zeros_like(x)
    if attack.random_start:
        noise = torch.rand(x.shape, generator=generator, device="cpu").to(x) * 2 - 1
        if attack.norm == "l2":  # a random direction, a radius uniform in [0, ε]
            radius = torch.rand(len(x), generator=generator, device="cpu").to(x).view(-1, 1, 1, 1)
            noise = noise / _l2(noise) * radius
        delta = (x + noise * (attack.eps if attack.start is None else attack.start)).clamp(0, 1) - x
    for _ in range(attack.steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model(x + delta), y)
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            step = grad.sign() if attack.norm == "linf" else grad / _l2(grad)
            delta = _project(delta + attack.alpha * step, attack)
            delta = (x + delta).clamp(0, 1) - x  # still inside the ball: clamping only shrinks each coordinate
    return (x + delta).detach()


def robust_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, attack: Attack,
                    generator: torch.Generator, batch_size: int) -> tuple[int, float]:  # fmt: skip
    """Images of uint8 `images` (N, 3, H, W) still classified right under `attack`, and the
    seconds it took; `model` takes [0, 1] images (`Normalized`) and is used as it is (eval mode
    to measure it)."""
    device = next(model.parameters()).device
    correct, start = 0, time.perf_counter()
    for first in range(0, len(images), batch_size):
        x = images[first:first + batch_size].to(device).float() / 255
        y = labels[first:first + batch_size].to(device)
        adversarial = perturb(model, x, y, attack, generator)
        with torch.no_grad():
            correct += int((model(adversarial).argmax(1) == y).sum())
    return correct, time.perf_counter() - start
