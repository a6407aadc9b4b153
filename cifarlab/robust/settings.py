"""What `cifarlab robustness` measures: the corruption names, severities and attacks, parsed
from the command line's short forms and checked, one CifarlabError naming the flag."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction

from ..errors import CifarlabError

# CIFAR-10-C's 15 corruptions (the benchmark's mean is over these × 5 severities) and the 4
# extra ones the reference generator also makes (reported beside them, never averaged in).
STANDARD = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
            "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression")  # fmt: skip
EXTRA = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
ATTACKS = ("fgsm", "pgd", "pgd-l2")


@dataclass
class RobustnessConfig:
    corruptions: list[str] = field(default_factory=lambda: [*STANDARD, *EXTRA])
    severities: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    attacks: list[str] = field(default_factory=lambda: list(ATTACKS))
    eps: float = 8 / 255  # L∞ radius of FGSM and PGD, in pixel units of [0, 1]
    eps_l2: float = 0.5  # L2 radius of PGD-L2
    steps: int = 10  # PGD iterations
    limit: int | None = None  # the first N test images only; None = all
    seed: int = 0  # drives the corruptions' noise and the attacks' random starts
    batch_size: int = 500  # images per forward pass (the attacks' backward passes too)
    out: str | None = None  # folder for robustness.json and .png; None = the run's folder

    def validate(self) -> RobustnessConfig:
        unknown = [name for name in self.corruptions if name not in STANDARD + EXTRA]
        if unknown:
            raise CifarlabError(f"unknown corruption(s) {', '.join(map(repr, unknown))}; choose from: all, "
                                f"{', '.join(STANDARD + EXTRA)}")  # fmt: skip
        bad = [s for s in self.severities if not 1 <= s <= 5]
        if bad or not self.severities:
            raise CifarlabError(f"--severities {bad or '(none)'} out of range; severities are 1 to 5")
        unknown = [name for name in self.attacks if name not in ATTACKS]
        if unknown:
            raise CifarlabError(f"unknown attack(s) {', '.join(map(repr, unknown))}; choose from: none, {', '.join(ATTACKS)}")
        for flag, value in (("--eps", self.eps), ("--eps-l2", self.eps_l2)):
            if not (math.isfinite(value) and 0 < value <= 1):
                raise CifarlabError(f"{flag}={value} is out of range; it must be > 0 and at most 1 (pixel range [0, 1])")
        if self.steps < 1 or self.batch_size < 1:
            raise CifarlabError("--steps and --batch-size must be at least 1")
        if self.limit is not None and self.limit < 1:
            raise CifarlabError(f"--limit={self.limit} is out of range; it must be at least 1")
        return self


def names(text: str, all_names: tuple[str, ...], none_allowed: bool = False) -> list[str]:
    """'all', 'none' (where allowed) or a comma-separated list, in the given order."""
    text = text.strip()
    if text == "all":
        return list(all_names)
    if none_allowed and text == "none":
        return []
    return [name.strip() for name in text.split(",") if name.strip()]


def severities(text: str) -> list[int]:
    """'1-5', '3', '1,3,5' or '2-3,5'."""
    chosen: list[int] = []
    try:
        for part in text.split(","):
            low, _, high = part.strip().partition("-")
            chosen += range(int(low), int(high or low) + 1)
    except ValueError:
        raise CifarlabError(f"--severities {text!r} is not a list of severities like 1-5, 3 or 1,3,5") from None
    return sorted(set(chosen))


def fraction(text: str, flag: str) -> float:
    """'8/255', '0.0314' or '0.5': a number, a fraction of two allowed."""
    try:
        return float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise CifarlabError(f"{flag} {text!r} is not a number (e.g. 8/255 or 0.03)") from None
