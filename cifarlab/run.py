"""Make a run: the one place above engine/, transfer/, compress/ and viz/.

    config → the model (from scratch, or a pretrained source's weights with a fresh head)
           → the run directory (taken with a lock) → data and loaders → Trainer → final test → report

The trainer receives the built model and loaders (as torchvision's reference `main(args)`
hands objects to `train_one_epoch`); fine-tuning is the same path with a source, and so is
pruning: the pruned net, saved in the run's folder, is the source of a fine-tuning run.
`quantize` makes the int8 copy of a run the same way: the run's data → compress/ → a folder
with a test; `robustness` measures a run under corruptions and attacks (robust/) into its folder.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import itertools
import os
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from torch import distributed as dist
from torch import nn

from . import __version__
from .compress import PruneTarget, describe, prune_model, pruned_config
from .compress.bench import measure
from .compress.export import save_onnx
from .compress.prune import TAYLOR_BATCHES
from .compress.quantize import quantize_int8, require_packages
from .config import ActiveConfig, Config, QuantizeConfig, from_dict, read_yaml, resolve, validate
from .data import DeviceLoader, ImageSet, SemiLoader, Splits, make_splits, stratified_indices, training_file
from .engine import distributed
from .engine.calibration import describe_fit, fit_record
from .engine.checkpoint import load_checkpoint, save_calibration, save_checkpoint
from .engine.distill import Teacher
from .engine.inference import checkpoint_loader
from .engine.metrics import finite, metrics_from_logits, predict, read_result
from .engine.metrics_log import read_metrics
from .engine.onnx_model import OnnxModel
from .engine.runtime import autocast, configure, hardware, resolved_precision, seed_everything, select_device
from .engine.trainer import Loaders, Run, StopRun, Trainer
from .errors import CifarlabError
from .fileio import atomic_path, read_json, write_json, write_text
from .labels import LabelIssues, SemiObjective, active_learning, pseudo_labelled, read_results, summarize, teacher_labelled
from .labels.audit import check_folds, checkpoint_probabilities, issues, out_of_fold_probabilities, require_cleanlab, write_csv
from .models import create_model
from .robust import RobustnessConfig
from .transfer import Source, finetune_config, open_source, pretrained_model, source_normalization, with_source

# Settings a resumed run may change: they do not change the result.
# the teacher's path may change (it moved): the run checks that it is the same net (its fingerprint)
_RESUME_FREE_KEYS = {("data", "data_dir"), ("train", "out"), ("train", "tensorboard"), ("train", "report"),
                     ("train", "checkpoint_epochs"), ("train", "calibrate"), ("optim", "distill_from")}  # fmt: skip


def train(config: Config | str, resume: bool = False, verbose: bool = True, callbacks=(),
          source: Source | None = None, test: bool = True) -> Run:  # fmt: skip
    """Train as configured into `config.train.out` and test once; returns the Run.

    The default folder is runs/<recipe>, or runs/<recipe>-2, -3, … when that one is taken.
    With `resume`, continue the run in `config.train.out` from `checkpoints/last` (or start it
    if it holds nothing yet); the config must match the saved one. `source` is the opened
    fine-tuning source when the caller has it already (it is opened here otherwise). With
    `test=False` the run ends untested (no eval.json, `Run.test` None): a sweep's trial, where
    only the trial chosen on validation accuracy is tested, by resuming it. A callback that
    raises StopRun ends the run early (a pruned trial): the exception reaches the caller.

    Under torchrun, every process calls this: they train one run together (see
    engine/distributed.py), only rank 0 writes, and every rank returns the same Run. For
    torchrun's `--max-restarts`, pass `resume` and an `out`: every start then continues from
    `last` (the first one, finding nothing, starts the run).
    """
    config = resolve(config) if isinstance(config, str) else validate(config)
    if config.finetune.source is not None and source is None:
        source = open_source(config.finetune)
        config = with_source(config, source)
    if resume and not config.train.out:
        raise CifarlabError("--resume needs --out RUN: the folder of the run to continue")
    with distributed.session(config.train.device) as device:
        verbose = verbose and distributed.is_writer()
        # The run records the precision it trains in: resumed on a CPU without native bf16, it stays as it began.
        precision = resolved_precision(config.train.precision, device)
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, precision=precision))
        # A new run is built before its folder is claimed: whatever refuses the config does so before anything
        # is made, on every rank (under torchrun, a rank that exits first has the others killed mid-cleanup).
        # A resumed one is built once its folder proves unfinished: a finished run needs no data.
        setup = None if resume else _setup(config, device, source)
        with _run_directory(config, resume) as run_dir:
            config = dataclasses.replace(config, train=dataclasses.replace(config.train, out=str(run_dir)))
            finished = _finished(run_dir, config, resume, verbose)
            if finished is not None:
                return finished
            setup = setup or _setup(config, device, source, resumed=run_dir)
            return _train(config, run_dir, setup, resume, verbose, callbacks, test)


def finetune(source: str, target: str, strategy: str | None = None, *, arch: str | None = None,
             labels_per_class: int | None = None, recipe: str | None = None, sets=(), resume: bool = False,
             verbose: bool = True, callbacks=()) -> Run:  # fmt: skip
    """Fine-tune `source` on `target` (see `cifarlab finetune --help` for both) and test once;
    returns the same `Run` as `cifarlab.train`. `sets` are `key=value` settings, applied last."""
    flags = {"finetune": {"source": str(source), "strategy": strategy, "arch": arch},
             "data": {"dataset": target, "labels_per_class": labels_per_class}}  # fmt: skip
    flags = {section: {k: v for k, v in values.items() if v is not None} for section, values in flags.items()}
    config, opened = finetune_config(flags, recipe, sets=sets)
    return train(config, resume=resume, verbose=verbose, callbacks=callbacks, source=opened)


def prune(source: str | Path, method: str = "channels", amount: float | None = None, macs_ratio: float | None = None,
          finetune_epochs: int = 3, out: str | None = None, data_dir: str | None = None, device: str | None = None,
          sets=(), distill: bool = True, allocation: str | None = None, verbose: bool = True, callbacks=()) -> Run:  # fmt: skip
    """Prune the net of the run (or checkpoint) `source`, fine-tune it for `finetune_epochs`
    with that run's recipe at 0.3× its lrs (a pruned run, pruned again: at its own) (`distill`:
    learning from the unpruned net too), and test once; returns the new run, which
    also holds prune.json (what was removed, MACs and parameters before and after) and the
    pruned net before fine-tuning (checkpoints/pruned). `amount`: the fraction of the channels
    to remove (unstructured: of all weights); `macs_ratio`: instead, the fraction of the MACs to
    keep; `allocation`: uniform (each group of coupled channels loses `amount` of its own) or
    global (the least important channels of the whole net). Default folder: runs/<source
    run>-pruned (then -2, -3, …)."""
    target = PruneTarget(method, amount, macs_ratio, allocation)
    if os.environ.get("WORLD_SIZE", "1") != "1":
        raise CifarlabError("prune runs in one process; continue its run under torchrun with `train --out RUN --resume`")
    checkpoint = load_checkpoint(source)
    if isinstance(checkpoint.model, OnnxModel):
        raise CifarlabError(f"'{source}' holds an ONNX model ({checkpoint.model.path}); prune the float run it came from")
    source_run = _run_folder(checkpoint.path)
    config = pruned_config(checkpoint.config(), method, finetune_epochs, out, data_dir, device, sets,
                           str(checkpoint.path) if distill else None, (source_run / "prune.json").is_file())  # fmt: skip
    # the normalization the fine-tuning run will take from its source (with_source), now: the teacher's inputs
    # are renormalized from the splits made below
    config = dataclasses.replace(config, data=source_normalization(config.data, checkpoint.mean, checkpoint.std))
    with distributed.session(config.train.device) as dev:
        configure(config.train)
        seed_everything(config.train.seed)
        splits = make_splits(config.data)
        # built (or refused) before the run's folder is made
        teacher = Teacher(config, splits, dev) if config.optim.distill_from else None
        checkpoint.model.to(dev)
        record, resized = prune_model(checkpoint, target, config.data.image_size, _importance_batches(config, splits, dev))
        record = {"source": str(checkpoint.path), **record}
        if (source_run / "eval.json").is_file():
            record["source_test_accuracy"] = read_result(source_run)["accuracy"]
        with _run_directory(config, False, Path("runs") / f"{source_run.name}-pruned") as run_dir:
            pruned = run_dir / "checkpoints" / "pruned"
            config = _with_pruned_source(config, run_dir, pruned, resized)
            meta = {key: checkpoint.meta[key] for key in ("model", "classes", "mean", "std")}
            save_checkpoint(pruned, checkpoint.model.state_dict(), {
                **meta, "model_options": config.model.options, "model_resized": resized, "config": config.to_dict(),
                "versions": {"cifarlab": __version__, "torch": torch.__version__}})  # fmt: skip
            write_json(run_dir / "prune.json", record)
            if verbose:
                print(f"{describe(record)}; fine-tuning for {config.train.epochs} epoch(s)")
            opened = open_source(config.finetune)
            config = with_source(config, opened)
            run = _train(config, run_dir, _setup(config, dev, opened, teacher=teacher), False, verbose, callbacks)
    if verbose:
        was = record.get("source_test_accuracy")
        print(f"pruned: test accuracy {run.test['accuracy']:.2%}" + (f" (source {was:.2%})" if was is not None else "")
              + f" at {record['macs_ratio']:.2f}× the MACs and {record['params_ratio']:.2f}× the parameters")  # fmt: skip
    return run


def _with_pruned_source(config: Config, run_dir: Path, pruned: Path, resized: dict) -> Config:
    """The fine-tuning run's config once its folder is known: the pruned checkpoint as its source."""
    return dataclasses.replace(
        config, train=dataclasses.replace(config.train, out=str(run_dir)),
        finetune=dataclasses.replace(config.finetune, source=str(pruned)),
        model=dataclasses.replace(config.model, resized=resized),
    )  # fmt: skip


