"""Deterministic, stratified carving of a labelled set (held-out splits, training subsets)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import DataConfig
from ..errors import CifarlabError
from .datasets import ImageSet, channel_stats, get_spec, load_split
from .folder import read_image_folder
from .labelled import read_labelled_indices


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
    return _pick_per_class(labels, quota, seed)


def per_class_indices(labels: torch.Tensor, per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick `per_class` indices of every class (all must have that many); return (rest, picked)."""
    return _pick_per_class(labels, torch.full_like(torch.bincount(labels), per_class), seed)


def _pick_per_class(labels: torch.Tensor, quota: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first quota[c] images of each class c in a seeded shuffle; (rest, picked), sorted."""
    n = len(labels)
    counts = torch.bincount(labels)
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
    """Train / validation / test sets, the calibration hold-out, and the normalization the
    model is trained with. Positions are in the training file's terms (`training_file`, the
    terms of data.labelled_indices)."""

    train: ImageSet
    val: ImageSet | None  # None when val_size is 0
    test: ImageSet
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    calib: ImageSet | None = None  # None when calib_size is 0
    train_positions: torch.Tensor | None = None  # of each training image in the training file
    labelled_positions: torch.Tensor | None = None  # sorted, of the images train, val and calib are carved from
    unlabelled: ImageSet | None = None  # with labels_per_class: the other training-file images, labels removed
    unlabelled_positions: torch.Tensor | None = None  # of each pool image in the training file

    @property
    def classes(self) -> list[str]:
        return self.test.classes

    def calibration_split(self) -> tuple[str, ImageSet] | None:
        """Where a temperature is fitted by default: the calibration hold-out, which nothing
        else has seen, else the validation split (Guo et al.'s choice); never the test set."""
        named = [(name, data) for name, data in (("calib", self.calib), ("val", self.val)) if data is not None]
        return named[0] if named else None


def training_file(cfg: DataConfig, download: bool = True) -> ImageSet:
    """The dataset's training images in file order, before any carving: the images that
    data.labelled_indices names by position (a folder without test/: what its test carving left)."""
    return _given(cfg, download)[0]


def _given(cfg: DataConfig, download: bool) -> tuple[ImageSet, ImageSet, ImageSet | None, tuple | None]:
    """(training file, test split, a given val split or None, the published normalization or None)."""
    if cfg.dataset.startswith("folder:"):
        given = read_image_folder(cfg.dataset.removeprefix("folder:"), cfg.image_size)
        published = None
    else:
        given = {"train": load_split(cfg.dataset, "train", cfg.data_dir, download),
                 "test": load_split(cfg.dataset, "test", cfg.data_dir, download=False)}  # fmt: skip
        spec = get_spec(cfg.dataset)
        published = spec.mean, spec.std
    full, test = given["train"], given.get("test")
    if test is None:
        rest, held_out = _held_out(full, len(full) // 10, cfg.split_seed + 2, "test")
        full, test = full.subset(rest), full.subset(held_out)
    return full, test, given.get("val"), published


def make_splits(cfg: DataConfig, download: bool = True) -> Splits:
    """Load a dataset and carve what it lacks out of its training images: the test split (an
    image folder without test/: 10%), the labelled images, the validation split (`val_size`),
    the calibration hold-out (`calib_size`), then the optional training subset.

    The labelled images are the whole training file, or those data.labelled_indices lists (an
    active-learning round's labels), or `labels_per_class` of each class (stratified, seeded;
    the other training images become the unlabelled pool, without their labels). Validation
    and calibration come out of the labelled images: a label budget is all the labels a run sees.

    Every carving uses `cfg.split_seed`, not the training seed, so every run of a comparison
    sees the same images in each split; a given test set is untouched. Normalization: the
    config's, else the dataset's published statistics, else (a folder) its training images'.
    """
    full, test, val, published = _given(cfg, download)
    positions, unlabelled, pool = torch.arange(len(full)), None, None
    if cfg.labelled_indices is not None:
        positions = read_labelled_indices(cfg.labelled_indices, len(full))
    elif cfg.labels_per_class is not None:
        pool, positions = _few_labels(full, cfg.labels_per_class, cfg.split_seed + 1)
        unlabelled = ImageSet(full.images[pool], None, full.classes)
    if len(positions) < len(full):
        full = full.subset(positions)
    labelled_positions, train = positions, full
    if val is None:
        val_size = len(full) // 10 if cfg.val_size is None else cfg.val_size
        if val_size >= len(full):
            raise CifarlabError(f"data.val_size={val_size} leaves no training images (it comes out of the "
                                f"{len(full)} labelled ones)")  # fmt: skip
        if val_size:
            rest, held_out = _held_out(full, val_size, cfg.split_seed, "validation")
            train, val, positions = full.subset(rest), full.subset(held_out), positions[rest]
    calib = None
    if cfg.calib_size and len(train) >= 10:  # at most a tenth: a recipe's hold-out must not eat a small dataset
        rest, held_out = _held_out(train, min(cfg.calib_size, len(train) // 10), cfg.split_seed + 3, "calibration")
        train, calib, positions = train.subset(rest), train.subset(held_out), positions[rest]
    if cfg.train_subset is not None:
        if cfg.train_subset > len(train):
            raise CifarlabError(f"train subset {cfg.train_subset} is larger than the {len(train)} training images")
        _, keep = stratified_indices(train.labels, cfg.train_subset, cfg.split_seed + 1)
        train, positions = train.subset(keep), positions[keep]
    mean, std = published or channel_stats(train.images)
    mean = tuple(cfg.mean) if cfg.mean is not None else mean
    std = tuple(cfg.std) if cfg.std is not None else std
    return Splits(train, val, test, mean, std, calib, positions, labelled_positions, unlabelled, pool)


def _few_labels(full: ImageSet, per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rest, picked): positions of the unlabelled pool and of `per_class` labelled images per class."""
    counts = torch.bincount(full.labels, minlength=len(full.classes))
    if counts.min() < per_class:
        fewest = int(counts.argmin())
        raise CifarlabError(
            f"data.labels_per_class={per_class}, but class '{full.classes[fewest]}' has only "
            f"{int(counts[fewest])} training images; choose at most {int(counts.min())}"
        )
    return per_class_indices(full.labels, per_class, seed)


def _held_out(data: ImageSet, size: int, seed: int, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(rest, held out) indices: a stratified split of `size` images."""
    rest, held_out = stratified_indices(data.labels, size, seed)
    if len(held_out) == 0:
        raise CifarlabError(f"{len(data)} images are too few to hold out a {name} split; add more (or a {name} folder)")
    return rest, held_out
