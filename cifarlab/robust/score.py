"""The headline numbers of a robustness measurement, from accuracy per corruption × severity.

mCE here is CIFAR's usual unnormalized form (AugMix, Hendrycks et al. 2020, reports CIFAR-10-C
this way): the mean top-1 error over the 15 × 5 standard splits. ImageNet-C's mCE divides
each corruption's error by AlexNet's; CIFAR has no agreed reference net, so none is used.
"""

from __future__ import annotations

from .settings import EXTRA, STANDARD

MCE_BASELINE = "none: unnormalized, mean top-1 error over the standard corruption x severity splits (as AugMix reports CIFAR-10-C)"


def summarize(accuracy: dict[str, dict[str, float]], clean: float) -> dict:
    """Means over the standard and the extra splits measured; `complete` says whether the
    standard mean covers all 75 splits (the benchmark's figure) or fewer."""

    def mean_of(names):
        values = [a for name in names if name in accuracy for a in accuracy[name].values()]
        return (sum(values) / len(values), len(values)) if values else (None, 0)

    mean, splits = mean_of(STANDARD)
    extra, extra_splits = mean_of(EXTRA)
    return {
        "mean_corrupted_accuracy": mean,
        "splits": splits,
        "complete": splits == len(STANDARD) * 5,
        "relative_drop": None if mean is None or clean == 0 else (clean - mean) / clean,
        "mce": None if mean is None else 1 - mean,
        "mce_baseline": MCE_BASELINE,
        "extra_mean_accuracy": extra,
        "extra_splits": extra_splits,
    }
