"""`cifarlab data show`: look at a dataset before training on it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..data import load_split
from ..data.statistics import SplitStatistics, split_statistics
from ..errors import CifarlabError
from . import plots


@dataclass
class DatasetOverview:
    path: Path  # the PNG written
    classes: list[str]
    statistics: list[SplitStatistics]  # train, test


def show_dataset(name: str = "cifar10", data_dir: str | Path | None = None, out: str | Path | None = None
                 ) -> DatasetOverview:  # fmt: skip
    """Write a PNG of sample images per class beside the counts and per-channel statistics
    (default file: <dataset>_overview.png in the current folder)."""
    path = Path(out or f"{name}_overview.png")
    if path.suffix.lower() != ".png":
        raise CifarlabError(f"--out '{path}' must end in .png")
    train = load_split(name, "train", data_dir, download=False)
    test = load_split(name, "test", data_dir, download=False)
    statistics = [split_statistics(train, "train"), split_statistics(test, "test")]
    k = len(train.classes)
    per_class = min([10 if k <= 20 else 8, *statistics[0].class_counts])
    first = [(train.labels == c).nonzero().flatten()[:per_class] for c in range(k)]  # fixed: file order
    samples = train.images[torch.stack(first)]
    plots.save_png(plots.dataset_overview(samples, train.classes, statistics), path)
    return DatasetOverview(path, train.classes, statistics)
