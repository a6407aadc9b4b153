"""The device-resident batch loader used for training and evaluation.

Hand-written rather than torchvision's DataLoader: CIFAR fits in memory (150 MB as uint8, on
the GPU too), and a DataLoader spends its time in per-sample Python and PIL transforms, then
copies every batch to the device. Here the whole set lives on the device once, an epoch is
a permutation plus a table of augmentation draws, and a batch is one gather.
(benchmarks/loader_throughput.py measures the difference.)
"""

from __future__ import annotations

from typing import Iterator

import torch

from ..config import AugmentConfig
from .augment import (
    AugmentParams, crop_flip, cutout, draw_erasing, draw_params, erase, keyed_generator, keyed_numpy_generator, normalize,
)  # fmt: skip
from .datasets import ImageSet
from .mixing import draw_mixing, mix
from .policies import make_policy

# Stream ids mixed into the (seed, ...) keys, so each random use has its own stream (turning
# one augmentation on does not change the draws of another).
_EPOCH_STREAM, _FLIP_STREAM, _POLICY_STREAM, _ERASE_STREAM, _MIX_STREAM = 1, 2, 3, 4, 5


class DeviceLoader:
    """Yields normalized float batches (x, y) on `device`; y holds class indices, or soft
    targets (B, classes) when Mixup or CutMix is on, or None for a set without labels.

    An epoch's order and augmentation depend only on (seed, epoch): `epoch(e, start_batch=k)`
    resumes exactly where an interrupted run left off. With world_size > 1 each rank takes
    its slice of every global batch, so all ranks together see the same global order for any
    world size; `batch_size` is the global batch size.

    Loaders that differ only in `view` yield the same images in the same order, each with its
    own augmentation draws (FixMatch's weak and strong views of an unlabelled batch).
    """

    def __init__(
        self,
        data: ImageSet,
        batch_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        augment: AugmentConfig | None = None,
        *,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        device: torch.device | str = "cpu",
        channels_last: bool = True,
        rank: int = 0,
        world_size: int = 1,
        view: int = 0,
    ):
        """`augment` is the run's augment section, taken whole so that a new augmentation
        touches only the config and this class; None (evaluation) augments nothing."""
        if batch_size % world_size:
            raise ValueError(f"batch size {batch_size} is not divisible by the world size {world_size}")
        self.images = data.images.to(device)
        self.labels = None if data.labels is None else data.labels.to(device)
        self.batch_size, self.shuffle, self.drop_last, self.seed, self.view = batch_size, shuffle, drop_last, seed, view
        self.augment = augment = augment or AugmentConfig(translate=0, flip="none")
        self.policy = make_policy(augment.policy, augment.randaugment_ops, augment.randaugment_magnitude)
        self.channels_last, self.rank, self.world_size = channels_last, rank, world_size
        self.num_classes = len(data.classes)
        self.mean = torch.tensor(mean, device=device)
        self.std = torch.tensor(std, device=device)
        n = len(self.images)
        self.flip_base = torch.rand(n, generator=keyed_generator(*self._key(_FLIP_STREAM))) < 0.5
        self.mixes = augment.mixup_alpha > 0 or augment.cutmix_alpha > 0
        if self.mixes and self.labels is None:
            raise ValueError("Mixup and CutMix mix labels; this set has none")
        self.augments = (
            augment.translate > 0 or augment.flip != "none" or augment.cutout > 0 or self.policy is not None
            or augment.random_erasing > 0 or self.mixes
        )  # fmt: skip

    def __len__(self) -> int:
        n = len(self.images)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def epoch_plan(self, epoch: int) -> tuple[torch.Tensor, AugmentParams | None]:
        """The epoch's sample order and per-position augmentation draws (on the CPU)."""
        n = len(self.images)
        generator = keyed_generator(self.seed, _EPOCH_STREAM, epoch)
        order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        if not self.augments:
            return order, None
        if self.view:  # the same order, other draws
            generator = keyed_generator(*self._key(_EPOCH_STREAM, epoch))
        size = self.images.shape[-1]
        a = self.augment
        params = draw_params(n, a.translate, a.flip, generator, self.flip_base[order], epoch, size)
        if self.policy is not None:
            params.policy = self.policy.draw(n, keyed_generator(*self._key(_POLICY_STREAM, epoch)))
        if a.random_erasing > 0:
            params.erase = draw_erasing(n, a.random_erasing, keyed_generator(*self._key(_ERASE_STREAM, epoch)), size)
        if self.mixes:
            rng = keyed_numpy_generator(*self._key(_MIX_STREAM, epoch))
            mixing = draw_mixing(n, a.mixup_alpha, a.cutmix_alpha, rng, size)
            params.partner, params.mix_weight, params.mix_box = mixing
        return order, params

    def _key(self, stream: int, *rest: int) -> tuple[int, ...]:
        """The key of a random stream; view 0's has no view part, so a lone loader's draws stay as they were."""
        return (self.seed, stream, *rest, *((self.view,) if self.view else ()))

    def epoch(self, epoch: int = 0, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        order, params = self.epoch_plan(epoch)
        device = self.images.device
        order = order.to(device)
        params = params.to(device) if params is not None else None
        shard = self.batch_size // self.world_size
        for b in range(start_batch, len(self)):
            start = b * self.batch_size + self.rank * shard
            stop = min(start + shard, (b + 1) * self.batch_size, len(order))
            index = order[start:stop]
            batch_params = params[start:stop] if params is not None else None
            x = self._transform(self.images[index], batch_params)
            y = None if self.labels is None else self.labels[index]
            if self.mixes:
                partner = batch_params.partner
                partner_x = self._transform(self.images[order[partner]], params[partner])
                x, y = mix(x, partner_x, y, self.labels[order[partner]], batch_params.mix_weight, batch_params.mix_box,
                           self.num_classes)  # fmt: skip
            yield self._layout(x), y

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images as the model sees this loader's unaugmented batches (normalized, in its
        memory format): for work outside the epoch loop, such as a model's data-dependent init
        or Grad-CAM on chosen images."""
        return self._transform(images.to(self.mean.device), None)

    def _transform(self, images: torch.Tensor, params: AugmentParams | None) -> torch.Tensor:
        """One image per row: crop and flip, the policy (on uint8), normalize, cutout, erasing."""
        a = self.augment
        if params is not None and (a.translate > 0 or a.flip != "none"):
            images = crop_flip(images, params, a.padding_mode)
        if params is not None and params.policy is not None:
            images = self.policy.apply(images, params.policy)
        x = normalize(images, self.mean, self.std)
        if params is not None and a.cutout > 0:
            x = cutout(x, params, a.cutout)
        if params is not None and params.erase is not None:
            x = erase(x, params.erase)
        return self._layout(x)

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
