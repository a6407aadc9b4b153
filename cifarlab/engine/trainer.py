"""The training loop: one readable pass from config to `eval.json`.

Reproducibility contract: a run is a function of its config. Order and augmentation come
from (seed, epoch) (see data.loader), adversarial random starts from (seed, step) (see
robust.adversarial); everything else that changes during training (weights,
optimizer, schedule, EMA, RNG, running sums, position) is saved in `checkpoints/last`, so a
run killed at any moment and resumed ends with the same weights as one that never stopped
(bit for bit on CPU with the same threads).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from .. import __version__
from ..config import Config
from ..data import DeviceLoader, SemiLoader, Splits
from ..data.augment import shrink
from ..errors import CifarlabError
from ..fileio import write_json
from ..models import takes_side
from ..robust.adversarial import Adversary, held_out_check, training_attack
from ..robust.consistency import jensen_shannon
from . import distributed
from .calibration import describe_fit, fit_record
from .distill import Teacher
from .checkpoint import (load_weights_into, read_state, read_weights, recover_checkpoint, save_calibration,
                         save_checkpoint)  # fmt: skip
from .metrics import format_report, metrics_from_logits, predict
from .metrics_log import MetricsLog
from .lookahead import Lookahead
from .optim import build_optimizers, scale_learning_rates, set_learning_rates
from .runtime import autocast, hardware, rng_state, set_rng_state


class StopRun(Exception):
    """Raised by a callback to end a run early on purpose (a sweep pruning a trial whose
    validation accuracy lags): not an error. The run's folder keeps what it has, and its
    metrics.jsonl ends with a `stopped` record giving this message as the reason."""


@dataclass
class Loaders:
    train: DeviceLoader | SemiLoader  # this process's slice of every global batch (semi: labelled and unlabelled)
    val: DeviceLoader | None  # this process's shard of the split (None: no validation split)
    test: DeviceLoader
    calib: DeviceLoader | None = None  # held-out images to fit the temperature on (Splits.calibration_split)


@dataclass
class Run:
    dir: Path
    config: Config
    test: dict | None  # the content of eval.json; None: not tested (a sweep's trial, chosen on validation only)
    best_val_accuracy: float | None


class _StopRequest:
    """Turns the first Ctrl-C into a flag checked between steps, so the run stops on a step
    boundary and saves a consistent `last` checkpoint; a second Ctrl-C aborts at once.

    Single-process runs only: under torchrun the ranks would see the signal at different
    steps, and saving is collective, so there Ctrl-C stops the job at once (torchrun ends
    every rank) and `--resume` continues from the last saved checkpoint."""

    def __init__(self):
        self.requested = False

    def __enter__(self):
        self.previous = signal.getsignal(signal.SIGINT) if distributed.world_size() == 1 else None
        if self.previous is not None:  # only the main thread may set handlers
            try:
                signal.signal(signal.SIGINT, self._handle)
            except ValueError:
                self.previous = None
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nstopping after this step and saving checkpoints/last (Ctrl-C again to abort)", file=sys.stderr)

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


class Trainer:
    """Trains a built model on built loaders; checkpoints, logs and the final test of one run.

    `param_options` are per-parameter optimizer options (fine-tuning's layer-wise lr and
    gradual unfreezing); `data_fingerprint` identifies the data, checked on resume. `semi` is
    the semi-supervised objective (labels/semi.py) when the train loader is a SemiLoader: it
    is called with (forward, criterion, x, y, unlabelled views) and returns (labelled logits,
    loss, [unlabelled loss × n, confident, n]). `teacher`: the finished net the run also learns
    from (optim.distill_from; engine/distill.py)."""

    def __init__(
        self, config: Config, run_dir: Path, model: nn.Module, param_options: dict, splits: Splits, loaders: Loaders,
        device: torch.device, data_fingerprint: str, verbose: bool = True, callbacks=(), semi=None,
        teacher: Teacher | None = None,
    ):  # fmt: skip
        c = self.config = config
        self.run_dir, self.splits, self.device, self.verbose = run_dir, splits, device, verbose
        self.data_fingerprint = data_fingerprint
        # objects with any of on_fit_start(trainer) (after a resume's restore), on_log(trainer, record) (each
        # metrics.jsonl line) and on_epoch_end(trainer) (after `last` is saved); any may raise StopRun
        self.callbacks = list(callbacks)
        self.checkpoints = run_dir / "checkpoints"

        memory_format = torch.channels_last if c.train.channels_last else torch.contiguous_format
        self.model = model.to(device, memory_format=memory_format)  # unwrapped: checkpoints hold its state dict
        if c.train.sync_bn:
            self.model = distributed.convert_sync_batchnorm(self.model, device)
        side = c.train.low_res
        if side and not takes_side(self.model, side, device):  # now, not after the first shrunk step
            raise CifarlabError(f"train.low_res={side}: model {c.model.name} does not take {side}×{side} images; "
                                f"set train.low_res=0 or a larger side")  # fmt: skip
        self.train_loader, self.val_loader, self.test_loader = loaders.train, loaders.val, loaders.test
        self.calib_loader = loaders.calib

        # a full epoch's steps: the lr schedule counts in these; train.drop_easy's late epochs are shorter
        self.steps_per_epoch = len(self.train_loader)
        self.kept: torch.Tensor | None = None  # the images of the late epochs (train.drop_easy), once chosen
        self.keep_count, self.late_steps = self._late_epochs()
        self.total_steps = self.steps_to(c.train.epochs)
        self.optimizers = build_optimizers(self.model, c.optim, c.train.batch_size, param_options)
        self.lookahead = (
            Lookahead(self.model, c.optim.lookahead_every, c.optim.lookahead_decay, c.optim.lookahead_power,
                      self.steps_to(c.optim.lookahead_start_epoch), self.total_steps)
            if c.optim.lookahead_every
            else None
        )  # fmt: skip
        self.ema = (
            AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(c.optim.ema_decay), use_buffers=True)
            if c.optim.ema_decay
            else None
        )
        # what a training step calls: under torchrun DDP, which averages the gradients across ranks, so the
        # optimizers (Muon included), clipping, lookahead and EMA act on the same values on every rank
        self.forward = distributed.wrap(self.model, device)
        if c.train.compile:
            self.forward = torch.compile(self.forward)
        # takes class indices or the loader's Mixup/CutMix soft targets; smoothing mixes either with uniform
        self.criterion = nn.CrossEntropyLoss(label_smoothing=c.optim.label_smoothing)
        attack = training_attack(c.train)  # crafts each training batch anew (robust/adversarial.py); None: off
        self.adversary = (Adversary(self.model, attack, splits.mean, splits.std, c.train.seed, distributed.rank())
                          if attack is not None else None)  # fmt: skip
        self.semi, self.teacher = semi, teacher
        self.log = MetricsLog(run_dir / "metrics.jsonl")

        # Position and running sums: all of it is saved in `last` and restored on resume.
        self.epoch = self.batch = self.step = 0
        self.elapsed = 0.0
        self.best_val_accuracy: float | None = None
        # [loss×n, correct, n] for the epoch so far and for the window since the last log line, of this
        # rank's images (the global figures are their sum over ranks: distributed.summed); semi-supervised
        # runs add [unlabelled loss×m, confident, m] of the unlabelled images
        width = 6 if semi is not None else 3
        self.epoch_sums = torch.zeros(width, dtype=torch.float64, device=device)
        self.window_sums = torch.zeros(width, dtype=torch.float64, device=device)
        self.nonfinite = torch.zeros((), dtype=torch.bool, device=device)

    def _late_epochs(self) -> tuple[int, int]:
        """Images and steps of an epoch without the easiest images (train.drop_easy; a full epoch's
        when no epoch drops any); fail now if they would not fill a batch."""
        t = self.config.train
        if t.drop_easy_from == t.epochs:
            return len(self.splits.train), self.steps_per_epoch
        n = len(self.splits.train)
        count = n - round(t.drop_easy * n)
        steps = self.train_loader.batches(count)
        if steps == 0:
            raise CifarlabError(f"train.drop_easy={t.drop_easy} keeps {count} of {n} training images, less than a "
                                f"batch; lower it")  # fmt: skip
        return count, steps

    def steps_to(self, epoch: float) -> int:
        """Optimizer steps from the start to `epoch` (a float): train.drop_easy's late epochs are shorter."""
        early = min(epoch, self.config.train.drop_easy_from)
        return round(early * self.steps_per_epoch + (epoch - early) * self.late_steps)

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    # ----------------------------------------------------------------- training
    def fit(self) -> None:
        c = self.config.train
        self.clock = time.perf_counter() - self.elapsed
        self.window_clock = time.perf_counter()
        self.init_from_data()
        self.notify("on_fit_start")
        bar = tqdm(total=self.total_steps, initial=self.step, unit="step", disable=None if self.verbose else True)
        self.bar = bar
        with _StopRequest() as stop, bar:
            while self.epoch < c.epochs:
                if self.epoch == c.drop_easy_from and self.kept is None:
                    self.drop_easy()
                self.model.train()
                side = c.low_res if self.epoch < c.low_res_epochs else 0
                for x, *rest in self.train_loader.epoch(self.epoch, start_batch=self.batch):
                    self.train_step(shrink(x, side) if side else x, *rest)
                    bar.update()
                    if self.step % c.log_every == 0:
                        self.log_window()
                    if stop.requested or (c.checkpoint_every and self.step % c.checkpoint_every == 0):
                        self.save_last()
                    if stop.requested:
                        raise KeyboardInterrupt
                self.end_epoch()

    def train_step(self, x: torch.Tensor, y: torch.Tensor, unlabelled: tuple[torch.Tensor, ...] = (),
                   lr_scale: float | None = None) -> torch.Tensor:  # fmt: skip
        """One step on a labelled batch (semi-supervised: and the unlabelled batch in its views,
        a SemiLoader's third item); returns its (detached) loss. `lr_scale`: every group at its
        peak lr × this instead of the schedule's lr (the lr range test, engine/lr_range.py)."""
        with autocast(self.device, self.config.train.precision):
            if unlabelled:  # its own forward passes: config.py refuses JSD views and adversarial batches with it
                logits, loss, unlabelled_sums = self.semi(self.forward, self.criterion, x, y, unlabelled)
            else:
                if self.adversary is not None:
                    x = self.adversary(x, y, self.step)
                logits = self.forward(x)  # all views of the batch together: BatchNorm sees them as one batch
                loss, logits = self.objective(logits.float(), y, x)
        loss.backward()
        if lr_scale is None:
            set_learning_rates(self.optimizers, self.schedule_step(), self.config.train.epochs * self.steps_per_epoch,
                               self.steps_per_epoch, self.config.optim)  # fmt: skip
        else:
            scale_learning_rates(self.optimizers, lr_scale, self.config.optim)
        if self.config.optim.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.optim.grad_clip)
        for optimizer in self.optimizers:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if self.lookahead is not None:
            self.lookahead.update(self.step + 1)
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        loss = loss.detach()
        self.nonfinite |= ~torch.isfinite(loss)
        classes = y if y.ndim == 1 else y.argmax(1)  # mixed targets count as their larger part
        correct = (logits.argmax(1) == classes).sum().double()
        sums = torch.stack([loss.double() * len(y), correct, loss.new_tensor(len(y), dtype=torch.float64)])
        if unlabelled:
            sums = torch.cat([sums, unlabelled_sums])
        self.epoch_sums += sums
        self.window_sums += sums
        self.batch += 1
        self.step += 1
        return loss

    def schedule_step(self) -> float:
        """Where the lr schedule stands, in full epochs' steps: a shorter late epoch (train.drop_easy)
        moves it as far as a full one, so warm-up, decay and milestones keep their epochs."""
        return self.epoch * self.steps_per_epoch + self.batch * self.steps_per_epoch / len(self.train_loader)

    def drop_easy(self) -> None:
        """Leave the train.drop_easy share of the training images that the eval model finds
        easiest (the lowest loss on the plain view) out of the remaining epochs. Scored once, in
        the run's time, each process its shard; all of them rank the gathered losses, so they
        choose alike. `last` keeps the choice: a resumed run trains on the same images."""
        c, train = self.config.train, self.splits.train
        scoring = DeviceLoader(distributed.shard(train), c.eval_batch_size, self.splits.mean, self.splits.std,
                               device=self.device, channels_last=c.channels_last)  # fmt: skip
        logits, labels = self.predict_split(scoring, len(train), "none")
        losses = nn.functional.cross_entropy(logits, labels, reduction="none")
        hardest = losses.argsort(descending=True, stable=True)[: self.keep_count]
        self.kept = hardest.sort().values
        self.train_loader.keep(self.kept)
        self.record({"kind": "drop_easy", "step": self.step, "first_epoch": self.epoch + 1, "images": len(self.kept),
                     "left_out": len(losses) - len(self.kept), "elapsed": time.perf_counter() - self.clock})  # fmt: skip
        if self.verbose:
            self.bar.write(f"epochs {self.epoch + 1}–{self.config.train.epochs}: the {len(self.kept):,} training images "
                           f"the model finds hardest of {len(losses):,}")  # fmt: skip

    def objective(self, logits: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The cross-entropy of the batch `x`, or with several views (the loader's clean view, then
        AugMix views) that of the clean view plus optim.jsd_weight × their Jensen-Shannon
        divergence; mixed with the teacher's loss (if any) on the clean view; and the logits the
        training accuracy counts (the clean view's)."""
        views = logits.unflatten(0, (-1, len(y)))
        loss = self.criterion(views[0], y)
        if self.teacher is not None:
            loss = self.teacher.loss(views[0], x[: len(y)], loss)
        if self.config.optim.jsd_weight:
            loss = loss + self.config.optim.jsd_weight * jensen_shannon(views)
        return loss, views[0]

    def check_finite(self, weights: bool = False) -> None:
        """Stop on a NaN/inf loss, and (before a checkpoint is saved) on NaN/inf weights, so
        no checkpoint ever holds them: the one on disk stays the last good one."""
        what = "training loss" if distributed.summed(self.nonfinite.double()).item() else None
        if what is None and weights and not torch.stack([t.isfinite().all() for t in self._float_tensors()]).all():
            what = "weights"
        if what is None:
            return
        last = self.checkpoints / "last"
        where = f"'{last}'" if last.exists() else "no checkpoint (none was saved yet)"
        raise CifarlabError(
            f"the {what} became NaN/inf by step {self.step} (epoch {self.epoch + 1}); stopped. "
            f"The last good checkpoint is {where}. Try a lower learning rate (--lr) or gradient "
            f"clipping (--set optim.grad_clip=1.0)."
        )

    def _float_tensors(self):
        models = [self.model] + ([self.ema.module] if self.ema is not None else [])
        return [t for m in models for t in m.state_dict().values() if t.is_floating_point()]

    def lr(self) -> float:
        """The highest lr of the conv filters (of the first group if there are none)."""
        groups = [g for optimizer in self.optimizers for g in optimizer.param_groups]
        return max((g["lr"] for g in groups if g["role"] == "filters"), default=groups[0]["lr"])

    def init_from_data(self) -> None:
        """Let a model set weights from data before the first step of a run from scratch
        (airbench's whitening conv; a fine-tuned net has its weights): it gets the first 5,000
        training images, normalized, unaugmented."""
        if self.step == 0 and self.config.finetune.source is None and hasattr(self.model, "init_from_data"):
            images = self.train_loader.prepare(self.splits.train.images[:5000])
            self.model.init_from_data(images)
            distributed.broadcast_state(self.model)  # rank 0's result: eigh may differ in the last bits across machines

    @contextlib.contextmanager
    def untimed(self):
        """Work inside this block (e.g. a benchmark's extra evaluation) is left out of `elapsed`."""
        start = time.perf_counter()
        try:
            yield
        finally:
            paused = time.perf_counter() - start
            self.clock += paused
            self.window_clock += paused

    @staticmethod
    def averages(sums: torch.Tensor) -> tuple[dict, float]:
        """Loss and accuracy over all ranks (semi: the unlabelled loss and the share of unlabelled
        images above the threshold too) from running sums; and the images they cover."""
        total = distributed.summed(sums).tolist()
        loss_sum, correct, seen = total[:3]
        averages = {"train_loss": loss_sum / seen, "train_acc": correct / seen}
        if len(total) > 3:
            unlabelled_loss, confident, unlabelled = total[3:]
            averages.update(unlabelled_loss=unlabelled_loss / unlabelled, mask_rate=confident / unlabelled)
            seen += unlabelled
        return averages, seen

    def log_window(self) -> None:
        self.check_finite()
        averages, seen = self.averages(self.window_sums)
        now = time.perf_counter()
        record = {
            "kind": "step",
            "step": self.step,
            "epoch": round(self.epoch + self.batch / len(self.train_loader), 4),
            **averages,
            "lr": self.lr(),
            "images_per_s": seen / max(now - self.window_clock, 1e-9),
            "elapsed": now - self.clock,
        }
        self.record(record)
        self.bar.set_postfix(
            loss=f"{record['train_loss']:.3f}", acc=f"{record['train_acc']:.1%}", lr=f"{record['lr']:.4g}",
            img_s=f"{record['images_per_s']:.0f}",
        )  # fmt: skip
        self.window_sums.zero_()
        self.window_clock = now

    def end_epoch(self) -> None:
        c = self.config.train
        self.check_finite()
        if self.lookahead is not None:
            self.lookahead.sync()
        # DDP keeps the parameters equal across ranks; the running statistics are made equal here (each
        # rank's own last update otherwise), so every rank evaluates and saves the same model
        distributed.broadcast_state(self.eval_model, buffers_only=True)
        record = {"kind": "epoch", "epoch": self.epoch + 1, "step": self.step, **self.averages(self.epoch_sums)[0]}
        val = None
        if self.val_loader is not None:
            logits, labels = self.predict_split(self.val_loader, len(self.splits.val), "none")
            val = metrics_from_logits(logits, labels, self.splits.classes)
            record.update(val_loss=val["loss"], val_acc=val["accuracy"])
        held_out = self.splits.calibration_split() if self.adversary is not None and c.adversarial_check else None
        if held_out is not None:  # in the run's time: it is part of what an adversarial recipe costs
            record["held_out_pgd_acc"], checked = held_out_check(self.eval_model, held_out[1], c, self.splits.mean,
                                                                 self.splits.std, self.epoch)  # fmt: skip
        record.update(lr=self.lr(), elapsed=time.perf_counter() - self.clock)
        self.record(record)
        if self.verbose:
            text = f"epoch {record['epoch']}/{self.config.train.epochs}  train loss {record['train_loss']:.4f} acc {record['train_acc']:.2%}"
            if val is not None:
                text += f"  val loss {val['loss']:.4f} acc {val['accuracy']:.2%}"
            if held_out is not None:
                text += f"  PGD-10 {record['held_out_pgd_acc']:.2%} ({checked} held out)"
            self.bar.write(text + f"  [{record['elapsed']:.0f}s]")
        self.epoch += 1
        self.batch = 0
        self.epoch_sums.zero_()
        if val is not None and (self.best_val_accuracy is None or val["accuracy"] > self.best_val_accuracy):
            self.best_val_accuracy = val["accuracy"]
            self.check_finite(weights=True)
            self.save(self.checkpoints / "best", self.meta(val))
        every = self.config.train.checkpoint_epochs
        if self.epoch == self.config.train.epochs or (every and self.epoch % every == 0):
            self.save_last()
        self.notify("on_epoch_end")

    def predict_split(self, loader: DeviceLoader, total: int, tta: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and labels of a whole split (`total` images) on every rank; each predicts its shard."""
        logits, labels = predict(self.eval_model, loader, tta, autocast(self.device, self.config.train.precision),
                                 self.config.train.tta_share)  # fmt: skip
        return distributed.gather_shards(logits, total), distributed.gather_shards(labels, total)

    def record(self, record: dict) -> None:
        if distributed.is_writer():
            self.log.write(record)
        self.notify("on_log", record)

    def notify(self, event: str, *args) -> None:
        for callback in self.callbacks:
            if hasattr(callback, event):
                getattr(callback, event)(self, *args)

    # ----------------------------------------------------------- checkpoints
    def meta(self, val: dict | None = None) -> dict:
        c = self.config
        return {
            "model": c.model.name,
            "model_options": c.model.options,
            "model_resized": c.model.resized,
            "classes": self.splits.classes,
            "mean": list(self.splits.mean),
            "std": list(self.splits.std),
            "epoch": self.epoch,
            "step": self.step,
            "val_accuracy": val["accuracy"] if val else None,
            "val_loss": val["loss"] if val else None,
            "ema": self.ema is not None,
            "config": c.to_dict(),
            "versions": {"cifarlab": __version__, "torch": torch.__version__},
        }

    def state_dict(self) -> dict:
        """Everything that changes during training besides the evaluated weights: what
        `checkpoints/last` holds for an exact resume, read back by `load_state_dict`."""
        return {
            "epoch": self.epoch,
            "batch": self.batch,
            "step": self.step,
            "elapsed": self.elapsed,
            "best_val_accuracy": self.best_val_accuracy,
            "metrics_offset": self.log.offset(),
            "optimizers": [optimizer.state_dict() for optimizer in self.optimizers],
            "lookahead": self.lookahead.state_dict() if self.lookahead is not None else None,
            "rng": rng_state(),
            "epoch_sums": distributed.summed(self.epoch_sums).cpu(),
            "window_sums": distributed.summed(self.window_sums).cpu(),
            "world_size": distributed.world_size(),
            "threads": torch.get_num_threads(),
            "data_fingerprint": self.data_fingerprint,
            "teacher_fingerprint": self.teacher.fingerprint if self.teacher is not None else None,
            "kept": self.kept,
            "train_model": self.model.state_dict() if self.ema is not None else None,
            "ema_state": self.ema.state_dict() if self.ema is not None else None,
        }

    def load_state_dict(self, state: dict, weights: dict[str, torch.Tensor], source: str) -> None:
        if self.ema is not None:
            self.ema.load_state_dict(state["ema_state"])
            self.model.load_state_dict(state["train_model"])
        else:
            load_weights_into(self.model, weights, source)
        for optimizer, optimizer_state in zip(self.optimizers, state["optimizers"]):
            optimizer.load_state_dict(optimizer_state)
        if self.lookahead is not None:
            self.lookahead.load_state_dict(state["lookahead"])
        set_rng_state(state["rng"])
        self.kept = state.get("kept")
        if self.config.train.drop_easy:
            self.train_loader.keep(self.kept)
        self.epoch, self.batch, self.step = state["epoch"], state["batch"], state["step"]
        self.elapsed, self.best_val_accuracy = state["elapsed"], state["best_val_accuracy"]
        if distributed.is_writer():  # the saved sums are global: rank 0 carries them on, the others start at 0
            self.epoch_sums.copy_(state["epoch_sums"])
            self.window_sums.copy_(state["window_sums"])
            self.log.truncate(state["metrics_offset"])

    def save_last(self) -> None:
        self.check_finite(weights=True)
        self.elapsed = time.perf_counter() - self.clock
        self.save(self.checkpoints / "last", self.meta(), self.state_dict())

    def save(self, folder: Path, meta: dict, state: dict | None = None) -> None:
        """Rank 0 writes the checkpoint (of the unwrapped eval model); every rank waits until it is there."""
        if distributed.is_writer():
            save_checkpoint(folder, self.eval_model.state_dict(), meta, state)
        distributed.barrier()

    def restore(self) -> bool:
        """Continue from `last` if there is one; returns whether anything was restored.

        Every rank reads the same `last`; the world size may differ from the run that wrote it
        (positions count global batches, and the saved running sums are global)."""
        if distributed.is_writer():
            for name in ("last", "best"):
                recover_checkpoint(self.checkpoints / name)
        distributed.barrier()
        last = self.checkpoints / "last"
        if not last.exists():
            if distributed.is_writer():
                self.log.truncate(0)
            return False
        state = read_state(last)
        self._check_resumable(state, last)
        self.load_state_dict(state, read_weights(last / "model.safetensors"), str(last))
        if self.verbose and state.get("world_size", 1) != distributed.world_size():
            print(f"note: {last} was saved by {state['world_size']} process(es), now {distributed.world_size()}: "
                  f"the same global batches follow, but BatchNorm statistics per process change", file=sys.stderr)  # fmt: skip
        return True

    def _check_resumable(self, state: dict, last: Path) -> None:
        """The same data and teacher, and the thread count the run used (CPU sums are ordered by threads:
        another count changes the last bits, so the run would not end as an uninterrupted one)."""
        if state.get("data_fingerprint", self.data_fingerprint) != self.data_fingerprint:
            raise CifarlabError(
                f"the data found now ({self.config.data.dataset} in {self.config.data.data_dir or 'the default folders'}) "
                f"differs from the data this run trained on; resume with the run's data (--data-dir)"
            )
        saved, teacher = state.get("teacher_fingerprint"), self.teacher.fingerprint if self.teacher else None
        if saved != teacher:
            raise CifarlabError(
                "this run learnt without a teacher; resume it without optim.distill_from" if saved is None else
                "this run learnt from a teacher; resume it with that one (--set optim.distill_from=PATH)" if teacher is None
                else f"the teacher found now (optim.distill_from: {self.config.optim.distill_from}) is not the net this "
                     f"run learnt from; resume with that one (--set optim.distill_from=PATH)")  # fmt: skip
        threads = state.get("threads")
        if threads and not self.config.train.threads and threads != torch.get_num_threads():
            if self.verbose:
                print(f"note: {last} was trained with {threads} CPU threads; resuming with {threads} too "
                      f"(not this machine's default {torch.get_num_threads()}), so the result repeats exactly",
                      file=sys.stderr)  # fmt: skip
            torch.set_num_threads(threads)

    # ------------------------------------------------------------ final test
    def calibrate(self, folder: Path) -> float | None:
        """Fit the temperature of the chosen checkpoint (in the eval model) on the held-out
        images, with the run's TTA, and keep it beside its weights; None when the run holds no
        images out (train.calibrate off, or neither a calibration hold-out nor a validation split)."""
        if self.calib_loader is None:
            return None
        name, data = self.splits.calibration_split()
        logits, labels = self.predict_split(self.calib_loader, len(data), self.config.train.tta)
        record = fit_record(logits, labels, name, self.config.train.tta)
        if distributed.is_writer():
            save_calibration(folder, record)
        if self.verbose:
            print(describe_fit(record))
        return record["temperature"]

    def finish(self) -> Run:
        """Evaluate the test set once, with the model chosen on validation accuracy."""
        c = self.config.train
        best = self.checkpoints / "best"
        chosen = "best" if best.exists() else "last"
        if chosen == "best":
            load_weights_into(self.eval_model, read_weights(best / "model.safetensors"), str(best))
        start = time.perf_counter()
        logits, labels = self.predict_split(self.test_loader, len(self.splits.test), c.tta)
        eval_seconds = time.perf_counter() - start
        if not bool(logits.isfinite().all()):
            raise CifarlabError(
                f"the {chosen} checkpoint gives NaN/inf outputs on the test set (its weights overflow); no eval.json "
                f"was written. Train again with a lower learning rate (--lr) or gradient clipping"
            )
        metrics = metrics_from_logits(logits, labels, self.splits.classes, self.calibrate(self.checkpoints / chosen))
        result = {
            "split": "test",
            "checkpoint": chosen,
            "tta": c.tta,
            "tta_share": c.tta_share,
            "val_accuracy": self.best_val_accuracy,
            "train_seconds": self.elapsed,
            "eval_seconds": eval_seconds,
            "device": str(self.device),
            "hardware": hardware(self.device),
            "processes": distributed.world_size(),
            **metrics,
        }
        if distributed.is_writer():
            write_json(self.run_dir / "eval.json", result)
        self.record({"kind": "test", "accuracy": metrics["accuracy"], "loss": metrics["loss"], "checkpoint": chosen})
        if self.verbose:
            print(f"\ntest set ({len(labels)} images, {chosen} checkpoint, tta={c.tta}):")
            print(format_report(metrics, self.splits.classes))
            print(f"\nrun directory: {self.run_dir}")
        return Run(self.run_dir, self.config, result, self.best_val_accuracy)
