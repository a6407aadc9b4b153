"""Batched augmentation: every image of a batch gets its own random crop, flip and cutout,
applied in one gather on the model's device (no per-sample Python).

Random draws are made once per epoch for every position of the epoch (a few ints per image)
from a generator keyed by (seed, epoch). So a batch's augmentation depends only on the seed,
the epoch and the batch index: a run resumed mid-epoch, or an epoch split across ranks,
sees exactly the same images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def keyed_generator(*key: int) -> torch.Generator:
    """A CPU generator whose stream depends on all of `key` (e.g. seed, epoch), well mixed."""
    seed = int(np.random.SeedSequence([int(k) for k in key]).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator().manual_seed(seed)


@dataclass
class AugmentParams:
    """Per-image random choices for a run of positions (all int64/bool tensors of length n)."""

    dx: torch.Tensor  # horizontal shift in pixels, in [-translate, translate]
    dy: torch.Tensor
    flip: torch.Tensor  # bool: mirror left-right
    cut_x: torch.Tensor  # cutout square centre (ignored when cutout is 0)
    cut_y: torch.Tensor

    def __getitem__(self, index) -> "AugmentParams":
        return AugmentParams(*(t[index] for t in self.__dict__.values()))

    def to(self, device) -> "AugmentParams":
        return AugmentParams(*(t.to(device) for t in self.__dict__.values()))


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


def cutout(x: torch.Tensor, params: AugmentParams, size: int) -> torch.Tensor:
    """Zero a size×size square (clipped at the border) centred at (cut_x, cut_y) in each image.

    Applied after normalization, so the square holds the dataset mean (DeVries & Taylor, 2017).
    """
    h, w = x.shape[-2:]
    top = params.cut_y - size // 2
    left = params.cut_x - size // 2
    ys = torch.arange(h, device=x.device)[None, :]
    xs = torch.arange(w, device=x.device)[None, :]
    in_rows = (ys >= top[:, None]) & (ys < top[:, None] + size)
    in_cols = (xs >= left[:, None]) & (xs < left[:, None] + size)
    keep = ~(in_rows[:, :, None] & in_cols[:, None, :])
    return x * keep[:, None].to(x.dtype)


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 → float, (x/255 - mean) / std per channel; keeps the memory order."""
    return (images.float() - mean.view(1, -1, 1, 1) * 255) / (std.view(1, -1, 1, 1) * 255)
