import json
import math
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import cifarlab
from cifarlab.cli import main
from cifarlab.config import OptimConfig
from cifarlab.engine.metrics_log import read_metrics
from cifarlab.engine.optim import build_optimizers, lr_factor
from cifarlab.errors import CifarlabError
from cifarlab.models import register_model
from helpers import train_until


def small_config(data_root, out, *sets):
    """ResNet-20 for 2 epochs on the small synthetic set, with the loader's augmentations on."""
    return cifarlab.resolve_config(
        "resnet20",
        sets=[f"data.data_dir={data_root}", f"train.out={out}", "train.epochs=2", "train.batch_size=50",
              "train.log_every=3", "optim.lr=0.05", "optim.warmup_epochs=0.5", "augment.cutout=8", "train.report=false",
              *sets],
    )  # fmt: skip


@pytest.mark.slow
def test_train_writes_a_complete_run_directory(synthetic_root, tmp_path, monkeypatch):
    run = cifarlab.train(small_config(synthetic_root, tmp_path / "run", "optim.ema_decay=0.9"), verbose=False)
    d = run.dir
    assert (d / "config.yaml").is_file() and (d / "eval.json").is_file()
    for name in ("last", "best"):
        assert {p.name for p in (d / "checkpoints" / name).iterdir()} >= {"model.safetensors", "meta.json"}
    assert (d / "checkpoints" / "last" / "state.pt").is_file()
    records = read_metrics(d / "metrics.jsonl")
    steps = [r for r in records if r["kind"] == "step"]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["step"] for r in steps] == [3, 6, 9, 12, 15, 18] and [r["epoch"] for r in epochs] == [1, 2]
    assert all({"train_loss", "train_acc", "lr", "images_per_s", "elapsed"} <= r.keys() for r in steps)
    assert records[-1]["kind"] == "test" and {r["kind"] for r in records} == {"step", "epoch", "test"}
    result = json.loads((d / "eval.json").read_text())
    assert result["split"] == "test" and result["checkpoint"] == "best" and result["num_images"] == 200
    assert sum(map(sum, result["confusion_matrix"])) == 200
    assert set(result["per_class"]) == set(run.test["per_class"]) and len(result["per_class"]) == 10
    assert result["val_accuracy"] == max(r["val_acc"] for r in epochs)
    # the checkpoint is the model: evaluating it again gives the same figures, with the run's memory reuse
    kept = []
    monkeypatch.setattr("cifarlab.engine.inference.keep_freed_memory", lambda: kept.append(True))
    again = cifarlab.evaluate(d, split="test")
    assert again["accuracy"] == result["accuracy"] and again["confusion_matrix"] == result["confusion_matrix"]
    assert kept and run.config.train.reuse_memory


@pytest.mark.slow
def test_checkpoint_round_trip(synthetic_root, tmp_path):
    run = cifarlab.train(small_config(synthetic_root, tmp_path / "run", "train.epochs=1"), verbose=False)
    last = run.dir / "checkpoints" / "last"
    model = cifarlab.load_model(last)
    weights = load_file(last / "model.safetensors")
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    fresh = cifarlab.create_model("resnet20")
    x = torch.randn(4, 3, 32, 32)
    fresh.load_state_dict(weights)
    fresh.eval()
    assert torch.equal(model(x), fresh(x))
    meta = cifarlab.load_checkpoint(run.dir).meta
    assert meta["model"] == "resnet20" and meta["classes"][0] == "airplane" and meta["epoch"] == 1


@pytest.mark.slow
def test_mismatched_weights_name_the_keys(synthetic_root, tmp_path):
    run = cifarlab.train(small_config(synthetic_root, tmp_path / "run", "train.epochs=1"), verbose=False)
    meta_path = run.dir / "checkpoints" / "best" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["model"] = "resnet18"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CifarlabError, match="do not fit the model; missing: .*unexpected: .*shape mismatch"):
        cifarlab.load_model(run.dir)


class _NaNAfter(nn.Module):
    """A linear model whose logits turn NaN after a given number of training forwards."""

    def __init__(self, num_classes: int = 10, after: int = 12):
        super().__init__()
        self.linear = nn.Linear(3 * 32 * 32, num_classes)
        self.calls, self.after = 0, after

    def forward(self, x):
        self.calls += self.training
        out = self.linear(x.flatten(1))
        return out * float("nan") if self.training and self.calls > self.after else out


