"""Augmentation policies with their own random draw for every image: AutoAugment (CIFAR-10
policy, Cubuk et al. 2019), RandAugment (Cubuk et al. 2020), TrivialAugmentWide (Müller & Hutter
2021) and AugMix (Hendrycks et al. 2020).

torchvision's policy transforms draw once per call, so applied to a batch every image gets the
same ops and magnitudes. Here a policy `draw`s a plan for every position of an epoch at once (a
few numbers per image, from the loader's generator keyed by seed and epoch, like the crops),
and `apply` runs a batch's rows of the plan with image_ops, batched. The op lists, policy table
and magnitude ranges are read from torchvision's policy classes, so they stay torchvision's.

Cost (benchmarks/augment_throughput.py): no op needs a per-image fallback; every policy runs as
a few dozen batched tensor calls per batch.
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision import transforms

from ..config import AugmentConfig
from .image_ops import OPS, apply_ops


def _space(space: dict[str, tuple[torch.Tensor, bool]], bins: int):
    """torchvision's {op name: (magnitudes per bin, signed)} as tensors: op ids into OPS,
    magnitudes (ops, bins) (0 for ops without one) and whether each op's sign is random."""
    ops = torch.tensor([OPS.index(name) for name in space])
    magnitudes = torch.stack([m.float() if m.ndim else torch.zeros(bins) for m, _ in space.values()])
    signed = torch.tensor([signed for _, signed in space.values()])
    return ops, magnitudes, signed


