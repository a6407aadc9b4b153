"""`cifarlab prune`: channels made dead beforehand are the ones removed, and removing them
changes no logit (so every coupling was followed), for every family the pruner takes; pruned
nets rebuild from their config; --macs-ratio is met; unstructured zeros survive fine-tuning;
a pruned run resumes, evaluates, predicts and is fine-tuned like any other; bad input is one
error line."""

import copy
import json
import subprocess
import sys

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file
from torch import nn

import cifarlab
from cifarlab.cli import main
from cifarlab.compress import PruneTarget, prune_channels, prune_model
from cifarlab.compress.channels import ROOT_TYPES, _units, channel_scores, kept_channels
from cifarlab.compress.prune import LR_FACTOR, pruned_config
from cifarlab.config import from_dict, resolve
from cifarlab.engine.checkpoint import load_checkpoint, save_checkpoint
from cifarlab.errors import CifarlabError
from cifarlab.models import create_model, list_models, model_stats
from helpers import write_source_checkpoint
from test_bad_inputs import assert_refused, checkpoint

UNSUPPORTED = {"vit_lite_7_4"}  # its hidden width passes through a permute and attention: left whole, nothing else to prune
TINY = {"airbench": {"widths": [16, 32, 32], "contrast_norm": True}, "mobilenet_v2": {"width": 0.25}}  # airbench as in fast-robust
QUICK = ("lenet", "resnet20", "airbench")  # a plain CNN, option-A shortcuts, a frozen whitening conv
SYNTHETIC_RUN = ["--recipe", "tutorial", "--epochs", "1", "--set", "train.batch_size=50", "--set", "data.val_size=100",
                 "--no-report"]  # fmt: skip
TIMING_KEYS = {"train_seconds", "eval_seconds", "hardware", "device"}


def families():
    return [pytest.param(m, marks=() if m in QUICK else pytest.mark.slow)
            for m in [*list_models(), "torchvision:resnet18"] if m not in UNSUPPORTED]  # fmt: skip


def lively(name: str) -> nn.Module:
    """The net in eval mode with random BatchNorm statistics and affine parameters, so that every
    channel carries a signal of the order of 1 (fresh nets give some families logits near 0)."""
    torch.manual_seed(0)
    model = create_model(name, **TINY.get(name, {})).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5), m.bias.normal_(0, 0.2)
                m.running_mean.normal_(0, 0.2), m.running_var.uniform_(0.5, 2.0)
    return model


def kill_channels(model: nn.Module, x: torch.Tensor, amount: float) -> int:
    """Zero every weight of a random `amount` of the channels of each prunable group (the share
    the pruner removes), in every layer of the group: channels that carry nothing. Returns how many."""
    generator, killed = torch.Generator().manual_seed(1), 0
    for unit in _units(model, x):
        for group in unit.graph.get_all_groups(ignored_layers=unit.kept, root_module_types=ROOT_TYPES):
            n = len(group[0].idxs)
            chosen = torch.randperm(n, generator=generator)[: n - max(1, int(n * (1 - amount)))].tolist()
            killed += len(chosen)
            zero_channels(unit, group, chosen)
    return killed


def zero_channels(unit, group, chosen: list[int]) -> None:
    """Zero the `chosen` channels of `group` in every layer they pass through."""
    for dep, idxs in unit.graph.get_pruning_group(group[0].dep.target.module, group[0].dep.handler, chosen):
        layer, index = dep.target.module, torch.tensor([int(i) for i in idxs])
        if isinstance(layer, (*ROOT_TYPES, nn.modules.batchnorm._BatchNorm)):
            out = unit.graph.is_out_channel_pruning_fn(dep.handler)  # else: the channels are its inputs
            with torch.no_grad():
                layer.weight.index_fill_(0 if out else 1, index, 0.0)
                if out and layer.bias is not None:
                    layer.bias.index_fill_(0, index, 0.0)


# ------------------------------------------------------------------------------ what is removed
@pytest.mark.parametrize("name", families())
def test_pruning_removes_the_dead_channels_and_changes_no_logit(name):
    model, x = lively(name), torch.randn(4, 3, 32, 32)
    assert kill_channels(model, x, 0.5) > 0
    with torch.no_grad():
        before = model(x)
    full = model_stats(model)
    prune_channels(model, x, 0.5)  # by weight norm: the dead channels' is 0
    with torch.no_grad():
        after = model(x)
    pruned = model_stats(model)
    assert after.shape == before.shape == (4, 10)
    assert (after - before).abs().max() <= 1e-5 * before.abs().max(), "a live channel was removed or a coupling missed"
    assert pruned.params < 0.9 * full.params and pruned.mflops < 0.9 * full.mflops