@register_model
def nan_after_test_model(num_classes: int = 10, after: int = 12) -> nn.Module:
    """Test-only model that produces a NaN loss after some steps."""
    return _NaNAfter(num_classes, after)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(synthetic_root, tmp_path):
    out = tmp_path / "run"
    config = small_config(synthetic_root, out, "model.name=nan_after_test_model", "train.epochs=5")
    with pytest.raises(CifarlabError, match=r"loss became NaN/inf .*epoch 2.*checkpoints/last"):
        cifarlab.train(config, verbose=False)  # 9 steps per epoch: NaN from step 13
    meta = json.loads((out / "checkpoints" / "last" / "meta.json").read_text())
    assert meta["epoch"] == 1 and meta["step"] == 9
    weights = load_file(out / "checkpoints" / "last" / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert not (out / "eval.json").exists()
    assert not list(out.rglob("*.partial")) and not list(out.rglob("*.tmp"))


@pytest.mark.slow
def test_existing_run_and_changed_settings_are_refused(synthetic_root, tmp_path):
    out = tmp_path / "run"
    cifarlab.train(small_config(synthetic_root, out, "train.epochs=1"), verbose=False)
    with pytest.raises(CifarlabError, match="already holds a finished run; pass --resume"):
        cifarlab.train(small_config(synthetic_root, out, "train.epochs=1"), verbose=False)
    with pytest.raises(CifarlabError, match=r"as saved; leave out what differs: optim.lr: run has 0.05, now 0.1"):
        cifarlab.train(small_config(synthetic_root, out, "train.epochs=1", "optim.lr=0.1"), resume=True)
    finished = cifarlab.train(small_config(synthetic_root, out, "train.epochs=1"), resume=True, verbose=False)
    assert finished.test == json.loads((out / "eval.json").read_text())


def test_lr_schedules():
    cfg = OptimConfig(schedule="cosine", warmup_epochs=1, final_lr_factor=0.1)
    assert lr_factor(0, 100, 10, cfg) == pytest.approx(0.1)  # warmup from 1/10
    assert lr_factor(9, 100, 10, cfg) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10, cfg) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, cfg) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway
    assert lr_factor(100, 100, 10, cfg) == pytest.approx(0.1)
    linear = OptimConfig(schedule="linear", warmup_epochs=2)
    assert lr_factor(20, 120, 10, linear) == pytest.approx(1.0)
    assert lr_factor(70, 120, 10, linear) == pytest.approx(0.5)
    step = OptimConfig(schedule="step", milestones=[3, 6], gamma=0.1)
    assert [lr_factor(s, 100, 10, step) for s in (29, 30, 59, 60)] == pytest.approx([1, 0.1, 0.1, 0.01])
    assert lr_factor(50, 100, 10, OptimConfig(schedule="constant")) == 1.0
    assert not math.isnan(lr_factor(0, 1, 1, OptimConfig(warmup_epochs=0)))


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_weight_decay_skips_norms_and_biases(name):
    model = cifarlab.create_model("resnet20")
    (optimizer,) = build_optimizers(model, OptimConfig(name=name, weight_decay=1e-3), batch_size=128)
    by_role = {g["role"]: g for g in optimizer.param_groups}
    assert set(by_role) == {"filters", "norm", "head"}  # resnet convs have no bias; the head's bias is "head"
    assert by_role["filters"]["weight_decay"] == by_role["head"]["weight_decay"] == 1e-3
    assert by_role["norm"]["weight_decay"] == 0.0
    assert all(p.ndim == 4 for p in by_role["filters"]["params"]) and all(p.ndim == 1 for p in by_role["norm"]["params"])
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
    (every,) = build_optimizers(model, OptimConfig(name=name, weight_decay=1e-3, decay_norm_and_bias=True), 128)
    assert all(g["weight_decay"] == 1e-3 for g in every.param_groups)


