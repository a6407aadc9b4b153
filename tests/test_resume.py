"""Exact resume: a run killed with SIGKILL (or stopped with Ctrl-C) at random moments and
resumed each time ends with bit-identical weights, metrics and test results."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from cifarlab.engine.metrics_log import read_metrics
from helpers import write_source_checkpoint

pytestmark = pytest.mark.slow  # each test runs training subprocesses and kills them

TIME_FIELDS = {"elapsed", "images_per_s"}


SETTINGS = {
    "resnet20-ema": ["--recipe", "resnet20", "--set", "optim.lr=0.05", "--set", "optim.warmup_epochs=1",
                     "--set", "optim.ema_decay=0.9", "--set", "optim.label_smoothing=0.1",
                     "--set", "optim.grad_clip=2.0", "--set", "augment.cutout=8"],
    # the fast recipe's parts: whitening init, Muon + SGD groups, alternating flip, and lookahead; with TensorBoard
    # logging on, which must not change a bit
    "fast-lookahead": ["--recipe", "fast", "--set", "optim.lookahead_every=2", "--set", "optim.lookahead_start_epoch=1",
                       "--set", "data.val_size=50", "--set", "train.tta=flip", "--tensorboard"],
    # FixMatch: the labelled stream cycles within each epoch of the unlabelled pool; both views and the EMA resume
    "fixmatch": ["--labels-per-class", "10", "--semi", "fixmatch", "--set", "semi.threshold=0.12",
                 "--set", "semi.unlabelled_ratio=2", "--set", "model.options.widths=[16, 32, 32]"],
    # fine-tuning from ./source: layers unfreeze at epochs 1, 2, 3 (held groups, per-layer lrs), frozen BN statistics
    "finetune-gradual": ["--recipe", "finetune", "--set", "finetune.source=source", "--set", "finetune.strategy=gradual",
                         "--set", "finetune.layer_decay=0.7", "--set", "finetune.freeze_bn=true"],
}  # fmt: skip


def command(data_root, out, settings="resnet20-ema"):
    common = ["--set", "train.epochs=4", "--set", "train.batch_size=50", "--set", "train.checkpoint_every=2",
              "--set", "train.log_every=3", "--no-report"]  # fmt: skip
    return [sys.executable, "-m", "cifarlab", "train", *SETTINGS[settings], *common, "--data-dir", str(data_root),
            "--out", str(out), "--resume"]  # fmt: skip


def run_to_completion(data_root, out, interrupt_after: list[float], settings="resnet20-ema") -> int:
    """Start the run again after each interruption; returns how many interruptions hit a live run."""
    hits = 0
    for delay in interrupt_after + [None]:
        process = subprocess.Popen(command(data_root, out, settings), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if delay is None:
            _, err = process.communicate(timeout=300)
            assert process.returncode == 0, err.decode()
            return hits
        try:
            process.wait(timeout=delay)
            assert process.returncode == 0  # it finished before the interruption: fine, nothing to resume
            return hits
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=120)
            hits += 1
    return hits


def final_state(out):
    last = out / "checkpoints" / "last"
    state = torch.load(last / "state.pt", weights_only=True)
    raw = state["train_model"] or load_file(last / "model.safetensors")
    metrics = [{k: v for k, v in r.items() if k not in TIME_FIELDS} for r in read_metrics(out / "metrics.jsonl")]
    result = json.loads((out / "eval.json").read_text())
    result = {k: v for k, v in result.items() if not k.endswith("seconds")}
    return load_file(last / "model.safetensors"), raw, metrics, result


def assert_identical(a, b):
    (ema_a, raw_a, metrics_a, eval_a), (ema_b, raw_b, metrics_b, eval_b) = a, b
    assert ema_a.keys() == ema_b.keys() and all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    assert all(torch.equal(raw_a[k], raw_b[k]) for k in raw_a)
    assert metrics_a == metrics_b
    assert eval_a == eval_b


@pytest.mark.parametrize("settings", SETTINGS)
def test_sigkill_at_random_moments_then_resume_is_bit_identical(synthetic_root, tmp_path, settings):
    """Each trial kills a run 4 times at random moments (startup, training, checkpoint writes,
    final test all included); $CIFARLAB_RESUME_TRIALS sets how many trials (default 1)."""
    write_source_checkpoint(tmp_path / "source")  # the fine-tuning source; runs start in tmp_path
    reference = tmp_path / "reference"
    started = time.perf_counter()
    run_to_completion(synthetic_root, reference, [], settings)
    duration = time.perf_counter() - started
    expected = final_state(reference)
    rng = random.Random(int.from_bytes(os.urandom(4), "little"))
    total_hits = 0
    for trial in range(int(os.environ.get("CIFARLAB_RESUME_TRIALS", "1"))):
        # the first kill in the first half of a run's time, so that one lands even if the machine got faster
        delays = [rng.uniform(0.2, duration / 2)] + [rng.uniform(0.2, duration) for _ in range(3)]
        interrupted = tmp_path / f"interrupted-{trial}"
        hits = run_to_completion(synthetic_root, interrupted, delays, settings)
        assert_identical(expected, final_state(interrupted))
        total_hits += hits
        print(f"trial {trial}: {hits} kills at {[round(d, 2) for d in delays]} s, bit-identical")
    assert total_hits >= 1, "no kill landed on a live run"


def test_ctrl_c_saves_a_mid_epoch_checkpoint_and_resumes_exactly(synthetic_root, tmp_path):
    reference = tmp_path / "reference"
    run_to_completion(synthetic_root, reference, [])
    stopped = tmp_path / "stopped"
    process = subprocess.Popen(command(synthetic_root, stopped), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while not (stopped / "checkpoints" / "last").exists():  # wait until training is under way
        time.sleep(0.05)
        assert process.poll() is None
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130 and b"--resume" in err
    run_to_completion(synthetic_root, stopped, [])
    assert_identical(final_state(reference), final_state(stopped))