def _importance_batches(config: Config, splits: Splits, device: torch.device):
    """step → a few unaugmented training batches (another few each step), for Taylor importance."""
    loader = DeviceLoader(splits.train, min(config.train.batch_size, 256, len(splits.train)), splits.mean, splits.std,
                          shuffle=True, seed=config.train.seed, device=device, channels_last=False)  # fmt: skip
    return lambda step: itertools.islice(loader.epoch(step), TAYLOR_BATCHES)


def saved_config(recipe: str | None, config_file: str | None, flags: dict, sets=()) -> Config | None:
    """For `--resume`: the config saved in the run folder `flags.train.out`, with the given
    settings applied (any that disagree are refused when the run starts); None when the
    folder holds no run yet, so the first start of a `--resume` job begins it."""
    out = flags.get("train", {}).get("out")
    path = Path(out or "") / "config.yaml"
    if not out or not path.is_file():
        return None  # `train` refuses a --resume without --out
    layers = {**flags, "recipe": recipe} if recipe else flags  # a recipe that differs is refused like any setting
    return resolve(config_file=config_file, flags=layers, sets=sets, base=from_dict(read_yaml(path)))


def quantize(source: str | Path, settings: QuantizeConfig | None = None, data_dir: str | None = None,
             verbose: bool = True) -> Run:  # fmt: skip
    """An int8 copy of a run's (best) model, in `settings.out` or runs/<run>-int8 (-int8-2, …):
    model.onnx, meta.json (the source's, plus what was done) and eval.json: the int8 model's
    test metrics, evaluated once, beside the float model's on the same images. Calibration
    images are drawn (stratified, with the run's seed) from the run's training split, rebuilt
    from its saved config. The folder is made only once the model is ready, and removed again
    if writing it fails: nothing is left half-written."""
    settings = (settings or QuantizeConfig()).validate()
    require_packages(settings)
    checkpoint = load_checkpoint(source)
    if isinstance(checkpoint.model, OnnxModel):
        raise CifarlabError(f"'{source}' holds an ONNX model already ({checkpoint.model.path}); quantize the float run")
    out = Path(settings.out) if settings.out else None
    if out is not None and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CifarlabError(f"--out '{out}' exists and is not an empty folder; choose another --out")
    config = checkpoint.config(data_dir)
    splits = make_splits(config.data)
    if settings.calib > len(splits.train):
        raise CifarlabError(f"--calib={settings.calib} is more than the {len(splits.train)} training images of the run")
    test = checkpoint_loader(checkpoint, config, splits.test, torch.device("cpu"))
    float_logits, labels = predict(checkpoint.model, test, config.train.tta)
    finite(float_logits, source)
    checkpoint.model.to(memory_format=torch.contiguous_format)  # the layout is not part of an export
    picked = stratified_indices(splits.train.labels, settings.calib, config.train.seed)[1]
    calibration = test.prepare(splits.train.images[picked]).contiguous()  # normalized as the model's inputs
    train = DeviceLoader(splits.train, min(config.train.batch_size, len(splits.train)), splits.mean, splits.std,
                         config.augment, shuffle=True, drop_last=True, seed=config.train.seed,
                         channels_last=False) if settings.qat_epochs else None  # fmt: skip
    proto = quantize_int8(checkpoint.model, calibration, settings, train, config.optim.label_smoothing, verbose)
    done = {k: v for k, v in dataclasses.asdict(settings).items() if k != "out"}
    meta = {**checkpoint.meta, "source": str(checkpoint.path.resolve()), "quantization": {"int8": "U8S8 QDQ", **done}}
    made = out is None or not out.exists()
    folder = out or _new_folder(Path("runs") / f"{_run_name(checkpoint.path)}-int8")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / "model.onnx") as tmp:
            save_onnx(proto, tmp, meta)
        start = time.perf_counter()
        logits, _ = predict(OnnxModel(folder / "model.onnx"), test, config.train.tta)
        result = {"split": "test", "tta": config.train.tta, "source": meta["source"],
                  "float_accuracy": (float_logits.argmax(1) == labels).double().mean().item(),
                  "agreement_with_float": (float_logits.argmax(1) == logits.argmax(1)).double().mean().item(),
                  "eval_seconds": time.perf_counter() - start, "hardware": hardware(), **done,
                  **metrics_from_logits(logits, labels, checkpoint.classes)}  # fmt: skip
        write_json(folder / "meta.json", meta)
        write_json(folder / "eval.json", result)
    except BaseException:
        if made:
            shutil.rmtree(folder)
        else:  # an empty folder given as --out stays, empty
            for path in folder.iterdir():
                path.unlink()
        raise
    return Run(folder, config, result, None)