def test_removing_live_channels_changes_the_logits():
    """The check above can fail: the same pruning without dead channels changes every logit."""
    model, x = lively("lenet"), torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
    prune_channels(model, x, 0.5)
    with torch.no_grad():
        assert (model(x) - before).abs().max() > 0.1 * before.abs().max()


def test_taylor_importance_over_steps_removes_the_dead_channels():
    model, x = lively("resnet20"), torch.randn(8, 3, 32, 32)
    kill_channels(model, x, 0.5)
    y = torch.arange(8) % 10
    with torch.no_grad():
        before = model(x)
    prune_channels(model, x, 0.5, steps=2, batches=lambda step: [(x, y)])  # |w × dw| of a dead channel: 0
    with torch.no_grad():
        assert (model(x) - before).abs().max() <= 1e-5 * before.abs().max()
    assert all(p.grad is None for p in model.parameters())


def test_a_global_allocation_takes_the_weakest_channels_of_the_whole_net():
    scores = {"a": torch.tensor([0.1, 0.2, 3.0, 0.7]), "b": torch.ones(4), "c": torch.tensor([0.05, 1.95])}
    assert kept_channels(scores, 0.3) == {"a": 2, "b": 4, "c": 1}  # 0.05, 0.1 and 0.2 go
    assert kept_channels(scores, 0.99) == {"a": 1, "b": 1, "c": 1}  # at least one stays
    tied = {"a": torch.zeros(4), "b": torch.tensor([0.0, 2.0])}
    assert kept_channels(tied, 0.5) == {"a": 1, "b": 2}  # exactly 3 of the 5 zeros go, not all of them


def test_a_global_allocation_removes_dead_channels_wherever_they_are():
    """Dead channels in one group only: a global allocation of as many removes exactly them (no
    logit changes) and leaves the other groups whole; a uniform one takes live channels."""
    model, x = lively("resnet20"), torch.randn(4, 3, 32, 32)
    unit = next(unit for unit in _units(model, x) if unit.channels)
    root, group = next(iter(unit.groups()))
    dead = [0, 3, 5, 6, 9, 12]
    zero_channels(unit, group, dead)
    with torch.no_grad():
        before = model(x)
    widths = {name: m.out_channels for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    scores = channel_scores(model, x)
    name = next(name for name, module in model.named_modules() if module is root)
    amount = len(dead) / sum(len(s) for s in scores.values())
    kept = kept_channels(scores, amount)
    assert kept == {n: len(s) - (len(dead) if n == name else 0) for n, s in scores.items()}
    uniform = copy.deepcopy(model)
    prune_channels(model, x, kept, steps=2)
    prune_channels(uniform, x, amount)
    assert {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)} == {
        **widths, name: widths[name] - len(dead)}
    with torch.no_grad():
        assert (model(x) - before).abs().max() <= 1e-5 * before.abs().max()
        assert (uniform(x) - before).abs().max() > 1e-3 * before.abs().max()


def test_a_net_with_nothing_to_prune_is_refused():
    with pytest.raises(CifarlabError, match="finds no group of channels it can remove"):
        prune_channels(nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10)), torch.randn(1, 3, 32, 32), 0.5)


# ------------------------------------------------------------------------------ rebuilding, targets
def test_a_pruned_checkpoint_rebuilds_to_the_same_logits(tmp_path):
    source = load_checkpoint(write_source_checkpoint(tmp_path / "source", "resnet20"))
    record, resized = prune_model(source, PruneTarget(amount=0.5), 32)
    assert resized["blocks.0.conv1"] == {"out_channels": 8} and "head.2" not in resized  # never the logits
    meta = {**source.meta, "model_resized": resized}
    save_checkpoint(tmp_path / "pruned", source.model.state_dict(), meta)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(load_checkpoint(tmp_path / "pruned").model(x), source.model.eval()(x))
    assert record["macs_after"] < 0.6 * record["macs_before"] and record["params_after"] < record["params_before"]
    config = resolve("resnet20", sets=[f"model.resized={json.dumps(resized)}"])
    assert from_dict(yaml.safe_load(config.to_yaml())) == config
    assert "  resized:\n    blocks.0.conv1: {out_channels: 8}\n" in config.to_yaml()  # a line per layer


