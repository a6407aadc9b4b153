"""Which given labels a model doubts: confident learning (Northcutt, Jiang & Chuang, JAIR 2021)
through cleanlab, on out-of-sample predicted probabilities.

Confident learning estimates, per class pair, how many images labelled i truly belong to j
(from each class's average self-confidence as its threshold), then flags, per pair, that many
images whose probability of the other class most exceeds that of their given label (cleanlab's
`prune_by_noise_rate`). The flagged images
are ranked by their label quality score: the probability the model gives the given label.

The probabilities must come from a model that never trained on the image, or it will have
learnt the wrong label: a run's test images are out-of-sample already; its training images
get out-of-fold probabilities from K models, each trained on the other K−1 folds.
"""

from __future__ import annotations

import csv
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..config import Config
from ..data import ImageSet, training_file, write_labelled_indices
from ..engine.checkpoint import Checkpoint, load_checkpoint
from ..engine.inference import checkpoint_loader, class_probabilities
from ..engine.runtime import autocast, select_device
from ..engine.trainer import Run
from ..errors import CifarlabError, import_extra
from ..fileio import atomic_path


@dataclass
class LabelIssues:
    """The flagged images, most doubted first."""

    index: torch.Tensor  # position of each in its split's file (CIFAR-10 test: 0..9,999 in test_batch order)
    given: torch.Tensor  # the label the dataset gives it
    suspected: torch.Tensor  # the class the model finds most probable
    quality: torch.Tensor  # label quality: the model's probability of the given label (0: surely wrong)
    images: torch.Tensor  # uint8 (N, 3, H, W)
    classes: list[str]
    audited: int  # how many images were scored


def find_issues(labels: torch.Tensor, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows flagged by confident learning, most doubted first; every row's label quality)."""
    cleanlab_filter = import_extra("cleanlab.filter", "labels")
    cleanlab_rank = import_extra("cleanlab.rank", "labels")
    given, p = labels.numpy(), probs.double().numpy()
    p = p / p.sum(1, keepdims=True)  # cleanlab checks that rows sum to 1 to within float32
    ranked = cleanlab_filter.find_label_issues(given, p, filter_by="prune_by_noise_rate",
                                               return_indices_ranked_by="self_confidence")  # fmt: skip
    quality = cleanlab_rank.get_label_quality_scores(given, p, method="self_confidence")
    return torch.from_numpy(np.asarray(ranked, dtype=np.int64)), torch.from_numpy(quality)


def issues(data: ImageSet, positions: torch.Tensor, probs: torch.Tensor) -> LabelIssues:
    flagged, quality = find_issues(data.labels, probs)
    return LabelIssues(positions[flagged], data.labels[flagged], probs[flagged].argmax(1), quality[flagged],
                       data.images[flagged], data.classes, len(data))  # fmt: skip


def checkpoint_probabilities(checkpoint: Checkpoint, config: Config, data: ImageSet, device: torch.device) -> torch.Tensor:
    """What the checkpoint's users see for `data`: its run's test-time augmentation, and its
    fitted temperature when it has one (float64)."""
    loader = checkpoint_loader(checkpoint, config, data, device)
    return class_probabilities(checkpoint, loader, tta=config.train.tta, autocast=autocast(device, config.train.precision))


def stratified_folds(labels: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """The fold (0..k-1) of every image: shuffled, then dealt out class by class, so each fold
    holds every class in proportion."""
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    order = order[torch.argsort(labels[order], stable=True)]
    fold = torch.empty(len(labels), dtype=torch.long)
    fold[order] = torch.arange(len(labels)) % k
    return fold


def out_of_fold_probabilities(config: Config, positions: torch.Tensor, folds: int, folder: Path,
                              train: Callable[[Config], Run]) -> torch.Tensor:  # fmt: skip
    """Probabilities for the training-file images at `positions`, each from the one of `folds`
    models (runs in folder/fold-NN, trained as `config` says on the other folds' images via
    data.labelled_indices) that did not see it."""
    images = training_file(config.data)
    data = images.subset(positions)
    fold = stratified_folds(data.labels, folds, config.train.seed)
    out = torch.empty(len(data), len(data.classes), dtype=torch.float64)
    for f in range(folds):
        held_out = fold == f
        labelled_file = folder / f"fold-{f + 1:02d}-train.json"
        write_labelled_indices(labelled_file, positions[~held_out])
        fold_config = dataclasses.replace(
            config, data=dataclasses.replace(config.data, labelled_indices=str(labelled_file.resolve())),
            train=dataclasses.replace(config.train, out=str(folder / f"fold-{f + 1:02d}")),
        )  # fmt: skip
        run = train(fold_config)
        device = select_device(fold_config.train.device)
        out[held_out] = checkpoint_probabilities(load_checkpoint(run.dir, device), fold_config,
                                                 data.subset(held_out.nonzero().flatten()), device)  # fmt: skip
    return out


def write_csv(path: Path, found: LabelIssues) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["rank", "index", "given", "suspected", "label_quality"])
        for rank, (i, g, s, q) in enumerate(zip(found.index.tolist(), found.given.tolist(), found.suspected.tolist(),
                                                found.quality.tolist()), 1):  # fmt: skip
            writer.writerow([rank, i, found.classes[g], found.classes[s], f"{q:.6f}"])


def check_folds(folds: int, images: int) -> None:
    if not 2 <= folds <= images:
        raise CifarlabError(f"--folds={folds} is out of range; it must be between 2 and the {images} training images")


def require_cleanlab() -> None:
    """Fail before any training when the optional package is missing."""
    import_extra("cleanlab.filter", "labels")