def calibrate(source: str | Path, split: str | None = None, limit: int | None = None, data_dir: str | None = None,
              device: str = "auto", verbose: bool = True) -> dict:  # fmt: skip
    """Fit the temperature of a run's (best) checkpoint, or a checkpoint folder, on held-out
    images and write it beside the weights (calibration.json), where eval, predict and report
    find it; returns what was written.

    `split`: 'calib' (the run's data.calib_size hold-out) or 'val'; None: the hold-out, else
    validation. Never the test set, and never training images (the model has fitted those, so
    its confidence there says nothing about new images). `limit`: a stratified subset of that
    many of them (with the run's seed)."""
    dev = select_device(device)
    checkpoint = load_checkpoint(source, dev, calibration=False)
    if not checkpoint.path.is_dir():
        raise CifarlabError(f"'{source}' is an exported file; calibrate the run or checkpoint folder it came from")
    config = checkpoint.config(data_dir)
    splits = make_splits(config.data)
    held_out = {"calib": splits.calib, "val": splits.val}
    if split is not None and split not in held_out:
        raise CifarlabError(f"cannot calibrate on '{split}': choose 'calib' or 'val' (held-out images; fitting on the "
                            f"test set would make its figures dishonest)")  # fmt: skip
    name, data = (split, held_out[split]) if split else (splits.calibration_split() or (None, None))
    if data is None:
        raise CifarlabError(
            f"the run of '{checkpoint.path}' has no held-out {split or 'calibration or validation'} images (it trained "
            f"with data.val_size=0 and data.calib_size=0); retrain with --set data.calib_size=1000 (or a validation "
            f"split): fitting on the test set would make its test figures dishonest, and on training images, wrong"
        )
    if limit is not None:
        if not 1 <= limit <= len(data):
            raise CifarlabError(f"--limit={limit} is outside 1..{len(data)}, the run's {name} images")
        data = data.subset(stratified_indices(data.labels, limit, config.train.seed)[1])
    loader = checkpoint_loader(checkpoint, config, data, dev)
    logits, labels = predict(checkpoint.model, loader, config.train.tta, autocast(dev, config.train.precision))
    record = fit_record(finite(logits, source), labels, name, config.train.tta)
    save_calibration(checkpoint.path, record)
    if verbose:
        print(f"{checkpoint.path}: {describe_fit(record)}")
    return record