def test_resized_names_what_it_cannot_apply():
    for resized, message in [({"nope": {"out_channels": 3}}, "model.resized.nope="),
                             ({"blocks.0.conv1": {"out_channels": 17}}, "a size between 1 and 16"),
                             ({"blocks.0.conv1": {"kernel_size": 1}}, "its sizes are: out_channels, in_channels, groups")]:  # fmt: skip
        with pytest.raises(CifarlabError, match=message):
            create_model("resnet20", resized=resized)


@pytest.mark.parametrize("allocation", ["uniform", "global"])
def test_macs_ratio_is_reached_within_its_tolerance(allocation, tmp_path):
    source = load_checkpoint(write_source_checkpoint(tmp_path / "source", "resnet20"))
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8) % 10
    record, resized = prune_model(source, PruneTarget(macs_ratio=0.6, allocation=allocation), 32,
                                  lambda step: [(x, y)])  # fmt: skip
    assert abs(record["macs_ratio"] - 0.6) <= 0.02 and 0 < record["amount"] < 1
    assert record["allocation"] == allocation and record["importance"] == "taylor"
    assert all(p.grad is None for p in source.model.parameters())
    inner = {resized[f"blocks.{i}.conv1"]["out_channels"] for i in range(3)}  # 16 channels each in the first stage
    assert len(inner) == 1 if allocation == "uniform" else len(inner) > 1
    if allocation == "global":  # the sizes the bisection chose are those the scores give at the amount found
        fresh = load_checkpoint(tmp_path / "source").model
        kept = kept_channels(channel_scores(fresh, x[:1], [(x, y)]), record["amount"])
        widths = {name: resized.get(name, {}).get("out_channels", fresh.get_submodule(name).out_channels) for name in kept}
        assert widths == kept


def test_a_macs_ratio_below_what_pruning_can_reach_is_refused(tmp_path):
    source = load_checkpoint(write_source_checkpoint(tmp_path / "source", "resnet20"))
    with pytest.raises(CifarlabError, match="the fewest MACs it reaches are"):  # the residual streams stay whole
        prune_model(source, PruneTarget(macs_ratio=0.01), 32)


# ------------------------------------------------------------------------------ pruned runs
def small_prune(source, out, method, amount, data_root, *sets, **kwargs):
    sets = ["train.report=false", "train.tta=none", *sets]
    return cifarlab.prune(source, method, amount, out=out and str(out), data_dir=str(data_root), sets=sets,
                          verbose=False, **kwargs)  # fmt: skip


def test_fine_tuning_learns_from_the_unpruned_net_unless_told_not_to_or_semi_supervised():
    source = resolve("resnet20", sets=["optim.distill_from=runs/b", "optim.distill_weight=0.9"])  # a distilled run
    taught = pruned_config(source, "channels", 3, teacher="runs/a/checkpoints/best")
    assert taught.optim.distill_from == "runs/a/checkpoints/best"
    assert (taught.optim.distill_weight, taught.optim.distill_temperature) == (0.5, 4.0)  # optim's defaults
    assert taught.optim.lr == pytest.approx(source.optim.lr * LR_FACTOR) and taught.train.epochs == 3
    assert pruned_config(taught, "channels", 3, pruned=True).optim.lr == taught.optim.lr  # pruning a pruned run
    assert pruned_config(source, "channels", 3).optim.distill_from is None
    assert pruned_config(source, "channels", 3, sets=["optim.distill_weight=0.8"], teacher="x").optim.distill_weight == 0.8
    fixmatch = resolve(sets=["semi.method=fixmatch", "data.labels_per_class=10"])  # its step computes its own loss
    assert pruned_config(fixmatch, "channels", 3, teacher="x").optim.distill_from is None


