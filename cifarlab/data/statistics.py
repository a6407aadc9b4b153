"""What a split holds: image count, images per class, per-channel mean and std (0..1 scale)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .datasets import ImageSet


@dataclass
class SplitStatistics:
    name: str
    images: int
    shape: tuple[int, ...]  # of one image
    class_counts: list[int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]  # sample standard deviation over all pixels of the channel

    def summary(self, classes: list[str]) -> str:
        """One line, as `cifarlab data info` prints it."""
        mean = ", ".join(f"{v:.4f}" for v in self.mean)
        std = ", ".join(f"{v:.4f}" for v in self.std)
        return (
            f"{self.name}: {self.images} images {self.shape} uint8, {len(classes)} classes, "
            f"per class {min(self.class_counts)}..{max(self.class_counts)}; mean ({mean}) std ({std})"
        )


def split_statistics(data: ImageSet, name: str, chunk: int = 5000) -> SplitStatistics:
    """Sums in float64 over chunks, so the 50,000 training images never exist as one float copy (1.2 GB)."""
    total = torch.zeros(3, dtype=torch.float64)
    squares = torch.zeros(3, dtype=torch.float64)
    for images in data.images.split(chunk):
        x = images.double() / 255
        total += x.sum((0, 2, 3))
        squares += (x * x).sum((0, 2, 3))
    n = data.images[:, 0].numel()
    mean = total / n
    std = ((squares - n * mean * mean) / (n - 1)).clamp(min=0).sqrt()
    counts = data.labels.bincount(minlength=len(data.classes)).tolist()
    shape = tuple(data.images.shape[1:])
    return SplitStatistics(name, len(data), shape, counts, tuple(mean.tolist()), tuple(std.tolist()))
