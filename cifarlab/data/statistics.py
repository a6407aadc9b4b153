"""What a split holds: image count, images per class, per-channel mean and std (0..1 scale)."""

from __future__ import annotations

from dataclasses import dataclass

from .datasets import ImageSet, channel_stats


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


def split_statistics(data: ImageSet, name: str) -> SplitStatistics:
    mean, std = channel_stats(data.images)
    counts = data.labels.bincount(minlength=len(data.classes)).tolist()
    return SplitStatistics(name, len(data), tuple(data.images.shape[1:]), counts, mean, std)
