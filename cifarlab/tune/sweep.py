"""`cifarlab sweep`: hyperparameter search over ordinary runs, on Optuna.

Optuna does what it does well: the study in a database (several processes, or machines with
a shared folder, join one study by its --storage and name; a re-run continues it), TPE
sampling (seeded: trial k draws with seed + k, so a study repeats, and two processes never
draw the same parameters), pruning, and parameter importances. cifarlab keeps the rest: each
trial is a run made by `run.train` in OUT/trial-NNN (this module sits above run.py, as the CLI
does: a sweep is many runs), pruned through the trainer's generic per-epoch callback, so the
engine knows nothing of Optuna.

Honest selection: trials are scored by their best validation accuracy, pruned on validation
accuracy, and only the best trial is tested, once, when the study is complete, by resuming
its run (its `best` checkpoint, as `cifarlab train --out TRIAL --resume` would).

Budget: `trials` is the size of the study, not of one process: every process started with
the same command takes trials until the study holds that many (finished, failed or running),
so N processes share the work and a re-run after an interruption finishes it. Taking a trial
is serialized by a lock file in OUT, so the count is exact for every process that shares OUT.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import shutil
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ..config import Config, from_dict, parse_assignment, read_yaml, resolve
from ..engine.trainer import StopRun
from ..errors import CifarlabError, describe_os_error, first_line, import_extra
from ..fileio import write_json
from ..run import train
from . import space as spaces

optuna = import_extra("optuna", "tune")
TrialState = optuna.trial.TrialState

PRUNERS = {
    "median": "stop a trial whose validation accuracy at an epoch (from the 2nd) is below the median of earlier "
              "trials' at that epoch, once 5 trials have finished",
    "halving": "successive halving (Optuna's SuccessiveHalvingPruner: epochs as the resource, reduction factor 4)",
    "none": "every trial runs all its epochs",
}  # fmt: skip


@dataclass
class SweepSettings:
    recipe: str  # the recipe every trial starts from
    space: str  # the search space file (tune/space.py)
    trials: int  # the size of the study, shared by every process that joins it
    epochs: int | None = None  # train.epochs of every trial; None = the recipe's
    storage: str | None = None  # an Optuna storage URL; None = sqlite:///OUT/study.db
    study: str | None = None  # None = sweep-<recipe>
    pruner: str = "median"  # one of PRUNERS
    out: str | None = None  # None = runs/<study>
    sets: list[str] = field(default_factory=list)  # `--set` lines for every trial
    data_dir: str | None = None  # where the data is on this machine (not part of the study: machines differ)

    @property
    def study_name(self) -> str:
        return self.study or f"sweep-{self.recipe}"

    @property
    def folder(self) -> Path:
        return Path(self.out or Path("runs") / self.study_name)

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{self.folder / 'study.db'}"


@dataclass
class Sweep:
    settings: SweepSettings
    study: object  # the optuna.Study, read afresh by each use (other processes add to it)
    space_file: dict  # the search space as written

    def locked(self):
        """Hold the sweep's lock (to write its summary while no other process changes it)."""
        return _exclusive(self.settings.folder)