def _run_name(checkpoint: Path) -> str:
    return _run_folder(checkpoint).name


def _run_folder(checkpoint: Path) -> Path:
    """runs/r20/checkpoints/best → runs/r20; a checkpoint folder elsewhere: itself."""
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint


# ----------------------------------------------------------------------------- run folder
@contextmanager
def _run_directory(config: Config, resume: bool, default: Path | None = None) -> Iterator[Path]:
    """The run's folder, held with a lock for the whole run, so a second process on it is
    refused before it writes anything. Without `out`, `default` (runs/<recipe>) or the first
    free one of its -2, -3, … (made with mkdir, which only one process can win). A folder
    made here for a run that fails before writing anything is removed again."""
    path, made = None, False
    if distributed.is_writer():
        if config.train.out:
            path = Path(config.train.out)
            made = not path.exists()
        else:
            path, made = _new_folder(default or Path("runs") / (config.recipe or "custom")), True
    if distributed.world_size() > 1:  # every rank trains into rank 0's folder
        shared = [str(path) if path else None]
        dist.broadcast_object_list(shared, 0)
        path = Path(shared[0])
    if not distributed.is_writer():
        distributed.barrier()  # until rank 0 holds the lock and has checked the folder
        yield path
        return
    try:
        with _lock(path):
            if not resume:
                _check_unused(path)
            distributed.barrier()
            yield path
    except BaseException:
        if made and path.is_dir() and not any(path.iterdir()):
            path.rmdir()
        raise


def _new_folder(base: Path) -> Path:
    base.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        path = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise CifarlabError(f"no free folder name after {base}-9999; pass --out")