@pytest.mark.parametrize("recipe_flags", [
    pytest.param([], id="sgd"),
    pytest.param(["--recipe", "fast90", "--set", "model.options.widths=[8, 16, 16]", "--set", "train.batch_size=100"],
                 id="muon", marks=pytest.mark.slow),
])  # fmt: skip
def test_unstructured_zeros_stay_zero_through_fine_tuning(recipe_flags, synthetic_root, tmp_path):
    source = tmp_path / "source"
    assert main(["train", *SYNTHETIC_RUN, *recipe_flags, "--data-dir", str(synthetic_root), "--out", str(source)]) == 0
    run = small_prune(source, tmp_path / "sparse", "unstructured", 0.6, synthetic_root)
    record = json.loads((run.dir / "prune.json").read_text())
    assert abs(record["sparsity"] - 0.6) < 0.01 and record["macs_ratio"] == 1.0  # the zeros are still multiplied
    start, end = (load_file(run.dir / "checkpoints" / name / "model.safetensors") for name in ("pruned", "last"))
    weights = [k for k, v in start.items() if k.endswith("weight") and v.ndim > 1 and (v == 0).any()]
    assert weights
    for k in weights:
        zero = start[k] == 0
        assert (end[k][zero] == 0).all(), k  # every pruned weight is still zero ...
    assert any(not torch.equal(start[k], end[k]) for k in weights)  # ... while the others trained


@pytest.mark.slow
def test_a_pruned_run_resumes_exactly_and_is_fine_tuned_like_any_run(synthetic_root, tmp_path, capsys):
    source = tmp_path / "source"
    assert main(["train", *SYNTHETIC_RUN, "--data-dir", str(synthetic_root), "--out", str(source)]) == 0
    whole = small_prune(source, tmp_path / "whole", "channels", 0.5, synthetic_root, "train.epochs=2")

    class StopAfterFirstEpoch:
        def on_epoch_end(self, trainer):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        small_prune(source, tmp_path / "cut", "channels", 0.5, synthetic_root, "train.epochs=2",
                    callbacks=[StopAfterFirstEpoch()])  # fmt: skip
    assert main(["train", "--out", str(tmp_path / "cut"), "--resume"]) == 0
    for name in ("eval.json", "checkpoints/last/model.safetensors"):
        a, b = (tmp_path / run / name for run in ("whole", "cut"))
        if name.endswith(".json"):
            assert {k: v for k, v in json.loads(a.read_text()).items() if k not in TIMING_KEYS} == {
                k: v for k, v in json.loads(b.read_text()).items() if k not in TIMING_KEYS}
        else:
            assert all(torch.equal(load_file(a)[k], load_file(b)[k]) for k in load_file(a))
    tuned = tmp_path / "tuned"
    assert main(["finetune", "--from", str(whole.dir), "--data", "cifar10:cat,dog", "--epochs", "1", "--batch-size", "20",
                 "--data-dir", str(synthetic_root), "--out", str(tuned), "--no-report"]) == 0  # fmt: skip
    model = load_checkpoint(tuned).model
    assert model[-1].out_features == 2 and model[3].out_channels == 8  # a fresh head on the pruned trunk (16 → 8)
    assert whole.config.optim.distill_from == str(source / "checkpoints" / "best")  # the unpruned net teaches
    again = small_prune(whole.dir, tmp_path / "again", "channels", 0.5, synthetic_root, "train.epochs=1")
    assert load_checkpoint(again.dir).model[3].out_channels == 4  # pruned once more: 8 → 4
    assert again.config.optim.lr == whole.config.optim.lr  # already the fine-tuning lr, not × LR_FACTOR once more
    for _ in range(2):  # default folders: runs/<source>-pruned, then -2
        alone = small_prune(source, None, "unstructured", 0.5, synthetic_root, "train.epochs=1", distill=False)
        assert alone.config.optim.distill_from is None
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["source-pruned", "source-pruned-2"]


