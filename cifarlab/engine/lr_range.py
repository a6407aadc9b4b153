"""The learning-rate range test (Smith 2017, "Cyclical Learning Rates for Training Neural
Networks", §3.3; fastai's `lr_find`): train from the start for a few dozen steps while the lr
grows exponentially, and read off where the loss falls fastest and where it blows up.

It runs the trainer's own step (the recipe's model, optimizers, augmentation, label
smoothing, clipping), with every parameter group at the same multiple of its peak lr, so a
recipe with per-group lrs (`fast`: head, Muon filters, biases) is tested as one knob. The
trainer is put back exactly as it was afterwards (weights, optimizer and lookahead state,
EMA, running sums, position, RNG: what `checkpoints/last` holds), so a test run before
training leaks nothing into the training.
"""

from __future__ import annotations

import copy
import math
import statistics
from dataclasses import asdict, dataclass

from ..data.loader import batches_from
from .trainer import Trainer

SMOOTHING = 0.98  # fastai's: an exponential moving average over ~50 steps, bias-corrected
DIVERGED = 4.0  # stop once the smoothed loss exceeds this many times its lowest value
SUGGESTION_DIVISOR = 3.0
CLEAR_DIP = 0.05  # the lowest smoothed loss must lie this fraction below the starting loss


@dataclass
class LrRange:
    lrs: list[float]  # the reference lr (optim.lr) of each step
    losses: list[float]  # training loss of each step's batch (NaN/inf kept as given)
    smoothed: list[float]  # bias-corrected exponential moving average of the losses
    stop: str  # why the test ended
    suggestion: float | None  # the suggested reference lr (see `suggest`); None: see `note`
    note: str  # how the suggestion was made, or why there is none

    def to_dict(self) -> dict:
        return asdict(self)


def range_test(trainer: Trainer, start: float, end: float, steps: int, reference_lr: float) -> LrRange:
    """Train `steps` steps with the reference lr growing from `start` to `end` exponentially
    (every group's lr × the same factor lr / `reference_lr`); stop early once the loss
    diverges. The trainer is restored bit for bit afterwards, also on error or Ctrl-C."""
    weights = {k: v.detach().clone() for k, v in trainer.eval_model.state_dict().items()}
    state = copy.deepcopy(trainer.state_dict())
    nonfinite = trainer.nonfinite.clone()
    trainer.model.train()
    lrs, losses, smoothed = [], [], []
    stop = f"completed all {steps} steps"
    try:
        for lr, batch in zip(_exponential(start, end, steps), batches_from(trainer.train_loader)):
            loss = trainer.train_step(*batch, lr_scale=lr / reference_lr).item()
            lrs.append(lr)
            losses.append(loss)
            smoothed.append(_smooth(losses, smoothed))
            if not math.isfinite(loss):
                stop = f"the loss became {loss} at lr {lr:.3g}"
                break
            if smoothed[-1] > DIVERGED * min(smoothed):
                stop = f"the smoothed loss passed {DIVERGED:g}× its lowest value at lr {lr:.3g}"
                break
    finally:
        trainer.load_state_dict(state, weights, "the state before the lr range test")
        trainer.nonfinite.copy_(nonfinite)
    suggestion, note = suggest(lrs, losses, smoothed, start)
    return LrRange(lrs, losses, smoothed, stop, suggestion, note)


def suggest(lrs: list[float], losses: list[float], smoothed: list[float], start: float) -> tuple[float | None, str]:
    """The lr at the smoothed loss's minimum, ÷ 3, when the loss fell clearly.

    Why ÷ 3 and not fastai's ÷ 10: at the minimum the lr is at the edge of divergence (the
    loss still falls there only because the average lags), so the suggestion must sit below
    it, but a tenth was too cautious here. On ResNet-20 and `fast90` a third of the minimum
    lands on the recipes' published lrs (0.093 vs 0.1, 52 vs 54.3), where ÷ 10 gave a third
    of them and lost 11 and 3 points of 2-epoch validation accuracy to × 3 (README, Tuning).
    Why not the steepest descent: it is the derivative of a noisy curve; over ~100 steps it
    jumps between local dips, from one seed to the next, by a decade.

    None when there is no clear dip, because then the minimum is noise: when the minimum is
    within the first decade of the range (the loss never fell: start lower), or when it lies
    less than 5% below the starting loss (the median loss of the first decade of lrs, where
    the net barely moves). ShuffleNetV2's 100-step test fell 1% (ResNet-20's 8%, `fast90`'s
    11%), and its suggestion lost 13 points to × 3. Its 300-step test fell 6%, and there the
    suggestion lost 9 points to × 3: ÷ 3 is a rule fitted to two nets, not a law."""
    finite = [(value, lr) for value, lr in zip(smoothed, lrs) if math.isfinite(value)]
    if not finite:
        return None, "no finite loss was measured; start lower (--start)"
    lowest, at = min(finite)
    if at < 10 * start:
        return None, (f"the smoothed loss is lowest at lr {at:.3g}, within a decade of --start {start:.3g}: "
                      f"the loss never fell; start lower, e.g. --start {start / 100:.3g}")  # fmt: skip
    starting = statistics.median(loss for loss, lr in zip(losses, lrs) if lr < 10 * start)
    if lowest > (1 - CLEAR_DIP) * starting:
        return None, (f"the smoothed loss fell only from {starting:.4g} to {lowest:.4g} (at lr {at:.3g}), less than "
                      f"{CLEAR_DIP:.0%}: no clear dip, so its minimum is noise; keep the recipe's lr, or run more --steps")  # fmt: skip
    suggestion = at / SUGGESTION_DIVISOR
    note = f"the smoothed loss is lowest ({lowest:.4g}) at lr {at:.3g}; suggested: that ÷ {SUGGESTION_DIVISOR:g}"
    if at == lrs[-1]:
        note += " (it was still falling at the last lr tested: a higher --end may find a lower minimum)"
    return suggestion, note


def _exponential(start: float, end: float, steps: int):
    for i in range(steps):
        yield start * (end / start) ** (i / max(steps - 1, 1))


def _smooth(losses: list[float], smoothed: list[float]) -> float:
    """Bias-corrected EMA: the running average ÷ (1 − β^n), so the first values are not pulled to 0."""
    n = len(losses)
    previous = smoothed[-1] * (1 - SMOOTHING ** (n - 1)) if smoothed else 0.0
    average = SMOOTHING * previous + (1 - SMOOTHING) * losses[-1]
    return average / (1 - SMOOTHING**n)