@contextmanager
def _lock(run_dir: Path) -> Iterator[None]:
    """An exclusive `flock` on RUN_DIR/.lock, released when the process ends however it ends.
    The holder removes the file when it is done; a process that locked a file just removed
    that way sees that the path no longer names it and tries again."""
    if run_dir.exists() and not run_dir.is_dir():
        raise CifarlabError(f"--out '{run_dir}' is a file, not a folder; choose another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / ".lock"
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise CifarlabError(
                f"'{run_dir}' is in use by another cifarlab run (pid {holder}); wait for it to end, or choose another --out"
            ) from None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


def _check_unused(run_dir: Path) -> None:
    """A new run needs an empty folder; an old run is named with what to do about it."""
    contents = [p for p in run_dir.iterdir() if p.name != ".lock"]
    if not contents:
        return
    if (run_dir / "eval.json").is_file():
        what = "a finished run"
    else:
        stop = _stop_reason(run_dir)
        what = f"a run that stopped ({stop}), which resuming would repeat" if stop else "an unfinished run"
    raise CifarlabError(f"'{run_dir}' already holds {what}; pass --resume to continue it, or --out for a new one")


def _stop_reason(run_dir: Path) -> str | None:
    path = run_dir / "metrics.jsonl"
    try:
        records = read_metrics(path) if path.is_file() else []
    except CifarlabError:
        return None
    return records[-1]["reason"] if records and records[-1].get("kind") == "stopped" else None


def _finished(run_dir: Path, config: Config, resume: bool, verbose: bool) -> Run | None:
    """On --resume: refuse settings that differ from the saved run's; a finished run is
    returned as it is (its report written if the run stopped while writing it)."""
    config_path = run_dir / "config.yaml"
    if not (resume and config_path.is_file()):
        return None
    saved = from_dict(read_yaml(config_path)).to_dict()
    if saved["train"]["precision"] == "auto":  # saved before runs recorded their precision: it resumes in the one now
        saved["train"]["precision"] = config.train.precision
    differences = [
        f"{section}.{key}: run has {saved[section][key]!r}, now {value!r}"
        for section, values in config.to_dict().items() if isinstance(values, dict)
        for key, value in values.items()
        if (section, key) not in _RESUME_FREE_KEYS and saved[section][key] != value
    ]  # fmt: skip
    if config.recipe != saved["recipe"]:
        differences.insert(0, f"recipe: run has {saved['recipe']!r}, now {config.recipe!r}")
    if differences:
        raise CifarlabError(f"--resume continues the run as saved; leave out what differs: {'; '.join(differences)}")
    if not (run_dir / "eval.json").is_file():
        return None
    result = read_result(run_dir)
    if verbose:
        print(f"run '{run_dir}' is already finished; its test results are in eval.json", file=sys.stderr)
    if config.train.report and not (run_dir / "report.html").is_file() and distributed.is_writer():
        _write_report(run_dir, config.train.device, verbose)
    return Run(run_dir, config, result, result.get("val_accuracy"))


# ----------------------------------------------------------------------------- training
def _train(config: Config, run_dir: Path, setup: _Setup, resume: bool, verbose: bool, callbacks,
           test: bool = True) -> Run:  # fmt: skip
    if verbose:
        print(f"run: {run_dir}  (recipe {config.recipe}, model {config.model.name}, {setup.device}, {config.train.precision})")
        if config.semi.teacher:
            pseudo = int(teacher_labelled(setup.splits).sum())
            print(f"self-training: {len(setup.splits.train) - pseudo} labelled images and {pseudo} of the "
                  f"{len(setup.splits.unlabelled)} pool images labelled by the teacher at ≥ {config.semi.threshold}")
    trainer = setup.trainer(config, run_dir, verbose, callbacks)
    if distributed.is_writer():
        if config.data.labels_per_class is not None and not (run_dir / "labelled.json").is_file():
            write_json(run_dir / "labelled.json", _labelled_record(config, trainer.splits))
        if not (run_dir / "config.yaml").is_file():
            write_text(run_dir / "config.yaml", config.to_yaml())
    if resume and trainer.restore() and verbose:
        print(f"resuming {run_dir} at epoch {trainer.epoch + 1}, step {trainer.step}", file=sys.stderr)
    try:
        trainer.fit()
        run = trainer.finish() if test else Run(run_dir, config, None, trainer.best_val_accuracy)
    except (CifarlabError, StopRun) as e:
        trainer.record({"kind": "stopped", "reason": str(e).split(";")[0]})
        raise
    if test and config.train.report:
        _write_report(run_dir, config.train.device, verbose)
    return run


def build_trainer(config: Config, run_dir: Path, device: torch.device, source: Source | None = None,
                  verbose: bool = True, callbacks=()) -> Trainer:  # fmt: skip
    """The Trainer of `config`, writing into `run_dir` (seeded: the same config builds the
    same trainer); also what `lr-find` tests lrs on."""
    return _setup(config, device, source).trainer(config, run_dir, verbose, callbacks)


@dataclasses.dataclass(frozen=True)
class _Setup:
    """A run's data, model and loaders: all a Trainer needs but its folder."""

    model: nn.Module
    param_options: dict
    splits: Splits
    loaders: Loaders
    device: torch.device
    semi: SemiObjective | None
    teacher: Teacher | None

    def trainer(self, config: Config, run_dir: Path, verbose: bool, callbacks) -> Trainer:
        if config.train.tensorboard:
            from .viz.tensorboard import TensorBoardLogger

            callbacks = [*callbacks, TensorBoardLogger()]
        return Trainer(config, run_dir, self.model, self.param_options, self.splits, self.loaders, self.device,
                       _data_fingerprint(self.splits), verbose, callbacks, self.semi, self.teacher)  # fmt: skip


def _setup(config: Config, device: torch.device, source: Source | None, resumed: Path | None = None,
           teacher: Teacher | None = None) -> _Setup:  # fmt: skip
    """`resumed`: the folder of the run being resumed (its labelled.json holds a self-training
    run's pseudo-labels); `teacher`: optim.distill_from's, when the caller has built it."""
    configure(config.train)
    splits = make_splits(config.data)
    if config.semi.method == "selftrain":
        record = resumed / "labelled.json" if resumed is not None else None
        saved = read_json(record, "labelled.json") if record is not None and record.is_file() else None
        splits = pseudo_labelled(splits, config, device, saved)
    if config.optim.distill_from and teacher is None:  # before the seed: loading it draws no number of the run's
        teacher = Teacher(config, splits, device)
    seed_everything(config.train.seed)
    model, param_options = _build_model(config, len(splits.classes), source)
    loaders = _loaders(config, splits, device)
    semi = SemiObjective(config.semi) if config.semi.online else None
    return _Setup(model, param_options, splits, loaders, device, semi, teacher)


def _build_model(config: Config, num_classes: int, source: Source | None) -> tuple[nn.Module, dict]:
    """The net and its per-parameter optimizer options (fine-tuning strategies; none from scratch)."""
    if source is not None:
        return pretrained_model(config, num_classes, source)
    return create_model(config.model.name, num_classes, config.model.resized, **config.model.options), {}


def _loaders(config: Config, splits: Splits, device: torch.device) -> Loaders:
    """Training batches (this process's slice of every global batch) and evaluation shards."""
    c, world = config.train, distributed.world_size()
    if c.batch_size % world:
        raise CifarlabError(
            f"train.batch_size={c.batch_size} is the global batch, shared equally by the {world} processes; "
            f"choose a multiple of {world}"
        )
    if c.batch_size > len(splits.train):
        raise CifarlabError(f"train.batch_size={c.batch_size} is larger than the {len(splits.train)} training images")
    common = dict(mean=splits.mean, std=splits.std, device=device, channels_last=c.channels_last)
    views = 3 if config.optim.jsd_weight else 1  # the JSD loss: the clean images and two AugMix views
    train = DeviceLoader(splits.train, c.batch_size, augment=config.augment, shuffle=True, drop_last=True, seed=c.seed,
                         rank=distributed.rank(), world_size=world, views=views, **common)  # fmt: skip
    if config.semi.online:
        unlabelled = c.batch_size * config.semi.unlabelled_ratio
        if unlabelled > len(splits.unlabelled):
            raise CifarlabError(
                f"a step takes semi.unlabelled_ratio × train.batch_size = {unlabelled} unlabelled images, more than "
                f"the {len(splits.unlabelled)} of the pool; lower either"
            )
        train = SemiLoader(train, splits.unlabelled, config.semi)
    val = DeviceLoader(distributed.shard(splits.val), c.eval_batch_size, **common) if splits.val else None
    test = DeviceLoader(distributed.shard(splits.test), c.eval_batch_size, **common)
    held_out = splits.calibration_split() if c.calibrate else None
    calib = DeviceLoader(distributed.shard(held_out[1]), c.eval_batch_size, **common) if held_out else None
    return Loaders(train, val, test, calib)


def _data_fingerprint(splits: Splits) -> str:
    """What resuming checks the data against: a hash of every image and label of the splits
    (a fraction of a second for CIFAR), so moved data passes and changed data is refused."""
    digest = hashlib.blake2b(digest_size=16)
    for data in (splits.train, splits.val, splits.test, splits.calib):
        if data is not None:
            digest.update(data.images.contiguous().numpy().tobytes())
            digest.update(data.labels.numpy().tobytes())
    if splits.unlabelled is not None:
        digest.update(splits.unlabelled.images.contiguous().numpy().tobytes())
    return digest.hexdigest()


def _labelled_record(config: Config, splits: Splits) -> dict:
    """labelled.json of a few-labels run: which training images had their labels used (train,
    val and calibration are carved from these with data.split_seed), and a digest to compare runs by."""
    positions = splits.labelled_positions
    sizes = {name: len(data) if data is not None else 0
             for name, data in (("train", splits.train), ("val", splits.val), ("calib", splits.calib))}  # fmt: skip
    digest = hashlib.blake2b(positions.numpy().tobytes(), digest_size=16).hexdigest()
    teacher = {}
    if config.semi.teacher:
        added = teacher_labelled(splits)
        teacher = {"teacher": config.semi.teacher, "pseudo_labelled": int(added.sum()),
                   "pseudo_positions": splits.train_positions[added].tolist(),
                   "pseudo_labels": splits.train.labels[added].tolist()}  # fmt: skip
    return {"dataset": config.data.dataset, "labels_per_class": config.data.labels_per_class,
            "split_seed": config.data.split_seed, "labelled": len(positions), **sizes,
            "unlabelled": len(splits.unlabelled), **teacher, "digest": digest, "indices": positions.tolist()}  # fmt: skip


def _write_report(run_dir: Path, device: str, verbose: bool) -> None:
    """The report at the end of training is an extra: a failure is printed, and the finished
    run (eval.json, checkpoints) stays as it is."""
    try:
        from .viz.report import write_report  # matplotlib and captum load only when a report is written

        path = write_report(run_dir, device=device)
    except Exception as e:  # noqa: BLE001 - whatever broke, the trained run must survive it
        print(f"warning: no report ({type(e).__name__}: {e}); retry with `cifarlab report {run_dir}`", file=sys.stderr)
        return
    if verbose:
        print(f"report: {path}")


def bench(paths: list[str | Path], out: str | Path | None = None, threads: int | None = None, calls: int = 200,
          batches: int = 2, data_dir: str | None = None) -> tuple[dict, Path]:  # fmt: skip
    """Measure (compress/bench.py) and write OUT/bench.json and OUT/bench.png (accuracy vs
    latency and throughput); OUT defaults to the first path when it is a folder, else the
    current folder. `cifarlab report` shows a run folder's bench.json as its own section."""
    from .viz import plots  # matplotlib loads only when a figure is drawn

    if threads is not None:
        if threads < 1:
            raise CifarlabError(f"--threads must be at least 1 (got {threads})")
        torch.set_num_threads(threads)  # before the ONNX Runtime sessions are made: they take this count
    first = Path(paths[0])
    folder = Path(out) if out is not None else first if first.is_dir() else Path(".")
    if folder.exists() and not folder.is_dir():
        raise CifarlabError(f"--out '{folder}' is a file; give a folder")
    table = measure(paths, calls, batches, data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "bench.json", table)
    plots.save_png(plots.compression_tradeoff(table["rows"]), folder / "bench.png")
    return table, folder


def robustness(source: str | Path, settings: RobustnessConfig | None = None, data_dir: str | None = None,
               device: str = "auto", verbose: bool = True) -> tuple[dict, Path]:  # fmt: skip
    """Accuracy of a run's (best) model on the CIFAR-10-C corruptions × severities of its test
    images (robust/suite.py: generated once, then read from the cache) and under FGSM / PGD
    attacks; writes OUT/robustness.json and the heatmap OUT/robustness.png (OUT: the run's
    folder, or `settings.out`), which `cifarlab report` shows. No test-time augmentation."""
    from .robust import score, suite
    from .viz import plots  # matplotlib loads only when a figure is drawn

    settings = (settings or RobustnessConfig()).validate()
    started = time.perf_counter()
    dev = select_device(device)
    checkpoint = load_checkpoint(source, dev)
    if settings.attacks and isinstance(checkpoint.model, OnnxModel):
        raise CifarlabError(f"'{source}' holds an ONNX model: attacks need gradients; pass --attack none, or "
                            f"measure the float run")  # fmt: skip
    config = checkpoint.config(data_dir)
    test = make_splits(config.data).test
    if settings.limit is not None:
        if settings.limit > len(test):
            raise CifarlabError(f"--limit={settings.limit} is more than the {len(test)} test images of the run")
        test = test.subset(torch.arange(settings.limit))
    folder = Path(settings.out) if settings.out else _run_folder(checkpoint.path)
    if folder.exists() and not folder.is_dir():
        raise CifarlabError(f"--out '{folder}' is a file; give a folder")
    say = print if verbose else (lambda *args, **kwargs: None)

    def accuracy(images: torch.Tensor) -> float:
        loader = checkpoint_loader(checkpoint, config, ImageSet(images, test.labels, test.classes), dev)
        logits, labels = predict(checkpoint.model, loader, "none", autocast(dev, config.train.precision))
        return (finite(logits, source).argmax(1) == labels).double().mean().item()

    clean = accuracy(test.images)
    say(f"{checkpoint.path}: clean accuracy {clean:.2%} on {len(test)} test images")
    clean_pixels = test.images.permute(0, 2, 3, 1).contiguous().numpy()
    table, costs = {}, {}
    for name in settings.corruptions:
        made = suite.corrupted(clean_pixels, name, settings.seed, log=lambda note: say(note, file=sys.stderr))
        start = time.perf_counter()
        table[name] = {str(s): accuracy(torch.from_numpy(made.images[s - 1]).permute(0, 3, 1, 2).contiguous())
                       for s in settings.severities}  # fmt: skip
        costs[name] = {"generate_seconds": made.seconds, "cached": made.cached,
                       "evaluate_seconds": time.perf_counter() - start}  # fmt: skip
        say(f"  {name:<18} " + " ".join(f"{a:7.2%}" for a in table[name].values())
            + ("  (cached)" if made.cached else f"  (generated in {made.seconds:.1f} s)"))  # fmt: skip
    corruption_seconds = time.perf_counter() - started
    adversarial = _attack_accuracies(checkpoint, test, settings, dev)
    for name, result in adversarial.items():
        say(f"  {name:<18} {result['accuracy']:7.2%}  (eps {result['eps']:.4g}, {result['steps']} step(s))")
    result = {
        "source": str(checkpoint.path), "dataset": config.data.dataset, "split": "test", "num_images": len(test),
        "seed": settings.seed, "tta": "none", "clean_accuracy": clean, "severities": settings.severities,
        "corruptions": table, "summary": score.summarize(table, clean), "attacks": adversarial,
        "autoattack": "not included (see cifarlab/robust/attacks.py)",
        "costs": costs, "corruption_seconds": corruption_seconds, "seconds": time.perf_counter() - started,
        "cache": str(suite.cache_folder()), "hardware": hardware(dev),
    }  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "robustness.json", result)
    if table:
        plots.save_png(plots.corruption_heatmap(table, clean), folder / "robustness.png")
    return result, folder


