"""Batched augmentation: every image of a batch gets its own random crop, flip, cutout and
random erasing, applied in one gather or mask on the model's device (no per-sample Python).
Policies (AutoAugment and the like) are in policies.py, Mixup and CutMix in mixing.py.

Random draws are made once per epoch for every position of the epoch (a few numbers per image)
from generators keyed by (seed, stream, epoch). So a batch's augmentation depends only on the
seed, the epoch and the batch index: a run resumed mid-epoch, or an epoch split across ranks,
sees exactly the same images.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@enum.unique
class Stream(enum.IntEnum):
    """Every stream id of the code base, one per consumer: the second part of its (seed, stream,
    ...) keys, so no two random uses share draws (turning one on does not change another's).
    A new consumer takes the next number here; `unique` refuses a repeated one. Only the id keeps
    consumers apart, not the key's length: numpy pads a key to four words with zeros, so
    (seed, 8) seeds exactly as (seed, 8, 0, 0)."""

    EPOCH = 1  # data/loader.py: the epoch's order, then its crop and flip draws
    FLIP = 2  # data/loader.py: each image's first flip (alternating flip)
    POLICY = 3  # data/loader.py: the augmentation policy's plan per image and view
    ERASE = 4  # data/loader.py: random erasing
    MIX = 5  # data/loader.py: Mixup / CutMix partners and weights
    NOISE = 6  # data/loader.py: Gaussian pixel noise (its sigmas, then each batch's noise)
    ADVERSARIAL_START = 7  # robust/adversarial.py: the random start of each crafted batch
    UNLABELLED = 8  # data/unlabelled.py: the unlabelled pool's loaders (their own seed)
    ADVERSARIAL_CHECK = 9  # robust/adversarial.py: the random starts of the epoch-end PGD check
    POLICY_FRACTION = 10  # data/loader.py: which images and views the policy leaves as they are
    IMPULSE = 11  # data/loader.py: salt-and-pepper noise (its amounts, then each batch's draws)
    JITTER = 12  # data/loader.py: brightness shifts and contrast scales


def keyed_seed(*key: int) -> int:
    """A 64-bit seed that depends on all of `key` (e.g. seed, epoch), well mixed."""
    return int(np.random.SeedSequence([int(k) for k in key]).generate_state(1, dtype=np.uint64)[0])


def keyed_generator(*key: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator whose stream depends on all of `key`; on the CPU unless `device` is given."""
    return torch.Generator(device=device).manual_seed(keyed_seed(*key))


def keyed_numpy_generator(*key: int) -> np.random.Generator:
    """The numpy counterpart of keyed_generator, for distributions torch cannot seed (Beta)."""
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in key]))


@dataclass
class AugmentParams:
    """Per-image random choices for a run of positions (tensors whose first dimension is n);
    the optional ones are None when their augmentation is off."""

    dx: torch.Tensor  # horizontal shift in pixels, in [-translate, translate]
    dy: torch.Tensor
    flip: torch.Tensor  # bool: mirror left-right
    cut_x: torch.Tensor  # cutout square centre (ignored when cutout is 0)
    cut_y: torch.Tensor
    policy: torch.Tensor | None = None  # (n, views, k) the policy's plan per image and augmented view (policies.py)
    erase: torch.Tensor | None = None  # (n, 4) erased box: top, left, height, width (height 0: none)
    partner: torch.Tensor | None = None  # Mixup/CutMix partner: another position of the epoch
    mix_weight: torch.Tensor | None = None  # blend weight of the image itself outside mix_box
    mix_box: torch.Tensor | None = None  # (n, 4) box pasted from the partner (CutMix)
    noise_sigma: torch.Tensor | None = None  # (n, views) std of the Gaussian pixel noise per image and augmented view
    impulse_amount: torch.Tensor | None = None  # (n, views) share of salt-and-pepper pixel values, likewise
    brightness: torch.Tensor | None = None  # (n, views) shift of every pixel value (of [0, 1] images)
    contrast: torch.Tensor | None = None  # (n, views) scale of the deviations from the dataset mean

    def __getitem__(self, index) -> "AugmentParams":
        return AugmentParams(*(None if t is None else t[index] for t in self.__dict__.values()))

    def to(self, device) -> "AugmentParams":
        return AugmentParams(*(None if t is None else t.to(device) for t in self.__dict__.values()))