@pytest.mark.slow
def test_prune_from_the_command_line_on_real_data(real_root, tmp_path):
    """Train a tiny run, prune it with the defaults but one fine-tuning epoch, then use the pruned run."""

    def cli(*args):
        done = subprocess.run([sys.executable, "-m", "cifarlab", *map(str, args)], cwd=tmp_path, capture_output=True,
                              text=True, timeout=900)  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    cli("train", "--model", "resnet20", "--epochs", "1", "--train-subset", "1000", "--batch-size", "100",
        "--data-dir", real_root, "--out", "runs/tiny", "--no-report")  # fmt: skip
    out = cli("prune", "runs/tiny", "--amount", "0.5", "--finetune-epochs", "1", "--data-dir", real_root)
    run = tmp_path / "runs" / "tiny-pruned"  # the default folder
    record = json.loads((run / "prune.json").read_text())
    assert f"MACs {record['macs_before'] / 1e6:.1f}M → {record['macs_after'] / 1e6:.1f}M" in out
    assert record["method"] == "channels" and record["macs_ratio"] < 0.6 and record["importance"] == "taylor"
    assert {"pruned", "best", "last"} <= {p.name for p in (run / "checkpoints").iterdir()}
    assert (run / "metrics.jsonl").is_file()
    config = resolve(config_file=str(run / "config.yaml"))
    assert config.model.resized and config.finetune.source == "runs/tiny-pruned/checkpoints/pruned"
    assert config.optim.distill_from == "runs/tiny/checkpoints/best"  # fine-tuned learning from the unpruned net too
    result = json.loads((run / "eval.json").read_text())
    evaluated = json.loads(cli("eval", run, "--json", "--data-dir", real_root))
    assert evaluated["accuracy"] == result["accuracy"] and evaluated["num_images"] == 10000
    Image.new("RGB", (32, 32), (200, 30, 30)).save(tmp_path / "red.png")
    assert cli("predict", run, "red.png").startswith("red.png: ")
    assert "report.html" in cli("report", run, "--data-dir", real_root)  # (tiny was trained with --no-report, so is this)
    assert (run / "report.html").is_file()
    assert "already finished" in subprocess.run(
        [sys.executable, "-m", "cifarlab", "train", "--out", run, "--resume"], cwd=tmp_path, capture_output=True,
        text=True, timeout=300).stderr  # fmt: skip


# ------------------------------------------------------------------------------ bad input
def empty_run(tmp):
    (tmp / "empty" / "checkpoints").mkdir(parents=True)
    return tmp / "empty"


def vit_checkpoint(tmp):
    folder = checkpoint(tmp)
    meta = json.loads((folder / "meta.json").read_text())
    write_source_checkpoint(folder, "vit_lite_7_4")
    (folder / "meta.json").write_text(json.dumps({**meta, "model": "vit_lite_7_4"}))
    return folder


BAD = {
    "amount-0": (lambda t: [checkpoint(t), "--amount", "0"], "--amount 0.0 is out of range"),
    "amount-1": (lambda t: [checkpoint(t), "--amount", "1"], "--amount 1.0 is out of range"),
    "amount-nan": (lambda t: [checkpoint(t), "--amount", "nan"], "--amount nan is out of range"),
    "macs-ratio-1.5": (lambda t: [checkpoint(t), "--macs-ratio", "1.5"], "--macs-ratio 1.5 is out of range"),
    "both": (lambda t: [checkpoint(t), "--amount", "0.5", "--macs-ratio", "0.5"], "give one of --amount"),
    "neither": (lambda t: [checkpoint(t)], "give one of --amount"),
    "unknown-method": (lambda t: [checkpoint(t), "--amount", "0.5", "--method", "magic"],
                       "unknown pruning method 'magic'; choose one of: channels, unstructured"),
    "macs-unstructured": (lambda t: [checkpoint(t), "--macs-ratio", "0.5", "--method", "unstructured"],
                          "--macs-ratio needs --method channels"),
    "unknown-allocation": (lambda t: [checkpoint(t), "--amount", "0.5", "--allocation", "even"],
                           "unknown allocation 'even'; choose one of: uniform, global"),
    "allocation-unstructured": (lambda t: [checkpoint(t), "--amount", "0.5", "--method", "unstructured", "--allocation",
                                           "uniform"], "--allocation is for --method channels"),
    "epochs-0": (lambda t: [checkpoint(t), "--amount", "0.5", "--finetune-epochs", "0"], "train.epochs=0 is out of range"),
    "no-run": (lambda t: ["nope", "--amount", "0.5"], "'nope' does not exist"),
    "no-checkpoint": (lambda t: [empty_run(t), "--amount", "0.5"], "has no checkpoint yet"),
    "unsupported-model": (lambda t: [vit_checkpoint(t), "--amount", "0.5"], "cannot prune vit_lite_7_4 by channels"),
}


@pytest.mark.slow  # a subprocess each
@pytest.mark.parametrize("case", list(BAD))
def test_bad_prune_input_is_one_error_line(case, synthetic_root, tmp_path):
    setup, expected = BAD[case]
    assert_refused(["prune", *setup(tmp_path), "--data-dir", synthetic_root], tmp_path, expected)
    assert not (tmp_path / "runs").exists()
