"""The commands a newcomer types: every model and every recipe through `cifarlab train`,
`--config` of a saved run, `--resume` with only `--out`, one run per folder, NaN/inf."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import cifarlab
from cifarlab.cli import main
from cifarlab.config import list_recipes, recipe_for_model, resolve
from cifarlab.engine import runtime
from cifarlab.errors import CifarlabError
from cifarlab.models import list_models
from helpers import write_cifar10

# one training step on 16 images, no validation split, the 200 synthetic test images
TINY = ["--epochs", "1", "--train-subset", "16", "--batch-size", "16", "--set", "data.val_size=0", "--set",
        "train.eval_batch_size=100", "--no-report"]  # fmt: skip
SMALL = ["--recipe", "tutorial", "--set", "train.batch_size=50", "--set", "data.val_size=100", "--no-report"]
TIMING_KEYS = {"train_seconds", "eval_seconds", "hardware", "device"}


def outcome(run_dir):
    result = json.loads((run_dir / "eval.json").read_text())
    return {k: v for k, v in result.items() if k not in TIMING_KEYS}, load_file(run_dir / "checkpoints/last/model.safetensors")


@pytest.mark.slow
@pytest.mark.parametrize("model", list_models())
def test_every_model_trains_with_no_recipe_named(model, synthetic_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--model", model, *TINY, "--data-dir", str(synthetic_root), "--out", str(out)]) == 0
    config = resolve(config_file=str(out / "config.yaml"))
    assert (config.model.name, config.recipe) == (model, recipe_for_model(model))
    assert json.loads((out / "eval.json").read_text())["num_images"] == 200


@pytest.mark.slow
@pytest.mark.parametrize("recipe", list_recipes())
def test_every_recipe_trains_for_one_step(recipe, synthetic_root, tmp_path):
    out = tmp_path / "run"
    tiny, subset = TINY, TINY.index("--train-subset")
    if resolve(recipe).data.labels_per_class:  # a label budget instead of a training subset (both at once are refused)
        tiny = [*TINY[:subset], "--labels-per-class", "2", *TINY[subset + 2:]]
    assert main(["train", "--recipe", recipe, *tiny, "--data-dir", str(synthetic_root), "--out", str(out)]) == 0
    assert (out / "eval.json").is_file() and resolve(config_file=str(out / "config.yaml")).recipe == recipe


def test_model_picks_its_family_recipe_and_foreign_options_are_dropped(capsys):
    assert resolve(flags={"model": {"name": "resnet32"}}).recipe == "resnet20"
    assert resolve(flags={"model": {"name": "simple_cnn"}}).recipe == "standard"
    assert resolve().recipe == "fast"
    config = resolve("fast", flags={"model": {"name": "resnet18"}})
    assert config.model.options == {} and "head_scale" in capsys.readouterr().err
    with pytest.raises(CifarlabError, match="model.options.head_scale is not an option of resnet18; it takes: drop_path"):
        resolve(flags={"model": {"name": "resnet18"}}, sets=["model.options.head_scale=2"])
    for model in list_models():  # each family recipe trains the model it was picked for
        assert recipe_for_model(model) in list_recipes() and resolve(flags={"model": {"name": model}}).model.name == model


def test_a_config_file_names_its_recipe(tmp_path):
    file = tmp_path / "c.yaml"
    file.write_text("recipe: tutorial\ntrain:\n  epochs: 3\n")
    config = resolve(config_file=str(file))
    assert (config.recipe, config.model.name, config.optim.lr, config.train.epochs) == ("tutorial", "lenet", 0.001, 3)


@pytest.mark.slow
def test_config_of_a_run_repeats_it(synthetic_root, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["train", *SMALL, "--data-dir", str(synthetic_root), "--out", str(a), "--seed", "3", "--lr", "0.01"]) == 0
    assert main(["train", "--config", str(a / "config.yaml"), "--out", str(b)]) == 0
    (result_a, weights_a), (result_b, weights_b) = outcome(a), outcome(b)
    assert result_a == result_b and all((weights_a[k] == weights_b[k]).all() for k in weights_a)


class _StopAfterFirstEpoch:
    def on_epoch_end(self, trainer):
        raise KeyboardInterrupt


@pytest.mark.slow
def test_resume_needs_only_out_and_checks_the_data(synthetic_root, tmp_path):
    flags = [*SMALL, "--data-dir", str(synthetic_root), "--seed", "5", "--lr", "0.01", "--set", "optim.ema_decay=0.9"]
    assert main(["train", *flags, "--out", str(tmp_path / "whole")]) == 0
    config = resolve("tutorial", sets=[f"data.data_dir={synthetic_root}", "train.batch_size=50", "data.val_size=100",
                                       "train.seed=5", "optim.lr=0.01", "optim.ema_decay=0.9", "train.report=false",
                                       f"train.out={tmp_path / 'cut'}"])  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        cifarlab.train(config, verbose=False, callbacks=[_StopAfterFirstEpoch()])
    other = write_cifar10(tmp_path / "other", per_batch=120)
    assert main(["train", "--out", str(tmp_path / "cut"), "--resume", "--data-dir", str(other)]) == 2
    assert main(["train", "--out", str(tmp_path / "cut"), "--resume", "--lr", "0.5"]) == 2
    assert not (tmp_path / "cut" / "eval.json").exists()
    assert main(["train", "--out", str(tmp_path / "cut"), "--resume"]) == 0
    (whole, weights_whole), (cut, weights_cut) = outcome(tmp_path / "whole"), outcome(tmp_path / "cut")
    assert whole == cut and all((weights_whole[k] == weights_cut[k]).all() for k in weights_whole)


@pytest.mark.slow
@pytest.mark.parametrize("native", [False, True])
def test_a_run_records_the_precision_auto_resolved_to(native, synthetic_root, tmp_path, monkeypatch):
    """`auto` is bf16 where the CPU multiplies bf16 natively, fp32 elsewhere; the run's config
    says which, so resuming it on the other kind of CPU keeps it (and a run saved with `auto`
    by an earlier version still resumes)."""
    x = torch.ones(4, 4)
    monkeypatch.setattr(runtime, "native_bf16", lambda device: native)
    with runtime.autocast(torch.device("cpu"), "auto"):
        assert (x @ x).dtype == (torch.bfloat16 if native else torch.float32)
    out = tmp_path / "run"
    assert main(["train", *TINY, "--data-dir", str(synthetic_root), "--out", str(out)]) == 0
    assert resolve(config_file=str(out / "config.yaml")).train.precision == ("bf16" if native else "fp32")
    monkeypatch.setattr(runtime, "native_bf16", lambda device: not native)
    assert main(["train", "--out", str(out), "--resume"]) == 0
    assert resolve(config_file=str(out / "config.yaml")).train.precision == ("bf16" if native else "fp32")
    saved = out / "config.yaml"
    saved.write_text(saved.read_text().replace(f"precision: {'bf16' if native else 'fp32'}", "precision: auto"))
    assert main(["train", "--out", str(out), "--resume"]) == 0


@pytest.mark.slow
def test_two_runs_on_one_folder_one_is_refused(synthetic_root, tmp_path):
    out = tmp_path / "shared"
    argv = [sys.executable, "-m", "cifarlab", "train", *SMALL, "--set", "train.batch_size=4", "--data-dir",
            str(synthetic_root), "--out", str(out)]  # fmt: skip
    processes = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read().decode()) for p in processes]
    assert sorted(code for code, _ in results) == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    lines = refused.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in refused
    assert "in use by another cifarlab run (pid " in refused or "already holds a finished run" in refused
    lone = tmp_path / "lone"
    assert main(["train", *SMALL, "--set", "train.batch_size=4", "--data-dir", str(synthetic_root), "--out", str(lone)]) == 0
    (survivor, weights_survivor), (alone, weights_alone) = outcome(out), outcome(lone)
    assert survivor == alone and all((weights_survivor[k] == weights_alone[k]).all() for k in weights_alone)
    assert (out / "metrics.jsonl").read_text().count('"kind": "test"') == 1


def test_a_held_folder_is_refused_naming_the_holder(synthetic_root, tmp_path, capsys):
    import fcntl
    import os

    out = tmp_path / "held"
    out.mkdir()
    fd = os.open(out / ".lock", os.O_RDWR | os.O_CREAT)
    os.write(fd, b"4242\n")
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        assert main(["train", *SMALL, "--data-dir", str(synthetic_root), "--out", str(out)]) == 2
    finally:
        os.close(fd)
    assert "in use by another cifarlab run (pid 4242)" in capsys.readouterr().err
    assert {p.name for p in out.iterdir()} == {".lock"}


def test_default_folders_do_not_collide(synthetic_root, tmp_path, capsys):
    for _ in range(2):
        assert main(["train", *SMALL, "--epochs", "1", "--train-subset", "100", "--data-dir", str(synthetic_root)]) == 0
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["tutorial", "tutorial-2"]
    assert not list((tmp_path / "runs").glob("*/.lock"))  # a finished run lets go of its folder


@pytest.mark.parametrize("lr", ["1e38", "1e30"])
def test_non_finite_weights_are_never_called_good(synthetic_root, tmp_path, capsys, lr):
    out = tmp_path / "run"
    argv = ["train", *SMALL, "--lr", lr, "--set", "train.checkpoint_every=1", "--data-dir", str(synthetic_root),
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "NaN/inf" in err and not (out / "eval.json").exists()
    last = out / "checkpoints" / "last" / "model.safetensors"
    if last.exists():  # what is saved is finite
        assert all(t.isfinite().all() for t in load_file(last).values())
    assert main(argv) == 2
    assert "holds a run that stopped (the " in capsys.readouterr().err


def test_each_strategy_brings_its_lr():
    linear = resolve("finetune", sets=["finetune.strategy=linear"])
    assert (linear.optim.lr, linear.optim.warmup_epochs) == (0.5, 0.0)
    assert resolve("finetune").optim.lr == 0.01
    assert resolve("finetune", sets=["finetune.strategy=linear", "optim.lr=0.2"]).optim.lr == 0.2  # yours wins
    assert resolve("finetune-fast", sets=["finetune.strategy=linear"]).optim.groups["head"] == {"lr": 34300.0}