def draw_params(
    n: int,
    translate: int,
    flip: str,
    generator: torch.Generator,
    flip_base: torch.Tensor | None = None,
    epoch: int = 0,
    image_size: int = 32,
) -> AugmentParams:
    """Draw the choices for n positions. `flip_base` (per position) serves the alternating flip:
    each image flips in its fixed random way on even epochs and the other way on odd ones,
    so over two epochs it is seen both ways (airbench's trick: less redundancy than random flips)."""
    shift = lambda: torch.randint(-translate, translate + 1, (n,), generator=generator)  # noqa: E731
    dx, dy = shift(), shift()
    if flip == "random":
        flips = torch.rand(n, generator=generator) < 0.5
    elif flip == "alternating":
        flips = flip_base ^ bool(epoch % 2)
    else:
        flips = torch.zeros(n, dtype=torch.bool)
    cut_x, cut_y = (torch.randint(0, image_size, (n,), generator=generator) for _ in range(2))
    return AugmentParams(dx, dy, flips, cut_x, cut_y)


def _source_index(size: int, shift: torch.Tensor, mirror: torch.Tensor, reflect: bool):
    """For each output pixel along one axis, the input pixel it copies and whether it is inside."""
    out = torch.arange(size, device=shift.device)
    pos = torch.where(mirror[:, None], size - 1 - out, out) + shift[:, None]
    if reflect:
        pos = pos.abs()
        pos = torch.where(pos > size - 1, 2 * (size - 1) - pos, pos)
        return pos, None
    inside = (pos >= 0) & (pos < size)
    return pos.clamp(0, size - 1), inside