def _random_sign(magnitude: torch.Tensor, signed: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    negative = torch.rand(magnitude.shape, generator=generator) < 0.5
    return torch.where(signed & negative, -magnitude, magnitude)


def _plan(op: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """(n, steps) ops and magnitudes → (n, 2·steps) floats: op, magnitude, op, magnitude, …"""
    return torch.stack([op.float(), magnitude], dim=-1).flatten(1)


class Policy:
    """A policy chains `steps` ops per image: plan row = op, magnitude per step (op −1: none)."""

    interpolation = "nearest"  # geometric ops: torchvision's default for these policies

    def draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def passthrough(self, plan: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """`plan` with the rows where `rows` is True changed to leave their images as they are."""
        plan = plan.clone()
        plan[rows, 0::2] = -1
        return plan

    def apply(self, images: torch.Tensor, plan: torch.Tensor) -> torch.Tensor:
        for step in range(plan.shape[1] // 2):
            images = apply_ops(images, plan[:, 2 * step].long(), plan[:, 2 * step + 1], self.interpolation)
        return images


class AutoAugment(Policy):
    """The CIFAR-10 policy: one of 25 sub-policies per image, each two ops with fixed
    magnitudes (random sign), each applied with its own probability."""

    def __init__(self, image_size: int = 32):
        reference = transforms.AutoAugment(transforms.AutoAugmentPolicy.CIFAR10)
        space = reference._augmentation_space(10, (image_size, image_size))
        steps = [step for sub_policy in reference.policies for step in sub_policy]
        self.op = torch.tensor([OPS.index(name) for name, _, _ in steps]).view(-1, 2)
        self.probability = torch.tensor([p for _, p, _ in steps]).view(-1, 2)
        magnitudes = [0.0 if level is None else float(space[name][0][level]) for name, _, level in steps]
        self.magnitude = torch.tensor(magnitudes).view(-1, 2)
        self.signed = torch.tensor([space[name][1] for name, _, _ in steps]).view(-1, 2)

    def draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        sub_policy = torch.randint(len(self.op), (n,), generator=generator)
        applied = torch.rand(n, 2, generator=generator) <= self.probability[sub_policy]
        magnitude = _random_sign(self.magnitude[sub_policy], self.signed[sub_policy], generator)
        return _plan(torch.where(applied, self.op[sub_policy], -1), magnitude)


class RandAugment(Policy):
    """`num_ops` ops per image, each uniform over 14 (identity included), all at magnitude bin
    `magnitude` of 31 (random sign)."""

    def __init__(self, num_ops: int = 2, magnitude: int = 9, image_size: int = 32):
        space = transforms.RandAugment()._augmentation_space(31, (image_size, image_size))
        self.ops, magnitudes, self.signed = _space(space, 31)
        self.magnitudes, self.num_ops = magnitudes[:, magnitude], num_ops

    def draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        which = torch.randint(len(self.ops), (n, self.num_ops), generator=generator)
        return _plan(self.ops[which], _random_sign(self.magnitudes[which], self.signed[which], generator))


class TrivialAugmentWide(Policy):
    """One op per image, uniform over 14, at a uniform magnitude bin of 31 (the wide ranges)."""

    def __init__(self):
        self.ops, self.magnitudes, self.signed = _space(transforms.TrivialAugmentWide()._augmentation_space(31), 31)

    def draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        which = torch.randint(len(self.ops), (n, 1), generator=generator)
        level = torch.randint(self.magnitudes.shape[1], (n, 1), generator=generator)
        return _plan(self.ops[which], _random_sign(self.magnitudes[which, level], self.signed[which], generator))


class AugMix(Policy):
    """`width` chains of 1 to `depth` ops each (magnitudes from the lowest `severity` of 10
    bins) per image, averaged with Dirichlet(α) weights, then mixed with the original image by
    a Beta(α, α) weight; the defaults (3, 3, 3, α = 1) are the paper's. The Dirichlet and Beta
    weights come from numpy (torch's gamma sampler takes no generator), seeded from the
    policy's torch generator. As in the paper, the ops leave out brightness, colour, contrast
    and sharpness, which overlap with the CIFAR-10-C corruptions used to measure robustness.
    The Jensen-Shannon consistency loss over two such views is robust/consistency.py's."""

    interpolation = "bilinear"  # torchvision's AugMix default

    def __init__(self, width: int = 3, depth: int = 3, severity: int = 3, alpha: float = 1.0, image_size: int = 32):
        space = transforms.AugMix(all_ops=False)._augmentation_space(10, (image_size, image_size))
        self.ops, magnitudes, self.signed = _space(space, 10)
        self.magnitudes = magnitudes[:, :severity]
        self.chains, self.depth, self.severity, self.alpha = width, depth, severity, alpha

    def draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        rng = np.random.default_rng(int(torch.randint(2**62, (), generator=generator)))
        original = torch.from_numpy(rng.beta(self.alpha, self.alpha, (n, 1))).float()
        weights = torch.from_numpy(rng.dirichlet([self.alpha] * self.chains, n)).float() * (1 - original)
        shape = (n, self.chains, self.depth)
        which = torch.randint(len(self.ops), shape, generator=generator)
        level = torch.randint(self.severity, shape, generator=generator)
        depth = torch.randint(1, self.depth + 1, (n, self.chains, 1), generator=generator)
        op = torch.where(torch.arange(self.depth) < depth, self.ops[which], -1)
        magnitude = _random_sign(self.magnitudes[which, level], self.signed[which], generator)
        return torch.cat([original, weights, _plan(op.flatten(1), magnitude.flatten(1))], 1)

    def passthrough(self, plan: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """All weight on the original image, and no ops to run in the chains."""
        plan = plan.clone()
        plan[rows, : 1 + self.chains] = torch.tensor([1.0] + [0.0] * self.chains)
        plan[rows, 1 + self.chains :: 2] = -1
        return plan

    def apply(self, images: torch.Tensor, plan: torch.Tensor) -> torch.Tensor:
        weights = plan[:, : 1 + self.chains, None, None, None]
        chain_plans = plan[:, 1 + self.chains :].chunk(self.chains, dim=1)
        mixed = weights[:, 0] * images
        for chain, chain_plan in enumerate(chain_plans):
            mixed += weights[:, 1 + chain] * super().apply(images, chain_plan)
        return mixed.to(torch.uint8)


def make_policy(augment: AugmentConfig) -> Policy | None:
    """The policy `augment.policy` names, with its settings from `augment`; None for "none"."""
    a = augment
    builders = {
        "none": lambda: None,
        "autoaugment": AutoAugment,
        "randaugment": lambda: RandAugment(a.randaugment_ops, a.randaugment_magnitude),
        "trivialaugment": TrivialAugmentWide,
        "augmix": lambda: AugMix(a.augmix_width, a.augmix_depth, a.augmix_severity, a.augmix_alpha),
    }
    return builders[a.policy]()
