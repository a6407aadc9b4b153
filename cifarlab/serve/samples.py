"""Test images to pick on the page, taken from the run's own test split when the server starts
(nothing is shipped with the code): the first image of each class, as lossless PNGs, so a
picked image reaches the model exactly as it is in the test set."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from ..data import make_splits
from ..engine.checkpoint import Checkpoint
from ..errors import CifarlabError
from ..viz.analysis import one_per_class
from .images import png_bytes

COUNT = 10  # one per class on CIFAR-10; spread over the classes on CIFAR-100


@dataclass
class Sample:
    label: str  # its true class
    png: bytes


def pick_samples(checkpoint: Checkpoint, data_dir: str | None = None) -> tuple[list[Sample], str | None]:
    """The samples, or none and why (the run's dataset is not on this machine, say): the page
    works without them."""
    try:
        test = make_splits(checkpoint.config(data_dir).data).test
    except CifarlabError as e:
        return [], str(e)
    index = one_per_class(test.labels, COUNT).tolist()
    return [Sample(test.classes[int(test.labels[i])], png_bytes(Image.fromarray(test.images[i].permute(1, 2, 0).numpy())))
            for i in index], None  # fmt: skip
