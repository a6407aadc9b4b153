"""Tuning: the lr range test leaves the trainer exactly as it found it and suggests a usable
lr; sweeps refuse bad search spaces in one line, keep pruned and failed trials as marked run
folders, and share one SQLite study between processes without losing or repeating a trial."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cifarlab.cli import main
from cifarlab.config import resolve
from cifarlab.engine.lr_range import range_test, suggest
from cifarlab.engine.metrics_log import read_metrics
from cifarlab.engine.runtime import rng_state
from cifarlab.errors import CifarlabError
from cifarlab.run import build_trainer

optuna = pytest.importorskip("optuna")

from cifarlab.tune.summary import write_summary  # noqa: E402
from cifarlab.tune.sweep import SweepSettings, sweep  # noqa: E402

# a trial in a second or two: LeNet on 300 images, 100 held out for validation
TINY = ["model.name=lenet", "data.train_subset=300", "data.val_size=100", "train.batch_size=50", "train.report=false"]


def write_space(text: str, name: str = "space.yaml") -> str:
    Path(name).write_text(text)
    return name


# ------------------------------------------------------------------------------ lr range test
RESTORE_CASES = {
    # EMA and label smoothing: state beyond the weights and the optimizer
    "resnet20": ("resnet20", ["optim.ema_decay=0.9", "optim.label_smoothing=0.1", "optim.grad_clip=2.0"]),
    # per-group lrs, Muon, decoupled (per-1024) weight decay, lookahead, the whitening init
    "fast": ("fast", ["model.options.widths=[8, 16, 16]", "optim.lookahead_every=2", "optim.lookahead_start_epoch=0",
                      "data.val_size=50"]),
    # semi-supervised: the step takes the unlabelled views too
    "fast-semi": ("fast-semi", ["model.options.widths=[8, 16, 16]", "data.labels_per_class=10", "semi.unlabelled_ratio=2",
                                "semi.threshold=0.12"]),
}  # fmt: skip


@pytest.mark.parametrize("case", RESTORE_CASES)
def test_range_test_restores_the_trainer_bit_for_bit(case, synthetic_root, tmp_path):
    recipe, sets = RESTORE_CASES[case]

    def trainer():
        config = resolve(recipe, sets=[f"data.data_dir={synthetic_root}", "train.batch_size=50", *sets])
        built = build_trainer(config, tmp_path / "run", torch.device("cpu"), verbose=False)
        built.init_from_data()
        for batch in list(built.train_loader.epoch(0))[:3]:  # momentum, EMA and running sums under way
            built.train_step(*batch)
        return built

    def steps(built):
        for batch in list(built.train_loader.epoch(1))[:3]:
            built.train_step(*batch)
        return {k: v.clone() for k, v in built.eval_model.state_dict().items()}

    tested, untouched = trainer(), trainer()
    weights = {k: v.clone() for k, v in tested.eval_model.state_dict().items()}
    optimizers = copy.deepcopy([o.state_dict() for o in tested.optimizers])
    rng, position = rng_state()["torch"].clone(), (tested.epoch, tested.batch, tested.step)
    result = range_test(tested, 1e-4, 1e4, 12, tested.config.optim.lr)
    assert len(result.lrs) >= 2 and result.lrs[0] == pytest.approx(1e-4)

    assert all(torch.equal(v, weights[k]) for k, v in tested.eval_model.state_dict().items())
    for restored, saved in zip(tested.optimizers, optimizers):
        now = restored.state_dict()
        assert [{k: v for k, v in g.items() if k != "params"} for g in now["param_groups"]] == \
               [{k: v for k, v in g.items() if k != "params"} for g in saved["param_groups"]]  # fmt: skip
        assert now["state"].keys() == saved["state"].keys()
        assert all(torch.equal(now["state"][i][k], v) for i, s in saved["state"].items() for k, v in s.items()
                   if isinstance(v, torch.Tensor))  # fmt: skip
    assert torch.equal(rng_state()["torch"], rng) and (tested.epoch, tested.batch, tested.step) == position
    # nothing leaks: training on from here gives the weights of a trainer that never ran the test
    after, reference = steps(tested), steps(untouched)
    assert all(torch.equal(v, reference[k]) for k, v in after.items())


def test_scaling_keeps_decoupled_weight_decay(synthetic_root, tmp_path):
    """per_1024 (fast): lrs × f, weight decay ÷ f, as a run whose lrs are all × f has it."""
    config = resolve("fast", sets=[f"data.data_dir={synthetic_root}", "train.batch_size=50",
                                   "model.options.widths=[8, 16, 16]"])  # fmt: skip
    trainer = build_trainer(config, tmp_path / "run", torch.device("cpu"), verbose=False)
    before = [(g["peak_lr"], g.get("weight_decay")) for o in trainer.optimizers for g in o.param_groups]
    x, y = next(iter(trainer.train_loader.epoch(0)))
    trainer.train_step(x, y, lr_scale=4.0)
    trainer.train_step(x, y, lr_scale=0.5)
    after = [(g["lr"], g.get("weight_decay")) for o in trainer.optimizers for g in o.param_groups]
    for (peak, decay), (lr, now) in zip(before, after):
        assert lr == pytest.approx(peak * 0.5)
        assert (now is None) == (decay is None) and (decay is None or now == pytest.approx(decay / 0.5))


def test_the_suggestion_is_a_third_of_the_lr_of_the_lowest_smoothed_loss():
    lrs = [1e-4 * 10 ** (i / 10) for i in range(41)]  # 1e-4 .. 1
    valley = [abs(i - 30) + 1.0 for i in range(41)]  # lowest at i = 30: lr 0.1
    suggestion, note = suggest(lrs, valley, valley, lrs[0])
    assert suggestion == pytest.approx(0.1 / 3) and "lowest (1) at lr 0.1" in note
    suggestion, note = suggest(lrs, valley, [math.nan, *valley[1:]], lrs[0])  # a NaN is skipped, not the minimum
    assert suggestion == pytest.approx(0.1 / 3)
    falling = [50.0 - i for i in range(41)]
    suggestion, note = suggest(lrs, falling, falling, lrs[0])  # still falling at the end
    assert suggestion == pytest.approx(1 / 3) and "still falling" in note
    # the loss never fell: the minimum is within the first decade of the range
    rising = [float(i) for i in range(41)]
    assert suggest(lrs, rising, rising, lrs[0])[0] is None
    assert suggest(lrs, [math.inf] * 41, [math.inf] * 41, lrs[0]) == (None, "no finite loss was measured; start lower (--start)")


def test_no_suggestion_without_a_clear_dip_below_the_starting_loss():
    lrs = [1e-4 * 10 ** (i / 10) for i in range(41)]
    noisy = [2.33 + (0.02 if i % 2 else -0.02) for i in range(41)]  # the first decade's median: 2.33
    shallow = [2.33 - 0.04 * max(0, 1 - abs(i - 30) / 10) for i in range(41)]  # 1.7% below it at lr 0.1
    suggestion, note = suggest(lrs, noisy, shallow, lrs[0])
    assert suggestion is None and "fell only from 2.33 to 2.29" in note and "no clear dip" in note
    deep = [2.33 - 0.2 * max(0, 1 - abs(i - 30) / 10) for i in range(41)]  # 8.6% below: a clear dip
    assert suggest(lrs, noisy, deep, lrs[0])[0] == pytest.approx(0.1 / 3)
    # the starting loss is the median of the first decade's raw losses: one high first loss does not make a dip
    spike = [9.0, *noisy[1:]]
    assert suggest(lrs, spike, shallow, lrs[0])[0] is None


@pytest.mark.slow
def test_lr_find_suggests_a_finite_lr_inside_the_range(real_root, capsys):
    # 70 steps of 128 images: enough for a clear dip (ResNet-20's loss falls ~9% from its start here;
    # 40 steps of 32 images fell 0.4%, and then there is rightly no suggestion)
    start, end = 1e-4, 10.0
    code = main(["lr-find", "--recipe", "resnet20", "--start", str(start), "--end", str(end), "--steps", "70",
                 "--data-dir", str(real_root), "--set", "data.train_subset=2000", "--set", "train.batch_size=128",
                 "--out", "found"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    record = json.loads(Path("found/lr_find.json").read_text())
    suggestion = record["suggestion"]
    assert suggestion is not None and math.isfinite(suggestion) and start <= suggestion <= end, record["note"]
    assert len(record["lrs"]) == len(record["losses"]) == len(record["smoothed"]) <= 70
    assert record["lrs"] == sorted(record["lrs"]) and record["lrs"][0] == pytest.approx(start)
    assert Path("found/lr_find.png").stat().st_size > 10_000
    (line,) = [line for line in out.splitlines() if line.startswith("use it: ")]
    assert line == f"use it: --set optim.lr={record['sets'][0].partition('=')[2]}"
    assert float(record["sets"][0].partition("=")[2]) == pytest.approx(suggestion, rel=1e-2)
    # the printed line is a setting the CLI takes as it is
    assert resolve("resnet20", sets=[record["sets"][0]]).optim.lr == pytest.approx(suggestion, rel=1e-2)


def test_lr_find_scales_every_group_of_a_recipe_together(synthetic_root, capsys):
    code = main(["lr-find", "--recipe", "fast", "--start", "1", "--end", "1000", "--steps", "8", "--data-dir",
                 str(synthetic_root), "--set", "model.options.widths=[8, 16, 16]", "--set", "train.batch_size=50",
                 "--out", "found"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "the head, filters group(s) have lrs of their own" in out
    assert "the test scaled every group by the same factor as optim.lr" in out
    record = json.loads(Path("found/lr_find.json").read_text())
    assert set(record["recipe_lrs"]) == {"optim.lr", "optim.groups.head.lr", "optim.groups.filters.lr"}
    if record["suggestion"] is not None:  # every group's lr × the one factor
        values = dict(line.split("=") for line in record["sets"])
        for key, lr in record["recipe_lrs"].items():
            assert float(values[key]) == pytest.approx(lr * record["factor"], rel=1e-2)


@pytest.mark.parametrize("args, message", [
    (["--start", "1", "--end", "0.1"], "give finite lrs with 0 < start < end"),
    (["--steps", "2"], "at least 5 steps"),
])  # fmt: skip
def test_lr_find_refuses_a_bad_range(args, message, synthetic_root, capsys):
    assert main(["lr-find", "--recipe", "tutorial", "--data-dir", str(synthetic_root), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err
    assert not Path("runs").exists()


# ------------------------------------------------------------------------------- sweep
def settings(space: str, trials: int, *sets: str, data_root: Path, **options) -> SweepSettings:
    return SweepSettings("resnet20", space, trials, options.pop("epochs", 1), sets=[*TINY, *sets],
                         data_dir=str(data_root), out="sweep", **options)  # fmt: skip


@pytest.mark.parametrize("space, message", [
    ("optim.lrr: {loguniform: [0.01, 1.0]}", "unknown key 'optim.lrr'"),
    ("optim.lr: {loguniform: [1.0, 0.1]}", "the range [1.0, 0.1] is empty; give [low, high] with low < high"),
    ("optim.lr: {uniform: [0.1, 0.1]}", "the range [0.1, 0.1] is empty"),
    ("optim.lr: {normal: [0.1, 0.01]}", "normal is not a distribution; give one of loguniform, uniform, int, choice"),
    ("optim.lr: [0.01, 1.0]", "is not a distribution"),
    ("optim.lr: {loguniform: [0, 1.0]}", "loguniform needs low > 0"),
    ("optim.lr: {uniform: [a, 1.0]}", "needs two finite numbers"),
    ("train.batch_size: {choice: [64]}", "choice needs a list of two or more values"),
    ("train.epochs: {uniform: [1, 3]}", "train.epochs must be of type int"),
    ("optim.label_smoothing: {uniform: [0.0, 1.5]}", "optim.label_smoothing=1.5 is out of range"),
    ("# nothing yet\n", "holds no settings"),
])  # fmt: skip
def test_a_bad_search_space_is_one_error_line(space, message, synthetic_root, capsys):
    path = write_space(space)
    with pytest.raises(CifarlabError, match=message.replace("[", r"\[").replace("]", r"\]")):
        sweep(settings(path, 2, data_root=synthetic_root), verbose=False)
    code = main(["sweep", "--recipe", "resnet20", "--space", path, "--trials", "2", "--data-dir", str(synthetic_root),
                 *[a for s in TINY for a in ("--set", s)]])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and message in err
    assert not Path("runs").exists() and not Path("sweep").exists()  # nothing written


def test_a_sweep_refuses_a_recipe_without_validation_images(synthetic_root):
    path = write_space("optim.lr: {loguniform: [0.01, 1.0]}")
    with pytest.raises(CifarlabError, match="selects on validation accuracy only; add --set data.val_size=5000"):
        sweep(settings(path, 2, "data.val_size=0", data_root=synthetic_root), verbose=False)


def test_a_pruned_trial_leaves_a_complete_run_folder_marked_pruned(synthetic_root, monkeypatch):
    # a pruner that stops every trial at its first report: Optuna's own, at a threshold no accuracy reaches
    monkeypatch.setattr(optuna.pruners, "MedianPruner", lambda **_: optuna.pruners.ThresholdPruner(lower=1.01))
    path = write_space("optim.lr: {loguniform: [0.01, 1.0]}")
    done = sweep(settings(path, 2, data_root=synthetic_root, epochs=3), verbose=False)
    states = [t.state for t in done.study.get_trials()]
    assert states == [optuna.trial.TrialState.PRUNED] * 2
    for number in (0, 1):
        folder = Path(f"sweep/trial-{number:03d}")
        assert {"config.yaml", "metrics.jsonl", "trial.json", "checkpoints"} <= {p.name for p in folder.iterdir()}
        assert {p.name for p in (folder / "checkpoints").iterdir()} == {"last", "best"}
        assert not (folder / "eval.json").exists()  # never tested
        records = read_metrics(folder / "metrics.jsonl")
        assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1]
        assert records[-1]["kind"] == "stopped" and records[-1]["reason"].startswith("pruned by the sweep after epoch 1")
        mark = json.loads((folder / "trial.json").read_text())
        assert mark["state"] == "pruned" and mark["trial"] == number and "optim.lr" in mark["params"]
    rows, numbers, paths = write_summary(done)
    assert [r["state"] for r in rows] == ["pruned", "pruned"] and numbers["counts"]["pruned"] == 2
    assert "best" not in paths and numbers["test"] is None  # nothing to choose, nothing tested


def test_a_nan_trial_fails_and_the_sweep_goes_on(synthetic_root, capsys):
    path = write_space("optim.lr: {loguniform: [1.0e+5, 1.0e+6]}")  # the recipe's 0.1 is outside: no baseline
    assert main(["sweep", "--recipe", "resnet20", "--space", path, "--trials", "2", "--epochs", "1", "--data-dir",
                 str(synthetic_root), "--out", "sweep", *[a for s in TINY for a in ("--set", s)]]) == 0  # fmt: skip
    out = capsys.readouterr().out
    study = optuna.load_study(study_name="sweep-resnet20", storage="sqlite:///sweep/study.db")
    trials = study.get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.FAIL] * 2
    for t in trials:
        assert t.user_attrs["reason"].startswith("the training loss became NaN/inf")
        assert "\n" not in t.user_attrs["reason"]
        mark = json.loads(Path(f"sweep/trial-{t.number:03d}/trial.json").read_text())
        assert mark["state"] == "fail" and mark["reason"] == t.user_attrs["reason"]
    assert out.count("failed: the training loss became NaN/inf") == 2
    assert Path("sweep/trials.csv").read_text().count(",fail,") == 2


@pytest.mark.slow
def test_two_processes_share_one_sqlite_study(synthetic_root, tmp_path):
    """Two processes started with the same command: N trials in all, each number once, each
    with its own parameters and run folder; the best tested once, by the process that ends last."""
    path = write_space("optim.lr: {loguniform: [0.01, 1.0]}\noptim.weight_decay: {loguniform: [1.0e-5, 1.0e-3]}\n")
    command = [sys.executable, "-m", "cifarlab", "sweep", "--recipe", "resnet20", "--space", path, "--trials", "4",
               "--epochs", "1", "--storage", "sqlite:///shared.db", "--study", "shared", "--out", "sweep",
               "--data-dir", str(synthetic_root), *[a for s in TINY for a in ("--set", s)]]  # fmt: skip
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        outputs = [p.communicate(timeout=600) for p in processes]
    finally:
        for p in processes:
            p.kill()
    assert [p.returncode for p in processes] == [0, 0], outputs
    assert all("Traceback" not in err for _, err in outputs)
    trials = optuna.load_study(study_name="shared", storage="sqlite:///shared.db").get_trials()
    assert sorted(t.number for t in trials) == list(range(4))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    params = {(t.params["optim.lr"], t.params["optim.weight_decay"]) for t in trials}
    assert len(params) == 4  # trial k draws with seed + k: the two processes never draw the same
    assert trials[0].params == {"optim.lr": 0.1, "optim.weight_decay": 1e-4}  # the recipe's own values first
    ran = {t.number: t.user_attrs["pid"] for t in trials}
    for number, pid in ran.items():
        mark = json.loads((tmp_path / f"sweep/trial-{number:03d}/trial.json").read_text())
        assert mark["trial"] == number and mark["state"] == "complete"
    assert set(ran.values()) <= {p.pid for p in processes}
    tested = [d for d in (tmp_path / "sweep").glob("trial-*") if (d / "eval.json").is_file()]
    best = max(trials, key=lambda t: t.value).number
    assert [d.name for d in tested] == [f"trial-{best:03d}"]
    assert json.loads((tmp_path / "sweep/sweep.json").read_text())["test"]["trial"] == best


def test_a_study_continues_only_as_the_same_sweep(synthetic_root, capsys):
    path = write_space("optim.lr: {loguniform: [0.01, 1.0]}")
    sweep(settings(path, 1, data_root=synthetic_root), verbose=False)
    assert Path("sweep/trial-000/eval.json").is_file()  # the study is complete: its best is tested
    with pytest.raises(CifarlabError, match="was made with another epochs"):
        sweep(settings(path, 2, data_root=synthetic_root, epochs=2), verbose=False)
    grown = sweep(settings(path, 2, data_root=synthetic_root))  # the same sweep, a larger budget
    assert len(grown.study.get_trials()) == 2 and "trial 1: optim.lr=" in capsys.readouterr().out
    again = sweep(settings(path, 2, data_root=synthetic_root))  # finished: nothing is run or tested again
    assert len(again.study.get_trials()) == 2
    assert capsys.readouterr().out == ""
