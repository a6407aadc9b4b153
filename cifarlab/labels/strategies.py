"""Which unlabelled images to label next: the acquisition functions of pool-based active
learning, on the tensors one batched inference pass over the pool gives (labels/active.py).

- random: the baseline every strategy must beat.
- entropy: the images whose predicted distribution is the most spread out (Shannon entropy).
- margin: the smallest gap between the two most probable classes (Scheffer et al. 2001),
  the least sure choice between the model's two best guesses.
- coreset: k-center greedy on penultimate features (Sener & Savarese, ICLR 2018): each pick
  is the pool image farthest from every labelled or already picked image, so the labelled
  set covers the feature space. Distances are computed in blocks of pool rows and updated
  with one vectorized pass per pick: K passes, no per-image Python loop.
"""

from __future__ import annotations

import typing

import torch

from ..config import ActiveStrategy
from ..errors import CifarlabError

STRATEGIES = typing.get_args(ActiveStrategy)
DISTANCE_BLOCK = 4096  # pool rows per torch.cdist call: bounds memory at block × labelled floats


def entropy(probabilities: torch.Tensor) -> torch.Tensor:
    return -(probabilities * probabilities.clamp_min(1e-12).log()).sum(1)


def margin(probabilities: torch.Tensor) -> torch.Tensor:
    top2 = probabilities.topk(2, dim=1).values
    return top2[:, 0] - top2[:, 1]


def k_center_greedy(pool: torch.Tensor, labelled: torch.Tensor, k: int) -> torch.Tensor:
    """`k` distinct rows of `pool` (features, one row per image), each the farthest from its
    nearest centre (the `labelled` rows and the picks so far), in the order picked."""
    nearest = torch.full((len(pool),), float("inf"), dtype=pool.dtype)
    for first in range(0, len(pool), DISTANCE_BLOCK):
        block = pool[first:first + DISTANCE_BLOCK]
        if len(labelled):
            nearest[first:first + DISTANCE_BLOCK] = torch.cdist(block, labelled).amin(1)
    picks = torch.empty(k, dtype=torch.long)
    for i in range(k):
        pick = int(nearest.argmax())
        picks[i] = pick
        nearest = torch.minimum(nearest, (pool - pool[pick]).square().sum(1).sqrt())
        nearest[picks[: i + 1]] = -1.0  # never picked twice, even among duplicates at distance 0
    return picks


def select(strategy: str, k: int, pool_size: int, probabilities: torch.Tensor | None = None,
           pool_features: torch.Tensor | None = None, labelled_features: torch.Tensor | None = None,
           generator: torch.Generator | None = None) -> torch.Tensor:  # fmt: skip
    """Row indices of the `k` pool images `strategy` labels next, all distinct. random needs
    `generator`; entropy and margin the pool's `probabilities`; coreset both feature sets."""
    if strategy not in STRATEGIES:
        raise CifarlabError(f"unknown strategy '{strategy}'; choose one of: {', '.join(STRATEGIES)}")
    if not 1 <= k <= pool_size:
        raise CifarlabError(f"cannot pick {k} images from a pool of {pool_size}")
    if strategy == "random":
        return torch.randperm(pool_size, generator=generator)[:k]
    if strategy == "entropy":
        return entropy(probabilities).topk(k).indices
    if strategy == "margin":
        return (-margin(probabilities)).topk(k).indices
    return k_center_greedy(pool_features, labelled_features, k)