def _attack_accuracies(checkpoint, test: ImageSet, settings: RobustnessConfig, device: torch.device) -> dict:
    """Accuracy under each attack, the model's normalization inside; each attack draws its
    random starts from its own generator (seeded alike), so leaving one out changes no other."""
    from .robust import attacks

    chosen = attacks.standard_attacks(settings.attacks, settings.eps, settings.eps_l2, settings.steps)
    checkpoint.model.to(memory_format=torch.contiguous_format)
    model = attacks.Normalized(checkpoint.model, checkpoint.mean, checkpoint.std).to(device).eval()
    results = {}
    for a in chosen:
        correct, seconds = attacks.robust_accuracy(model, test.images, test.labels, a,
                                                   torch.Generator().manual_seed(settings.seed), settings.batch_size)  # fmt: skip
        results[a.name] = {"accuracy": correct / len(test), "norm": a.norm, "eps": a.eps, "steps": a.steps,
                           "alpha": a.alpha, "random_start": a.random_start, "seconds": seconds}  # fmt: skip
    return results


# ----------------------------------------------------------------------------- labels
def active(settings: ActiveConfig, recipe: str | None = None, sets=(), seed: int | None = None, epochs: int | None = None,
           out: str | Path | None = None, data_dir: str | None = None, device: str | None = None,
           verbose: bool = True) -> tuple[dict, Path]:  # fmt: skip
    """Simulated active learning (labels/active.py): round 0 on `settings.start` random labels,
    then `settings.rounds` rounds that each label `settings.budget` more images chosen by
    `settings.strategy` and retrain from scratch with `recipe` (and `sets`, applied last).
    Writes OUT/round-NN (ordinary runs), OUT/labelled-NN.json, OUT/active.json and the curve
    OUT/active.png; OUT defaults to runs/active-<strategy> (-2, -3, …). The rounds hold out
    no validation or calibration images unless `sets` ask for them (then carved from each
    round's labels) and write no HTML report (train.report=true does)."""
    if os.environ.get("WORLD_SIZE", "1") != "1":
        raise CifarlabError("active learning runs in one process; train a single round under torchrun instead")
    settings.validate()
    flags = {"data": _given({"val_size": 0, "calib_size": 0, "data_dir": data_dir}),
             "train": _given({"seed": seed, "epochs": epochs, "device": device, "report": False})}  # fmt: skip
    config = resolve(recipe, flags=flags, sets=sets)
    chosen = config.data.few_labels
    if chosen:
        raise CifarlabError(f"active learning chooses each round's training images itself; leave out data.{chosen[0]}")
    if config.optim.distill_from:
        raise CifarlabError("active learning rounds learn from the labels bought so far only; leave out "
                            "optim.distill_from (a teacher passes on labels they have not bought)")  # fmt: skip
    images = training_file(config.data)
    settings.validate(len(images))
    folder = Path(out) if out else None
    if folder is not None and folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise CifarlabError(f"--out '{folder}' exists and is not an empty folder; choose another --out")
    made = folder is None or not folder.exists()
    folder = folder or _new_folder(Path("runs") / f"active-{settings.strategy}")
    folder.mkdir(parents=True, exist_ok=True)

    def draw(result: dict) -> None:
        from .viz import plots  # matplotlib loads only when a figure is drawn

        plots.save_png(plots.active_learning_curves(summarize([result])), folder / "active.png")

    try:
        result = active_learning(config, settings, images, folder, lambda c: train(c, verbose=verbose), draw, verbose)
    except BaseException:
        if not (folder / "active.json").exists():  # no round finished: leave nothing behind
            shutil.rmtree(folder, ignore_errors=True)
            if not made:
                folder.mkdir()  # the empty folder given as --out stays, empty
        raise
    return result, folder