def sweep(settings: SweepSettings, verbose: bool = True) -> Sweep:
    """Run trials until the study holds `settings.trials`; then, if no trial is still running,
    test the best one. Returns the sweep for its summary (tune/summary.py)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # this module prints one line per trial itself
    say = print if verbose else (lambda *a, **k: None)
    if settings.trials < 1:
        raise CifarlabError(f"--trials must be at least 1 (got {settings.trials})")
    if settings.pruner not in PRUNERS:
        raise CifarlabError(f"--pruner {settings.pruner!r} is not allowed; choose one of: {', '.join(PRUNERS)}")
    written, space = spaces.read_space(settings.space)
    _check_sets(settings, space)
    base = _config(settings, {})
    if base.data.val_size == 0:
        raise CifarlabError(
            f"recipe '{settings.recipe}' holds out no validation images (data.val_size=0), and a sweep selects on "
            f"validation accuracy only; add --set data.val_size=5000"
        )
    spaces.check_space(settings.space, space, lambda params: _config(settings, params))
    folder = settings.folder
    if folder.exists() and not folder.is_dir():
        raise CifarlabError(f"--out '{folder}' is a file, not a folder; choose another --out")
    made = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with _exclusive(folder):
            study = _open_study(settings, written, space, base)
            _fail_orphans(study)
    except CifarlabError:
        if made:  # a study that could not be opened leaves nothing behind
            shutil.rmtree(folder)
        raise
    while (trial := _take_trial(study, settings, space, base.train.seed)) is not None:
        _run_trial(study, trial, settings, say)
    with _exclusive(folder):
        if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            _test_best(study, folder, say)
    return Sweep(settings, study, written)


def best_layer(settings: SweepSettings, params: dict) -> dict:
    """The settings that make the recipe into the trial with `params` (the --set lines, the
    epochs, the parameters), as one config layer: best.yaml, for `cifarlab train --config`."""
    layer = {"recipe": settings.recipe}
    for line in settings.sets:
        layer = _deep_merge(layer, parse_assignment(line))
    extra = {"train.epochs": settings.epochs} if settings.epochs is not None else {}
    return _deep_merge(layer, spaces.nested({**extra, **params}))


# ------------------------------------------------------------------------------ configs
def _config(settings: SweepSettings, params: dict, folder: Path | None = None) -> Config:
    """recipe → --set lines → --epochs → the trial's parameters, in the trial's folder."""
    here = {"train.out": str(folder) if folder else None, "data.data_dir": settings.data_dir}
    layer = _deep_merge(best_layer(settings, params), spaces.nested({k: v for k, v in here.items() if v is not None}))
    return resolve(settings.recipe, flags=layer)


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for key, value in b.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _check_sets(settings: SweepSettings, space: dict) -> None:
    """A --set of a searched key, or of one the sweep sets itself, would be silently lost."""
    for line in settings.sets:
        key = line.partition("=")[0].strip()
        if key in space:
            raise CifarlabError(f"--set {line!r}: {key} is searched by the space '{settings.space}'; leave one out")
        if key == "train.out":
            raise CifarlabError(f"--set {line!r}: the sweep puts each trial in OUT/trial-NNN; choose OUT with --out")


# -------------------------------------------------------------------------------- study
@contextmanager
def _exclusive(folder: Path) -> Iterator[None]:
    """An flock on OUT/.sweep.lock: one process at a time opens the study, takes a trial or
    tests the best (quick steps; the trials themselves run unlocked)."""
    fd = os.open(folder / ".sweep.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _open_study(settings: SweepSettings, written: dict, space: dict, base: Config):
    """Create the study, or join it if it exists: then it must be the same sweep. A new one
    starts with the recipe's own values as trial 0 (where they lie in the space), the
    baseline the others are compared with."""
    pruner = {"median": lambda: optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2),
              "halving": optuna.pruners.SuccessiveHalvingPruner,
              "none": optuna.pruners.NopPruner}[settings.pruner]()  # fmt: skip
    storage = settings.storage_url
    try:
        if storage.startswith("sqlite:///"):  # wait for another process's write instead of failing at once
            storage = optuna.storages.RDBStorage(storage, engine_kwargs={"connect_args": {"timeout": 60}})
        study = optuna.create_study(study_name=settings.study_name, storage=storage, direction="maximize",
                                    pruner=pruner, load_if_exists=True)  # fmt: skip
    except Exception as e:  # noqa: BLE001 - a bad URL or an unreachable database: SQLAlchemy's many kinds
        raise CifarlabError(f"--storage {settings.storage_url!r}: cannot open it ({first_line(e)})") from None
    made = {"recipe": settings.recipe, "space": written, "sets": list(settings.sets), "epochs": settings.epochs}
    if not study.user_attrs:
        if any(settings.folder.glob("trial-*")):
            raise CifarlabError(f"'{settings.folder}' holds the trials of another study; choose another --out")
        for key, value in made.items():
            study.set_user_attr(key, value)
        defaults = {key: _value(base, key) for key in space}
        if all(spaces.contains(space[key], value) for key, value in defaults.items()):
            study.enqueue_trial(defaults, user_attrs={"baseline": True})
    differs = [key for key, value in made.items() if study.user_attrs.get(key) != value]
    if differs:
        raise CifarlabError(
            f"study '{settings.study_name}' in {settings.storage_url} was made with another {', '.join(differs)} "
            f"({'; '.join(f'{k}: {study.user_attrs.get(k)!r}' for k in differs)}); to continue it run the same sweep, "
            f"or pass --study NAME for a new one"
        )
    return study


def _value(config: Config, key: str):
    """A config setting by its dotted key (mapping settings included); None if unset."""
    value = config.to_dict()
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _fail_orphans(study) -> None:
    """Trials left running by a process of this machine that has ended (killed, the machine
    restarted) are marked failed, so the study can complete; a trial of another machine is
    left to it. (The one failure without a `reason`: see summary.reason.)"""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        host, pid = trial.user_attrs.get("host"), trial.user_attrs.get("pid")
        if host == socket.gethostname() and pid is not None and not _alive(pid):
            study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _take_trial(study, settings: SweepSettings, space: dict, seed: int):
    """The next trial, or None once the study holds `settings.trials` (waiting ones aside)."""
    with _exclusive(settings.folder):
        taken = [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING]
        if len(taken) >= settings.trials:
            return None
        study.sampler = optuna.samplers.TPESampler(seed=seed + len(taken))
        trial = study.ask(space)
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        return trial


# ------------------------------------------------------------------------------- trials
class _ReportValidation:
    """The trainer callback of a trial: each epoch's validation accuracy goes to the trial,
    and the run stops (StopRun) when the pruner says so; the last epoch is never pruned."""

    def __init__(self, trial):
        self.trial, self.record = trial, None

    def on_log(self, trainer, record: dict) -> None:
        if record.get("kind") == "epoch" and "val_acc" in record:
            self.record = record
            self.trial.report(record["val_acc"], record["epoch"])

    def on_epoch_end(self, trainer) -> None:
        if self.record and trainer.epoch < trainer.config.train.epochs and self.trial.should_prune():
            raise StopRun(f"pruned by the sweep after epoch {self.record['epoch']} "
                          f"(validation accuracy {self.record['val_acc']:.2%})")  # fmt: skip


def _run_trial(study, trial, settings: SweepSettings, say) -> None:
    """Train the trial's run and tell the study how it ended; a crash or a NaN loss is a
    failed trial with its reason (one line), and the sweep goes on. Ctrl-C fails the trial and
    stops this process: a re-run continues the study."""
    folder = settings.folder / f"trial-{trial.number:03d}"
    shown = " ".join(f"{k}={short(v)}" for k, v in trial.params.items())
    say(f"trial {trial.number}{' (the recipe as it is)' if trial.user_attrs.get('baseline') else ''}: {shown}")
    start, value, reason = time.perf_counter(), None, None
    try:
        run = train(_config(settings, trial.params, folder), verbose=False, callbacks=[_ReportValidation(trial)],
                    test=False)  # fmt: skip
        value, state = run.best_val_accuracy, TrialState.COMPLETE
    except StopRun as e:
        state, reason = TrialState.PRUNED, str(e)
    except KeyboardInterrupt:
        _finish_trial(study, trial, folder, TrialState.FAIL, None, "interrupted (Ctrl-C)")
        raise
    except Exception as e:  # noqa: BLE001 - whatever broke this trial, the study goes on
        state = TrialState.FAIL
        reason = (describe_os_error(e) if isinstance(e, OSError) else first_line(e) if isinstance(e, CifarlabError)
                  else f"{type(e).__name__}: {first_line(e)}")  # fmt: skip
    _finish_trial(study, trial, folder, state, value, reason)
    seconds = time.perf_counter() - start
    outcome = f"best validation accuracy {value:.2%}" if state == TrialState.COMPLETE else (
        reason if state == TrialState.PRUNED else f"failed: {reason}")  # fmt: skip
    say(f"trial {trial.number}: {outcome}  [{seconds:.0f}s]")


def _finish_trial(study, trial, folder: Path, state, value: float | None, reason: str | None) -> None:
    """Tell the study, and mark the run's folder (trial.json) with the same outcome."""
    if reason:
        trial.set_user_attr("reason", reason)
    study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
    if folder.is_dir():
        write_json(folder / "trial.json", {
            "study": study.study_name, "trial": trial.number, "state": state.name.lower(), "params": trial.params,
            "best_val_accuracy": value, "reason": reason})  # fmt: skip


def short(value) -> str:
    """A parameter's value for people: floats to 4 significant digits."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# --------------------------------------------------------------------------- final test
def _test_best(study, folder: Path, say) -> None:
    """Test the best complete trial once, by resuming its run (its `best` checkpoint and the
    run's own final test, and its report if train.report is on); a trial tested before is
    not tested again."""
    best = best_trial(study)
    if best is None:
        return
    run_dir = folder / f"trial-{best.number:03d}"
    config = from_dict(read_yaml(run_dir / "config.yaml"))
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, out=str(run_dir)))
    if not (run_dir / "eval.json").is_file():
        say(f"testing the best trial, {best.number} (validation accuracy {best.value:.2%}), once on the test set")
    train(config, resume=True, verbose=False)


def best_trial(study):
    """The complete trial of the highest validation accuracy (None before one is complete)."""
    return max(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.value, default=None)
