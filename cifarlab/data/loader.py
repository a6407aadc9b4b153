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
    AugmentParams, Stream, add_impulse, add_noise, crop_flip, cutout, draw_erasing, draw_params, erase, jitter,
    keyed_generator, keyed_numpy_generator, normalize,
)  # fmt: skip
from .datasets import ImageSet
from .mixing import draw_mixing, mix
from .policies import make_policy


class DeviceLoader:
    """Yields normalized float batches (x, y) on `device`; y holds class indices, or soft
    targets (B, classes) when Mixup or CutMix is on, or None for a set without labels. With
    `views` = k > 1, x holds the batch's images k times, (k·B, C, H, W): first clean (crop and
    flip only), then k − 1 augmented views, each with its own policy and noise draws (AugMix's
    consistency loss compares them).

    An epoch's order and augmentation depend only on (seed, epoch): `epoch(e, start_batch=k)`
    resumes exactly where an interrupted run left off. With world_size > 1 each rank takes
    its slice of every global batch, so all ranks together see the same global order for any
    world size; `batch_size` is the global batch size.

    Loaders that differ only in `redraw` yield the same images in the same order, each with
    its own augmentation draws, crop and flip included (FixMatch's weak and strong views of an
    unlabelled batch: data/unlabelled.py).
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
        views: int = 1,
        redraw: int = 0,
    ):
        """`augment` is the run's augment section, taken whole so that a new augmentation
        touches only the config and this class; None (evaluation) augments nothing."""
        if batch_size % world_size:
            raise ValueError(f"batch size {batch_size} is not divisible by the world size {world_size}")
        self.images = self.all_images = data.images.to(device)
        self.labels = self.all_labels = None if data.labels is None else data.labels.to(device)
        self.batch_size, self.shuffle, self.drop_last, self.seed = batch_size, shuffle, drop_last, seed
        self.redraw = redraw
        self.augment = augment = augment or AugmentConfig(translate=0, flip="none")
        self.policy = make_policy(augment)
        self.channels_last, self.rank, self.world_size = channels_last, rank, world_size
        self.num_classes = len(data.classes)
        self.mean = torch.tensor(mean, device=device)
        self.std = torch.tensor(std, device=device)
        n = len(self.images)
        self.flip_base = self.all_flip_base = torch.rand(n, generator=keyed_generator(*self._key(Stream.FLIP))) < 0.5
        self.mixes = augment.mixup_alpha > 0 or augment.cutmix_alpha > 0
        if self.mixes and self.labels is None:
            raise ValueError("Mixup and CutMix mix labels; this set has none")
        if views > 1 and self.mixes:
            raise ValueError("several views of a batch need the same images: Mixup and CutMix change them")
        self.views, self.augmented_views = views, max(views - 1, 1)
        self.augments = (
            augment.translate > 0 or augment.flip != "none" or augment.cutout > 0 or self.policy is not None
            or augment.random_erasing > 0 or self.mixes or augment.noise_sigma > 0 or augment.impulse_amount > 0
            or augment.brightness > 0 or augment.contrast > 0
        )  # fmt: skip

    def __len__(self) -> int:
        return self.batches(len(self.images))

    def batches(self, n: int) -> int:
        """Batches in an epoch of n images."""
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def keep(self, index: torch.Tensor | None) -> None:
        """From now on, epochs draw from these images of the set only (positions in it; None:
        all of them again), each with its own flip phase: the late epochs of train.drop_easy."""
        if index is None:
            self.images, self.labels, self.flip_base = self.all_images, self.all_labels, self.all_flip_base
            return
        self.images = self.all_images[index.to(self.all_images.device)]
        self.labels = None if self.all_labels is None else self.all_labels[index.to(self.all_labels.device)]
        self.flip_base = self.all_flip_base[index]

    def epoch_plan(self, epoch: int) -> tuple[torch.Tensor, AugmentParams | None]:
        """The epoch's sample order and per-position augmentation draws (on the CPU)."""
        n = len(self.images)
        generator = keyed_generator(self.seed, Stream.EPOCH, epoch)
        order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        if not self.augments:
            return order, None
        if self.redraw:  # the same order, other draws
            generator = keyed_generator(*self._key(Stream.EPOCH, epoch))
        size = self.images.shape[-1]
        a = self.augment
        params = draw_params(n, a.translate, a.flip, generator, self.flip_base[order], epoch, size)
        if self.policy is not None:
            plans = keyed_generator(*self._key(Stream.POLICY, epoch))
            params.policy = torch.stack([self.policy.draw(n, plans) for _ in range(self.augmented_views)], 1)
            if a.policy_fraction < 1:
                fraction = keyed_generator(*self._key(Stream.POLICY_FRACTION, epoch))
                spared = torch.rand(n, self.augmented_views, generator=fraction) >= a.policy_fraction
                flat = self.policy.passthrough(params.policy.flatten(0, 1), spared.flatten())
                params.policy = flat.view_as(params.policy)
        if a.random_erasing > 0:
            params.erase = draw_erasing(n, a.random_erasing, keyed_generator(*self._key(Stream.ERASE, epoch)), size)
        if self.mixes:
            rng = keyed_numpy_generator(*self._key(Stream.MIX, epoch))
            mixing = draw_mixing(n, a.mixup_alpha, a.cutmix_alpha, rng, size)
            params.partner, params.mix_weight, params.mix_box = mixing
        if a.noise_sigma > 0:
            sigmas = keyed_generator(*self._key(Stream.NOISE, epoch))
            params.noise_sigma = torch.rand(n, self.augmented_views, generator=sigmas) * a.noise_sigma
        if a.impulse_amount > 0:
            amounts = keyed_generator(*self._key(Stream.IMPULSE, epoch))
            params.impulse_amount = torch.rand(n, self.augmented_views, generator=amounts) * a.impulse_amount
        if a.brightness > 0 or a.contrast > 0:
            draws = keyed_generator(*self._key(Stream.JITTER, epoch))
            shift, scale = (2 * torch.rand(n, self.augmented_views, generator=draws) - 1 for _ in range(2))
            params.brightness = shift * a.brightness if a.brightness > 0 else None  # both drawn: each the same alone
            params.contrast = 1 + scale * a.contrast if a.contrast > 0 else None
        return order, params

    def _key(self, stream: int, *rest: int) -> tuple[int, ...]:
        """The key of a random stream; redraw 0's has no redraw part, so a lone loader's draws stay as they were."""
        return (self.seed, stream, *rest, *((self.redraw,) if self.redraw else ()))

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
            images = self.images[index]
            x = self._transform(images, batch_params)
            y = None if self.labels is None else self.labels[index]
            if self.mixes:
                partner = batch_params.partner
                partner_x = self._transform(self.images[order[partner]], params[partner])
                x, y = mix(x, partner_x, y, self.labels[order[partner]], batch_params.mix_weight, batch_params.mix_box,
                           self.num_classes)  # fmt: skip
            if self.views > 1:
                more = [self._transform(images, batch_params, view) for view in range(1, self.augmented_views)]
                x = torch.cat([self._transform(images, batch_params, None), x, *more])
            if batch_params is not None and (batch_params.noise_sigma is not None
                                             or batch_params.impulse_amount is not None):  # fmt: skip
                x = self._noisy(x, batch_params, epoch, b, start - b * self.batch_size)
            yield self._layout(x), y

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images as the model sees this loader's unaugmented batches (normalized, in its
        memory format): for work outside the epoch loop, such as a model's data-dependent init
        or Grad-CAM on chosen images."""
        return self._transform(images.to(self.mean.device), None)

    def _transform(self, images: torch.Tensor, params: AugmentParams | None, view: int | None = 0) -> torch.Tensor:
        """One image per row: crop and flip, the policy (on uint8) with augmented view `view`'s
        plan, normalize, brightness and contrast, cutout, erasing; the clean view (`view` None)
        is crop and flip only."""
        a = self.augment
        if params is not None and (a.translate > 0 or a.flip != "none"):
            images = crop_flip(images, params, a.padding_mode)
        if view is None or params is None:
            return self._layout(normalize(images, self.mean, self.std))
        if params.policy is not None:
            images = self.policy.apply(images, params.policy[:, view])
        x = jitter(normalize(images, self.mean, self.std), params, view, self.std)
        if a.cutout > 0:
            x = cutout(x, params, a.cutout)
        if params.erase is not None:
            x = erase(x, params.erase)
        return self._layout(x)

    def _noisy(self, x: torch.Tensor, params: AugmentParams, epoch: int, batch: int, offset: int) -> torch.Tensor:
        """x with pixel noise on its augmented views: Gaussian (σ per image and view), then salt
        and pepper (a share per image and view). Each noise is drawn on the device for the whole
        global batch, keyed by (seed, its stream, epoch, batch, view), and this rank takes its rows
        (from `offset`): the same images for any world size."""
        rows = len(x) // self.views
        count = min(self.batch_size, len(self.images) - batch * self.batch_size)
        blocks = list(x.split(rows))
        first = len(blocks) - self.augmented_views  # after the clean view, if there is one

        def draw(stream: int, view: int, sample) -> torch.Tensor:
            generator = keyed_generator(*self._key(stream, epoch, batch, view), device=x.device)
            return sample((count, *x.shape[1:]), generator=generator, device=x.device)[offset : offset + rows]

        for view in range(self.augmented_views):
            block = blocks[first + view]
            if params.noise_sigma is not None:
                block = add_noise(block, params.noise_sigma[:, view], draw(Stream.NOISE, view, torch.randn),
                                  self.mean, self.std)  # fmt: skip
            if params.impulse_amount is not None:
                block = add_impulse(block, params.impulse_amount[:, view], draw(Stream.IMPULSE, view, torch.rand),
                                    self.mean, self.std)  # fmt: skip
            blocks[first + view] = block
        return torch.cat(blocks)

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)


def batches_from(loader, step: int = 0) -> Iterator[tuple]:
    """A loader's batches from global step `step` on, epoch after epoch, without end (each
    epoch's order and draws are a function of the epoch, so any step can be the start)."""
    epoch, batch = divmod(step, len(loader))
    while True:
        yield from loader.epoch(epoch, batch)
        epoch, batch = epoch + 1, 0