def compare_active(paths: list[str | Path], out: str | Path = "active.png") -> tuple[dict, Path]:
    """Accuracy against labels per strategy (mean ± std over the results of each) from
    active.json files or their folders, drawn into `out`; returns the summary and the path."""
    from .viz import plots

    summary = summarize(read_results(paths))
    return summary, plots.save_png(plots.active_learning_curves(summary), Path(out))


def audit_labels(source: str | Path, split: str = "test", folds: int = 5, top: int = 20, epochs: int | None = None,
                 out: str | Path | None = None, data_dir: str | None = None, device: str | None = None, sets=(),
                 verbose: bool = True) -> tuple[LabelIssues, Path, Path | None]:  # fmt: skip
    """Rank the images of a run's `split` whose given label its model most doubts (labels/
    audit.py); write OUT/label-audit-<split>.csv (every flagged image, most doubted first) and
    .png (the first `top`, given → suspected); OUT: the run's folder. Returns the issues and
    both paths (no PNG when nothing is flagged).

    test: the run's model scores the test images it never trained on (with its TTA and
    fitted temperature). train: the images the run trained on, scored out of fold: `folds`
    new runs of the run's config (its recipe, seed; `epochs` and `sets` override), each on
    the other folds' images with no validation or calibration hold-out, in
    OUT/label-audit-train-folds/fold-NN: `folds` trainings on (folds−1)/folds of the images.
    `device`: where to score (default auto) and train the folds (default: the run's)."""
    if split not in ("train", "test"):
        raise CifarlabError(f"unknown split '{split}'; choose 'train' or 'test'")
    if top < 1:
        raise CifarlabError(f"--top={top} is out of range; it must be at least 1")
    dev = select_device(device or "auto")
    checkpoint = load_checkpoint(source, dev)
    require_cleanlab()  # before any scoring or training
    config = checkpoint.config(data_dir)
    folder = Path(out) if out else _run_folder(checkpoint.path)
    if folder.exists() and not folder.is_dir():
        raise CifarlabError(f"--out '{folder}' is a file; give a folder")
    splits = make_splits(config.data)
    if split == "test":
        data, positions = splits.test, torch.arange(len(splits.test))
        probs = checkpoint_probabilities(checkpoint, config, data, dev)
    else:
        data, positions = splits.train, splits.train_positions
        check_folds(folds, len(data))
        probs = _out_of_fold(config, positions, folds, folder / "label-audit-train-folds", epochs, device, sets, verbose)
    found = issues(data, positions, probs)
    folder.mkdir(parents=True, exist_ok=True)
    table = folder / f"label-audit-{split}.csv"
    write_csv(table, found)
    picture = table.with_suffix(".png")
    if not len(found.index):
        picture.unlink(missing_ok=True)  # an earlier audit's picture would show images no longer flagged
        return found, table, None
    from .viz import plots  # matplotlib loads only when a figure is drawn

    shown = min(top, len(found.index))
    titles = [f"#{i} given {data.classes[g]}\nsuspected {data.classes[s]}" for i, g, s in
              zip(found.index[:shown].tolist(), found.given[:shown].tolist(), found.suspected[:shown].tolist())]  # fmt: skip
    grid = plots.image_grid(found.images[:shown], titles, ["tab:red"] * shown, columns=min(8, shown))
    return found, table, plots.save_png(grid, picture)


