"""Deterministic, stratified carving of a labelled set (validation split, training subsets)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import DataConfig
from ..errors import CifarlabError
from .datasets import ImageSet, get_spec, load_split


def stratified_indices(labels: torch.Tensor, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick `size` indices with each class in proportion to its frequency; return (rest, picked).

    Quotas use the largest-remainder rule, so a balanced set gets exactly equal counts.
    The choice depends only on `labels`, `size` and `seed`; both outputs are sorted.
    """
    n = len(labels)
    if not 0 <= size <= n:
        raise CifarlabError(f"cannot take {size} images from a set of {n}")
    counts = torch.bincount(labels)
    exact = counts.double() * size / n
    quota = exact.floor().long()
    shortfall = size - int(quota.sum())
    if shortfall:
        remainder_order = torch.argsort(exact - quota, descending=True, stable=True)
        quota[remainder_order[:shortfall]] += 1
    generator = torch.Generator().manual_seed(seed)
    shuffled = torch.randperm(n, generator=generator)
    by_class = shuffled[torch.argsort(labels[shuffled], stable=True)]  # classes in order, random within
    starts = torch.cumsum(counts, 0) - counts
    rank_in_class = torch.arange(n) - starts[labels[by_class]]
    picked_mask = torch.zeros(n, dtype=torch.bool)
    picked_mask[by_class[rank_in_class < quota[labels[by_class]]]] = True
    return picked_mask.logical_not().nonzero().flatten(), picked_mask.nonzero().flatten()


@dataclass
class Splits:
    """Train / validation / test sets and the normalization the model is trained with."""

    train: ImageSet
    val: ImageSet | None  # None when val_size is 0
    test: ImageSet
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def classes(self) -> list[str]:
        return self.test.classes


def make_splits(cfg: DataConfig, download: bool = True) -> Splits:
    """Load a dataset and carve the validation split (and optional training subset) out of train.

    Both carvings use `cfg.split_seed`, not the training seed, so every run of a comparison
    sees the same validation images; the test set is untouched.
    """
    spec = get_spec(cfg.dataset)
    full = load_split(cfg.dataset, "train", cfg.data_dir, download)
    test = load_split(cfg.dataset, "test", cfg.data_dir, download=False)
    val_size = len(full) // 10 if cfg.val_size is None else cfg.val_size
    if val_size >= len(full):
        raise CifarlabError(f"data.val_size={val_size} leaves no training images (the train split has {len(full)})")
    rest, val_index = stratified_indices(full.labels, val_size, cfg.split_seed)
    train = full.subset(rest)
    if cfg.train_subset is not None:
        if cfg.train_subset > len(train):
            raise CifarlabError(f"train subset {cfg.train_subset} is larger than the {len(train)} training images")
        _, keep = stratified_indices(train.labels, cfg.train_subset, cfg.split_seed + 1)
        train = train.subset(keep)
    mean = tuple(cfg.mean) if cfg.mean is not None else spec.mean
    std = tuple(cfg.std) if cfg.std is not None else spec.std
    return Splits(train, full.subset(val_index) if val_size else None, test, mean, std)
