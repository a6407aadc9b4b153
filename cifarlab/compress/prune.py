"""`cifarlab prune`: what to remove, the pruned net with the record of what was done, and the
settings of the run that fine-tunes it (run.py puts them together)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn

from ..config import Config, OptimConfig, resolve
from ..engine.checkpoint import Checkpoint
from ..errors import CifarlabError
from ..models import create_model, model_stats
from ..models.resize import changed_sizes, same_shapes
from .channels import ALLOCATIONS, channel_scores, check_forward, kept_channels, prune_channels
from .sparsity import prune_unstructured, sparsity

METHODS = ("channels", "unstructured")
STEPS = 5  # channel pruning reaches its amount in this many steps, the importance recomputed before each
TAYLOR_BATCHES = 4  # training batches per step whose gradients give the channels' Taylor importance
MACS_TOLERANCE = 0.02  # --macs-ratio R is reached to within this: the achieved ratio is in [R - 0.02, R + 0.02]
# fine-tuning: every lr of the source run's recipe × this (the net starts trained). fast90 pruned to half its
# channels, 3 epochs: 85.5% test at × 0.1, 87.6% at × 0.3, 86.4% at × 1; `fast` seed 1 pruned to 0.5× the MACs,
# distilled: 92.46% at × 0.1, 93.19% at × 0.3, 93.10% at × 0.6 (one seed each); `fast` seed 0, the filters'
# (Muon) lr alone: 93.10% at × 0.15, 93.29% at × 0.3, 92.61% at × 1 (README: Fine-tuning settings)
LR_FACTOR = 0.3
# fine-tuning also learns the unpruned net's predictions (engine/distill.py) at optim's default weight (0.5) and
# temperature (4). Pruned to 0.5x the MACs, 3 epochs, one seed each: a 30-epoch ResNet-20 85.72% without,
# 86.47% at weight 0.5, 85.84% at 0.9; `fast` seed 1 93.00% without, 93.19% at 0.5; seed 0 93.58%, 93.49%


@dataclass
class PruneTarget:
    """What to remove: `amount` (a fraction of the channels, or of all weights) or, for channels,
    whatever amount leaves `macs_ratio` of the MACs; `allocation`: how the channels to remove
    are shared among the groups (channels.py)."""

    method: str = "channels"
    amount: float | None = None
    macs_ratio: float | None = None
    allocation: str | None = None  # channels: uniform unless given

    def __post_init__(self):
        if self.method not in METHODS:
            raise CifarlabError(f"unknown pruning method '{self.method}'; choose one of: {', '.join(METHODS)}")
        if self.allocation is not None:
            if self.allocation not in ALLOCATIONS:
                raise CifarlabError(f"unknown allocation '{self.allocation}'; choose one of: {', '.join(ALLOCATIONS)}")
            if self.method != "channels":
                raise CifarlabError("--allocation is for --method channels; unstructured pruning takes the smallest "
                                    "weights of the whole net")  # fmt: skip
        elif self.method == "channels":
            self.allocation = "uniform"
        if (self.amount is None) == (self.macs_ratio is None):
            raise CifarlabError("give one of --amount (the fraction to remove) and --macs-ratio (the MACs to keep)")
        for flag, value in (("--amount", self.amount), ("--macs-ratio", self.macs_ratio)):
            if value is not None and not 0 < value < 1:
                raise CifarlabError(f"{flag} {value} is out of range; it must be between 0 and 1 (both excluded)")
        if self.macs_ratio is not None and self.method != "channels":
            raise CifarlabError("--macs-ratio needs --method channels: unstructured zeros are still multiplied, "
                                "so the MACs stay as they are")  # fmt: skip


def prune_model(checkpoint: Checkpoint, target: PruneTarget, image_size: int,
                batches: Callable[[int], Iterable] | None = None) -> tuple[dict, dict]:  # fmt: skip
    """Prune `checkpoint.model` in place as `target` asks (channels: Taylor importance on
    `batches(step)` when given, batches(0) for a global allocation); returns the record of what
    was done and the `resized` layer sizes that rebuild the net."""
    model, name = checkpoint.model, checkpoint.meta["model"]
    before = _macs_and_params(model, image_size)
    record = {"model": name, "method": target.method, "amount": target.amount, "macs_ratio_target": target.macs_ratio}
    if target.method == "unstructured":
        prune_unstructured(model, target.amount)
        record["sparsity"] = sparsity(model)
    else:
        example = torch.randn(1, 3, image_size, image_size, device=next(model.parameters()).device)
        try:
            with torch.no_grad():
                shape = model(example).shape
            scores = None if target.allocation == "uniform" else channel_scores(model, example, batches and batches(0))
            amount = target.amount or _amount_for_macs(model, example, target.macs_ratio, before[0], image_size, scores)
            prune_channels(model, example, _kept(amount, scores), STEPS, batches)
            check_forward(model, example, shape)
        except CifarlabError as e:
            raise CifarlabError(f"cannot prune {name} by channels: {e}; --method unstructured works on any net") from None
        record.update(amount=amount, allocation=target.allocation, steps=STEPS,
                      importance="taylor" if batches else "l2-norm")  # fmt: skip
    after = _macs_and_params(model, image_size)
    record.update(macs_before=before[0], macs_after=after[0], macs_ratio=after[0] / before[0],
                  params_before=before[1], params_after=after[1], params_ratio=after[1] / before[1])  # fmt: skip
    return record, _resized(model, checkpoint)


def _macs_and_params(model: nn.Module, image_size: int) -> tuple[int, int]:
    stats = model_stats(model, image_size)
    return round(stats.mflops * 1e6 / 2), stats.params  # flop_counter counts a multiply-add as 2 FLOPs


def _kept(amount: float, scores: dict | None) -> float | dict[str, int]:
    """What prune_channels keeps: a uniform `amount` removed, or each group's share of a global one."""
    return amount if scores is None else kept_channels(scores, amount)