def _out_of_fold(config: Config, positions: torch.Tensor, folds: int, folder: Path, epochs: int | None,
                 device: str | None, sets, verbose: bool) -> torch.Tensor:  # fmt: skip
    """Out-of-fold probabilities of the training-file images at `positions` from `folds` runs
    of the run's `config` in `folder` (new), each with no validation or calibration hold-out;
    the folder goes again if any fold fails: a later audit starts afresh."""
    if folder.exists() and any(folder.iterdir()):
        raise CifarlabError(f"'{folder}' holds an earlier audit's fold runs; delete it, or pass --out")
    flags = {"data": {"labelled_indices": None, "train_subset": None, "labels_per_class": None, "val_size": 0,
                      "calib_size": 0},
             "semi": {"method": "none", "teacher": None},  # a semi-supervised run's folds learn from their labels only
             "optim": {"distill_from": None},  # as do a distilled run's: its teacher saw the held-out folds' labels
             "train": _given({"report": False, "device": device, "epochs": epochs})}  # fmt: skip
    fold_config = resolve(flags=flags, sets=sets, base=config)
    try:
        return out_of_fold_probabilities(fold_config, positions, folds, folder, lambda c: train(c, verbose=verbose))
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def _given(settings: dict) -> dict:
    """The settings that were given (not None): a flags layer leaves the others as they are."""
    return {key: value for key, value in settings.items() if value is not None}