def test_cli_error_paths(synthetic_root, tmp_path, capsys):
    cases = [
        (["train", "--model", "resnet9000"], "unknown model 'resnet9000'"),
        (["train", "--config", str(tmp_path / "nope.yaml")], "does not exist"),
        (["train", "--lr", "-1"], "optim.lr=-1.0 is out of range"),
        (["train", "--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r")], "does not exist"),
        (["eval", str(tmp_path / "no-run")], "does not exist"),
        (["predict", str(tmp_path), "x.png"], "is neither a run directory nor a checkpoint folder"),
        (["data", "info", "--dataset", "mnist", "--data-dir", str(synthetic_root)], "unknown dataset 'mnist'"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()
    with pytest.raises(SystemExit) as e:
        main(["train", "--epochs", "two"])
    assert e.value.code == 2


def test_cli_train_eval_predict(synthetic_root, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--recipe", "tutorial", "--data-dir", str(synthetic_root), "--out", str(out), "--epochs", "1",
            "--set", "data.val_size=100", "--batch-size", "20", "--lr", "0.01", "--no-report"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "confusion matrix" in printed and "airplane" in printed
    assert main(["eval", str(out), "--split", "val", "--tta", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["split"] == "val" and metrics["num_images"] == 100 and metrics["tta"] == "flip-translate"

    from PIL import Image

    data = cifarlab.data.load_split("cifar10", "test", synthetic_root)
    png, jpg, bad = tmp_path / "a.png", tmp_path / "b.jpg", tmp_path / "c.png"
    Image.fromarray(data.images[0].permute(1, 2, 0).numpy()).resize((64, 48)).save(png)
    Image.fromarray(data.images[1].permute(1, 2, 0).numpy()).save(jpg, quality=95)
    bad.write_bytes(b"not an image")
    assert main(["predict", str(out), str(png), str(jpg), "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(str(png)) and lines[0].count("%") == 2
    assert main(["predict", str(out), str(png), str(bad)]) == 2
    assert "cannot read image" in capsys.readouterr().err


@pytest.mark.slow
def test_gpu_settings_run_on_cpu(synthetic_root, tmp_path):
    """The fast recipe's CUDA section (bf16 autocast, channels_last, torch.compile) exercised on
    the CPU: it must train and give the same kind of result, not crash."""
    config = cifarlab.resolve_config(
        "fast",
        flags={"train": {"device": "cuda"}} if torch.cuda.is_available() else None,
        sets=[f"data.data_dir={synthetic_root}", f"train.out={tmp_path / 'run'}", "train.epochs=1",
              "train.batch_size=50", "train.precision=bf16", "train.compile=true", "train.tta=flip", "train.report=false"],
    )  # fmt: skip
    run = cifarlab.train(config, verbose=False)
    assert run.test["num_images"] == 200 and 0.0 <= run.test["accuracy"] <= 1.0
    assert math.isfinite(run.test["loss"])


class _LastCheckpointEpochs:
    """Records, at each epoch end, which epoch the `last` checkpoint holds (None: none yet)."""

    def __init__(self):
        self.seen = []

    def on_epoch_end(self, trainer):
        meta = trainer.checkpoints / "last" / "meta.json"
        self.seen.append(json.loads(meta.read_text())["epoch"] if meta.exists() else None)


@pytest.mark.slow
@pytest.mark.parametrize("every, expected", [(1, [1, 2, 3]), (2, [None, 2, 3]), (0, [None, None, 3])])
def test_checkpoint_epochs_sets_how_often_last_is_saved(synthetic_root, tmp_path, every, expected):
    probe = _LastCheckpointEpochs()
    config = small_config(synthetic_root, tmp_path / "run", "train.epochs=3", f"train.checkpoint_epochs={every}")
    cifarlab.train(config, verbose=False, callbacks=[probe])
    assert probe.seen == expected


class _InputSides:
    """Records, per epoch, the sides of the images the model's training forward passes see."""

    def __init__(self):
        self.sides = {}

    def on_fit_start(self, trainer):
        def record(module, args):
            if module.training:
                self.sides.setdefault(trainer.epoch, set()).add(args[0].shape[-1])

        trainer.model.register_forward_pre_hook(record)


@pytest.mark.slow
def test_low_res_epochs_train_on_shrunk_images(synthetic_root, tmp_path):
    probe = _InputSides()
    config = small_config(synthetic_root, tmp_path / "run", "train.epochs=3", "train.low_res=16",
                          "train.low_res_share=0.67")  # fmt: skip
    run = cifarlab.train(config, verbose=False, callbacks=[probe])
    assert probe.sides == {0: {16}, 1: {16}, 2: {32}}
    assert run.test["num_images"] == 200 and math.isfinite(run.test["loss"])


class _DropProbe:
    """The loss of each training image under the eval model at the end of the epoch before the
    drop, computed here from the split's own normalization; and the images each epoch trains on."""

    def __init__(self):
        self.seen = {}

    def on_fit_start(self, trainer):
        def record(module, args):
            if module.training:
                self.seen[trainer.epoch] = self.seen.get(trainer.epoch, 0) + len(args[0])

        trainer.model.register_forward_pre_hook(record)

    def on_epoch_end(self, trainer):
        if trainer.epoch == trainer.config.train.drop_easy_from:
            data = trainer.splits.train
            mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (trainer.splits.mean, trainer.splits.std))
            with torch.no_grad():
                logits = trainer.eval_model.eval()((data.images.float() / 255 - mean) / std)
            self.losses = nn.functional.cross_entropy(logits, data.labels, reduction="none")


@pytest.mark.slow
def test_drop_easy_trains_the_last_epochs_on_the_hardest_images(synthetic_root, tmp_path):
    probe = _DropProbe()
    config = small_config(synthetic_root, tmp_path / "run", "train.epochs=3", "train.drop_easy=0.4",
                          "train.drop_easy_share=0.67", "train.log_every=1", "optim.schedule=linear",
                          "optim.warmup_epochs=0")  # 2 of 3 epochs without the easiest 40%  # fmt: skip
    run = cifarlab.train(config, verbose=False, callbacks=[probe])
    n = len(probe.losses)
    kept = torch.load(run.dir / "checkpoints" / "last" / "state.pt", weights_only=True)["kept"]
    dropped = torch.ones(n, dtype=torch.bool)
    dropped[kept] = False
    assert len(kept) == n - round(0.4 * n) and probe.losses[kept].min() >= probe.losses[dropped].max() - 1e-4
    full, late = n // 50, len(kept) // 50  # drop_last batches of 50
    assert probe.seen == {0: full * 50, 1: late * 50, 2: late * 50}
    records = read_metrics(run.dir / "metrics.jsonl")
    assert [r for r in records if r["kind"] == "drop_easy"][0]["first_epoch"] == 2
    assert [r["step"] for r in records if r["kind"] == "epoch"] == [full, full + late, full + 2 * late]
    # the linear schedule moves through a short late epoch as far as through a full one
    steps = [r for r in records if r["kind"] == "step"]
    peak = steps[0]["lr"]
    for r in steps[full:]:
        epoch, batch = divmod(r["step"] - 1 - full, late)
        position = (1 + epoch) * full + batch * full / late
        assert r["lr"] == pytest.approx(peak * (1 - position / (3 * full)), rel=1e-9), r["step"]


@pytest.mark.slow
def test_drop_easy_resumes_bit_identically(synthetic_root, tmp_path):
    """Stopped in the second epoch, after the drop: `last` must hold the chosen images."""
    sets = ["train.drop_easy=0.5", "train.drop_easy_share=0.5", "train.checkpoint_every=1", "train.log_every=1"]
    reference = cifarlab.train(small_config(synthetic_root, tmp_path / "reference", *sets), verbose=False)
    records = read_metrics(reference.dir / "metrics.jsonl")
    first = [r["step"] for r in records if r["kind"] == "epoch"][0]
    interrupted = small_config(synthetic_root, tmp_path / "interrupted", *sets)
    train_until(interrupted, step=first + 2)  # `last` is saved after each step: here after step first + 1
    assert json.loads((tmp_path / "interrupted" / "checkpoints" / "last" / "meta.json").read_text())["step"] == first + 1
    resumed = cifarlab.train(interrupted, resume=True, verbose=False)
    weights = [load_file(run.dir / "checkpoints" / "last" / "model.safetensors") for run in (reference, resumed)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("elapsed", "images_per_s")} for r in rs]  # noqa: E731
    assert strip(records) == strip(read_metrics(resumed.dir / "metrics.jsonl"))


_FAULTS = """
import resource, sys, torch
from cifarlab.engine.runtime import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
faults = []
for _ in range(12):  # a step's pattern: two 64 MiB tensors made and freed, 12 times
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones(2**24)
    y = x * 2
    del x, y
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(kept, sum(faults[4:]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_freed_memory_is_reused_without_page_faults():
    """By default every round page-faults its 2 × 16,384 pages in anew; kept, the rounds after
    the first four mostly reuse the freed ones (measured: 0 to 16,384 faults over 8 rounds, where
    the heap's layout had a freed block in the wrong place once)."""
    runs = {how: subprocess.run([sys.executable, "-c", _FAULTS, how], capture_output=True, text=True, check=True)
            for how in ("default", "keep")}  # fmt: skip
    (_, default), (kept, reused) = (runs[how].stdout.split() for how in ("default", "keep"))
    assert kept == "True"
    assert int(default) > 8 * 30_000 and int(reused) < int(default) / 4
