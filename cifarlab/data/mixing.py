"""Mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019), per image, with soft targets.

Each position of an epoch draws a partner (another position of the same epoch), a weight
λ ~ Beta(α, α) and, for CutMix, a box of about (1 − λ) of the image, clipped at the border. A
mixed image's target is its one-hot label and its partner's, weighted by the image's own share
of the result: λ for Mixup, the share of pixels not pasted over for CutMix. With both on, each
image takes one of the two with equal odds (timm's switch, per image).

The draws depend only on (seed, epoch, position), like the loader's others, so resumed runs and
rank shards see the same mixes. The price: the partner is another position's image with that
position's own augmentation, so a batch is augmented twice, rather than mixed with a shuffled
copy of itself (which would tie the result to the batch's composition).
Beta samples come from numpy: torch's Beta sampler cannot take a seeded generator.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .augment import box_mask


def draw_mixing(n: int, mixup_alpha: float, cutmix_alpha: float, rng: np.random.Generator, image_size: int = 32):
    """Per position: the partner's position, the blend weight of the image itself outside the
    box (λ for Mixup, 1 for CutMix) and the pasted box (top, left, height, width; empty for Mixup)."""
    partner = rng.integers(0, n, n)
    cutmix = np.full(n, cutmix_alpha > 0)
    if mixup_alpha > 0 and cutmix_alpha > 0:
        cutmix = rng.random(n) < 0.5
    beta = lambda alpha: rng.beta(alpha, alpha, n) if alpha > 0 else np.ones(n)  # noqa: E731
    lam = np.where(cutmix, beta(cutmix_alpha), beta(mixup_alpha))
    side = (image_size * np.sqrt(1 - lam)).astype(np.int64) * cutmix
    centre_y, centre_x = rng.integers(0, image_size, (2, n))
    top, bottom = np.clip(centre_y - side // 2, 0, image_size), np.clip(centre_y + side // 2, 0, image_size)
    left, right = np.clip(centre_x - side // 2, 0, image_size), np.clip(centre_x + side // 2, 0, image_size)
    box = np.stack([top, left, bottom - top, right - left], axis=1)
    weight = np.where(cutmix, 1.0, lam)
    return torch.from_numpy(partner), torch.from_numpy(weight).float(), torch.from_numpy(box)


def mix(x: torch.Tensor, partner_x: torch.Tensor, labels: torch.Tensor, partner_labels: torch.Tensor,
        weight: torch.Tensor, box: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Blend each image with its partner (weight outside the box, the partner inside it) and
    return the images and soft targets (B, num_classes), each row summing to 1."""
    inside = box_mask(box, *x.shape[-2:])
    w = weight.view(-1, 1, 1, 1)
    mixed = torch.where(inside[:, None], partner_x, w * x + (1 - w) * partner_x)
    share = weight * (1 - inside.flatten(1).float().mean(1))
    targets = F.one_hot(labels, num_classes).float()
    targets = share[:, None] * targets + (1 - share)[:, None] * F.one_hot(partner_labels, num_classes).float()
    return mixed, targets
