"""Training batches of a semi-supervised run: each step, a labelled batch and μ times as many
unlabelled images in one or two augmented views, each made on the device like any batch.

An epoch is one pass over the unlabelled pool, the set the run learns most of its images
from; the labelled set is cycled as often as that takes, its place a function of the step.
So a step's batches depend only on (seed, epoch, batch), as DeviceLoader's do: a run resumed
mid-epoch continues both streams exactly from the position the trainer saves, and under
torchrun every rank takes its slice of both global batches.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import torch

from ..config import AugmentConfig, SemiConfig
from .augment import Stream, keyed_seed
from .datasets import ImageSet
from .loader import DeviceLoader, batches_from


def unlabelled_views(augment: AugmentConfig, semi: SemiConfig) -> list[AugmentConfig]:
    """The views of an unlabelled image: the weak one (the run's flip and translate only) that
    gives the pseudo-label, and for fixmatch the strong one (weak, then RandAugment and Cutout)
    that learns it. `pseudo` learns on the weak view itself."""
    weak = AugmentConfig(translate=augment.translate, padding_mode=augment.padding_mode, flip=augment.flip)
    if semi.method == "pseudo":
        return [weak]
    strong = dataclasses.replace(weak, policy="randaugment", randaugment_ops=semi.strong_ops,
                                 randaugment_magnitude=semi.strong_magnitude, cutout=semi.strong_cutout)  # fmt: skip
    return [weak, strong]


class SemiLoader:
    """Yields (x, y, views): the labelled loader's batch and the unlabelled batch in each view
    (a tuple of image tensors; the pool has no labels to yield)."""

    def __init__(self, labelled: DeviceLoader, pool: ImageSet, semi: SemiConfig):
        self.labelled = labelled
        self.mean, self.std = labelled.mean, labelled.std
        pool = ImageSet(pool.images.to(labelled.images.device), None, pool.classes)  # one copy for all views
        self.views = [
            DeviceLoader(pool, labelled.batch_size * semi.unlabelled_ratio, labelled.mean.tolist(), labelled.std.tolist(),
                         augment, shuffle=True, drop_last=True, seed=keyed_seed(labelled.seed, Stream.UNLABELLED),
                         device=labelled.images.device, channels_last=labelled.channels_last, rank=labelled.rank,
                         world_size=labelled.world_size, redraw=view)
            for view, augment in enumerate(unlabelled_views(labelled.augment, semi))
        ]  # fmt: skip

    def __len__(self) -> int:
        return len(self.views[0])

    def epoch(self, epoch: int = 0, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor, tuple]]:
        streams = [view.epoch(epoch, start_batch) for view in self.views]
        labelled = batches_from(self.labelled, epoch * len(self) + start_batch)
        for _ in range(start_batch, len(self)):
            x, y = next(labelled)
            yield x, y, tuple(next(stream)[0] for stream in streams)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        return self.labelled.prepare(images)
