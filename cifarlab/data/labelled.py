"""The file of `data.labelled_indices`: which images of the training file a run may learn from.

A JSON list of positions in the dataset's training images in file order (CIFAR-10: 0..49,999
over data_batch_1..5), so a list means the same images whatever the run's validation or
calibration settings. Active learning writes one per round; anyone can write one by hand.
A few-labels run's own record, RUN/labelled.json, is read too (its "indices"), so another run
can learn from exactly the labels that one had.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import FEW_LABEL_KEYS, DataConfig
from ..errors import CifarlabError
from ..fileio import read_json, write_json


def read_labelled_indices(path: str | Path, size: int) -> torch.Tensor:
    """The positions in the file, sorted, checked against a training file of `size` images."""
    indices = _listed(path)
    outside = indices[(indices < 0) | (indices >= size)]
    if len(outside):
        raise CifarlabError(f"data.labelled_indices file '{path}': position {int(outside[0])} is outside the "
                            f"training file's 0..{size - 1}")  # fmt: skip
    unique = indices.unique()
    if len(unique) < len(indices):
        raise CifarlabError(f"data.labelled_indices file '{path}' names an image twice; list each position once")
    return unique


def _listed(path: str | Path) -> torch.Tensor:
    """The positions the file lists, in its order, unchecked against any training file."""
    values = read_json(path, "data.labelled_indices file")
    if isinstance(values, dict):  # a run's record
        values = values.get("indices")
    if not isinstance(values, list) or not values or not all(type(v) is int for v in values):
        raise CifarlabError(f"data.labelled_indices file '{path}' must be a non-empty JSON list of integers "
                            f"(positions in the training file), or a run's labelled.json")  # fmt: skip
    return torch.tensor(values, dtype=torch.long)


# what fixes a run's labelled images: a teacher of a few-label run must have learnt from exactly the same
LABEL_KEYS = ("dataset", *FEW_LABEL_KEYS, "split_seed")


def label_differences(taught: DataConfig, student: DataConfig) -> list[str]:
    """How a teacher's labelled images differ from its student's, one 'data.KEY: X there, Y here'
    each (none: the same images). A train_subset is drawn after the held-out splits, so their
    sizes count too; labels_per_class carves them out of its images, a labelled_indices file
    likewise. Two labelled_indices files are the same when they list the same positions (a run
    copied elsewhere reads its file from another path); a file both name, rewritten since the
    teacher learnt, goes unseen."""
    keys = LABEL_KEYS + (("val_size", "calib_size") if student.train_subset is not None else ())
    return [f"data.{key}: {getattr(taught, key)} there, {getattr(student, key)} here" for key in keys
            if not _same(key, getattr(taught, key), getattr(student, key))]  # fmt: skip


def _same(key: str, there, here) -> bool:
    if key != "labelled_indices" or None in (there, here) or there == here:
        return there == here
    try:
        return torch.equal(_listed(there).unique(), _listed(here).unique())
    except CifarlabError:  # unreadable: nothing shows they are the same
        return False


def write_labelled_indices(path: str | Path, indices: torch.Tensor) -> None:
    write_json(path, sorted(int(i) for i in indices))