def _amount_for_macs(model: nn.Module, example: torch.Tensor, ratio: float, macs: int, image_size: int,
                     scores: dict | None) -> float:  # fmt: skip
    """The amount whose pruned net keeps `ratio` of the MACs, by bisection on pruned copies
    (the layer sizes depend on the amount and, for a global allocation, the `scores` alone,
    not on which channels go)."""

    def achieved(amount: float) -> float:
        pruned = copy.deepcopy(model)
        prune_channels(pruned, example, _kept(amount, scores))
        return _macs_and_params(pruned, image_size)[0] / macs

    low, high = (0.0, 1.0), (0.99, achieved(0.99))
    if high[1] > ratio + MACS_TOLERANCE:
        raise CifarlabError(f"the fewest MACs it reaches are {high[1]:.2f}× the net's (it keeps residual and other "
                            f"coupled channels whole); ask for --macs-ratio {high[1]:.2f} or more")  # fmt: skip
    for _ in range(12):
        if min(abs(low[1] - ratio), abs(high[1] - ratio)) <= MACS_TOLERANCE / 2:
            break
        middle = (low[0] + high[0]) / 2
        probe = (middle, achieved(middle))
        low, high = (probe, high) if probe[1] > ratio else (low, probe)
    amount, reached = min(low, high, key=lambda a: abs(a[1] - ratio))
    if abs(reached - ratio) > MACS_TOLERANCE:
        raise CifarlabError(f"--macs-ratio {ratio} falls between two channel counts of its layers "
                            f"({low[1]:.3f}× and {high[1]:.3f}×); ask for one of those")  # fmt: skip
    return amount


def _resized(model: nn.Module, checkpoint: Checkpoint) -> dict:
    """The `model.resized` of the pruned net: its layer sizes that differ from the net as built,
    checked to rebuild exactly its tensors."""
    meta = checkpoint.meta
    name, classes, options = meta["model"], len(checkpoint.classes), meta.get("model_options", {})
    with torch.device("meta"):
        resized = changed_sizes(model, create_model(name, classes, **options))
        rebuilt = create_model(name, classes, resized, **options)
    if not same_shapes(rebuilt, model):
        raise CifarlabError(f"cannot prune {name} by channels: torch_pruning changed more than the sizes of its conv, "
                            f"BatchNorm and linear layers, which a run could not rebuild")  # fmt: skip
    return resized


def pruned_config(source: Config, method: str, epochs: int, out: str | None = None, data_dir: str | None = None,
                  device: str | None = None, sets=(), teacher: str | None = None, pruned: bool = False) -> Config:  # fmt: skip
    """The fine-tuning run's settings: the source run's own, with every lr × LR_FACTOR (unless
    the source is itself a `pruned` run, whose lrs are already the fine-tuning ones) and no
    warmup, for `epochs`, the source's head kept (and, after unstructured pruning, its zeros),
    learning from `teacher` too (the unpruned net, at optim's default distillation weight and
    temperature; None, or a FixMatch or pseudo-labelling run, whose step computes its own loss:
    from the labels alone); then `sets`. The pruned checkpoint becomes `finetune.source` once
    the run has a folder."""
    o, factor = source.optim, 1.0 if pruned else LR_FACTOR
    flags = {
        "train": {"epochs": epochs, "out": out, **({"device": device} if device else {})},
        "data": {"data_dir": data_dir} if data_dir else {},
        "optim": {"lr": _scaled(o.lr, factor), "warmup_epochs": 0.0,
                  "groups": {role: {"lr": _scaled(g["lr"], factor)} for role, g in o.groups.items() if "lr" in g},
                  "distill_from": None if source.semi.online else teacher,
                  "distill_weight": OptimConfig.distill_weight, "distill_temperature": OptimConfig.distill_temperature},
        "finetune": {"source": None, "arch": None, "strategy": "full", "layer_decay": 1.0, "keep_head": True,
                     "keep_zeros": method == "unstructured"},
    }  # fmt: skip
    return resolve(flags=flags, sets=sets, base=source)


def _scaled(lr: float, factor: float) -> float:
    return float(f"{lr * factor:.6g}")  # 16.29, not 16.290000000000003, in config.yaml


def describe(record: dict) -> str:
    """One line: what was removed and what it saved."""
    shared = "of every prunable group" if record.get("allocation", "uniform") == "uniform" else (
        "of all prunable groups, shared among them by importance")
    what = f"{record['amount']:.3g} of the channels {shared}" if record["method"] == "channels" else (
        f"{record['sparsity']:.1%} of the conv/linear weights zeroed (no time saved: dense kernels multiply zeros too)")
    return (f"pruned {record['model']}: {what}; MACs {record['macs_before'] / 1e6:.1f}M → {record['macs_after'] / 1e6:.1f}M "
            f"({record['macs_ratio']:.2f}×), params {record['params_before'] / 1e6:.3f}M → "
            f"{record['params_after'] / 1e6:.3f}M ({record['params_ratio']:.2f}×)")  # fmt: skip