def crop_flip(images: torch.Tensor, params: AugmentParams, padding_mode: str) -> torch.Tensor:
    """Translate each image by (dx, dy) (= a random crop of the padded image) and mirror it.

    Padding is 'reflect' or 'zeros' (black, as torchvision's RandomCrop on uint8).
    Returns the same dtype, in channels_last memory order (the gather produces NHWC).
    """
    b, _, h, w = images.shape
    reflect = padding_mode == "reflect"
    no_mirror = torch.zeros_like(params.flip)
    rows, rows_in = _source_index(h, params.dy, no_mirror, reflect)
    cols, cols_in = _source_index(w, params.dx, params.flip, reflect)
    batch = torch.arange(b, device=images.device)[:, None, None]
    out = images[batch, :, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    if not reflect:
        out = out * (rows_in[:, :, None] & cols_in[:, None, :])[..., None].to(out.dtype)
    return out.permute(0, 3, 1, 2)


def box_mask(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, H, W) bool, True inside each image's box (top, left, height, width), clipped at the border."""
    top, left, box_h, box_w = boxes.unbind(1)
    ys = torch.arange(height, device=boxes.device)[None, :]
    xs = torch.arange(width, device=boxes.device)[None, :]
    rows = (ys >= top[:, None]) & (ys < (top + box_h)[:, None])
    cols = (xs >= left[:, None]) & (xs < (left + box_w)[:, None])
    return rows[:, :, None] & cols[:, None, :]


def cutout(x: torch.Tensor, params: AugmentParams, size: int) -> torch.Tensor:
    """Zero a size×size square (clipped at the border) centred at (cut_x, cut_y) in each image.

    Applied after normalization, so the square holds the dataset mean (DeVries & Taylor, 2017).
    """
    side = torch.full_like(params.cut_x, size)
    return erase(x, torch.stack([params.cut_y - size // 2, params.cut_x - size // 2, side, side], 1))


def draw_erasing(n: int, probability: float, generator: torch.Generator, image_size: int = 32,
                 attempts: int = 10) -> torch.Tensor:  # fmt: skip
    """Random erasing boxes (Zhong et al. 2020, torchvision's RandomErasing defaults): with
    `probability`, a box of 2–33% of the image with aspect ratio 0.3–3.3 (log-uniform); like
    torchvision, up to `attempts` draws until one fits, else nothing is erased."""
    area = image_size**2 * torch.empty(n, attempts).uniform_(0.02, 0.33, generator=generator)
    ratio = torch.exp(torch.empty(n, attempts).uniform_(math.log(0.3), math.log(3.3), generator=generator))
    heights, widths = (area * ratio).sqrt().round().long(), (area / ratio).sqrt().round().long()
    fits = (heights < image_size) & (widths < image_size)
    first = fits.long().argmax(1, keepdim=True)  # the first attempt that fits
    erased = (torch.rand(n, generator=generator) < probability) & fits.any(1)
    height = heights.gather(1, first).squeeze(1) * erased
    width = widths.gather(1, first).squeeze(1) * erased
    top = (torch.rand(n, generator=generator) * (image_size - height + 1)).long()
    left = (torch.rand(n, generator=generator) * (image_size - width + 1)).long()
    return torch.stack([top, left, height, width], 1)


def erase(x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Zero each image's box; after normalization, as torchvision's RandomErasing(value=0)."""
    return x * ~box_mask(boxes, *x.shape[-2:])[:, None]


def add_noise(x: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor, mean: torch.Tensor,
              std: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """Gaussian noise `sigma[i]`·`noise` (σ in pixels of [0, 1] images) on normalized images,
    clipped to the pixel range as a noisy photo is: CIFAR-10-C's gaussian_noise on the fly."""
    low, high = (-mean / std).view(1, -1, 1, 1), ((1 - mean) / std).view(1, -1, 1, 1)
    return torch.clamp(x + sigma.view(-1, 1, 1, 1) * noise / std.view(1, -1, 1, 1), low, high)


def add_impulse(x: torch.Tensor, amount: torch.Tensor, draw: torch.Tensor, mean: torch.Tensor,
                std: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """Salt-and-pepper noise on normalized images: each value whose uniform `draw` falls below
    `amount[i]` becomes the pixel range's top (below half of it) or bottom, as CIFAR-10-C's
    impulse_noise (scikit-image's random_noise, mode "s&p") does per channel value."""
    low, high = (-mean / std).view(1, -1, 1, 1), ((1 - mean) / std).view(1, -1, 1, 1)
    amount = amount.view(-1, 1, 1, 1)
    return torch.where(draw < amount / 2, high, torch.where(draw < amount, low, x))


def jitter(x: torch.Tensor, params: AugmentParams, view: int, std: torch.Tensor) -> torch.Tensor:
    """Brightness and contrast jitter on normalized images, augmented view `view`'s draw per
    image (each off where `params` has none): a shift of every pixel value (of [0, 1] images),
    then the deviations from the dataset mean (the normalized zero) scaled; unclipped, as in
    the hiverge/cifar10-speedrun record. Not the
    policies' Brightness and Contrast ops (image_ops.py), which blend uint8 images with black
    or with their own grey mean at a magnitude bin: this one is continuous and costs two
    elementwise ops on the floats the batch already is."""
    if params.brightness is not None:
        x = x + params.brightness[:, view].view(-1, 1, 1, 1) / std.view(1, -1, 1, 1)
    if params.contrast is not None:
        x = x * params.contrast[:, view].view(-1, 1, 1, 1)
    return x


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 → float, (x/255 - mean) / std per channel; keeps the memory order."""
    return (images.float() - mean.view(1, -1, 1, 1) * 255) / (std.view(1, -1, 1, 1) * 255)


def shrink(x: torch.Tensor, side: int) -> torch.Tensor:
    """A normalized batch resized to side × side (bilinear with antialiasing, a linear map, so
    it commutes with normalization), in x's memory format: progressive resizing's cheap early
    epochs (train.low_res)."""
    small = F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
    return small.contiguous(memory_format=torch.channels_last if x.is_contiguous(memory_format=torch.channels_last)
                            else torch.contiguous_format)  # fmt: skip
