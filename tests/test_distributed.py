"""torchrun + DDP on CPU (gloo, 127.0.0.1): two processes train the single-process run.

The model is LeNet (no BatchNorm, so no per-rank statistics): with the same global batch,
DDP's gradient is the mean over the same 100 images as the single process's, only summed in
another order, so the runs differ by float32 rounding alone. Lookahead and EMA are on.
Muon is left out of that comparison: orthogonalizing lifts a gradient's smallest singular
directions to full size, so rounding-level differences grow into visible ones (0.03 after 20
steps); that Muon, BatchNorm and the whitening init keep all ranks identical is checked on
the `fast` recipe's net instead.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cifarlab.engine import distributed
from cifarlab.engine.metrics_log import read_metrics
from cifarlab.errors import CifarlabError
from helpers import REPO, sure_of_the_pool

pytestmark = pytest.mark.slow  # each test launches torchrun jobs of several processes

STEPS = 20  # 2 epochs × 1000 images / global batch 100
SETTINGS = [
    "--recipe", "resnet20", "--model", "lenet", "--train-subset", "1000", "--set", "data.val_size=200",
    "--epochs", "2", "--batch-size", "100", "--lr", "0.05", "--device", "cpu", "--no-report",
    "--set", "train.log_every=4", "--set", "train.checkpoint_every=5", "--set", "optim.ema_decay=0.9",
    "--set", "optim.lookahead_every=2", "--set", "optim.lookahead_start_epoch=0.5", "--set", "train.precision=fp32",
]  # fmt: skip
# fp32 even where the CPU has native bf16, whose 8-bit mantissa would carry the halves' difference
# to ~1e-3 in 20 steps, too close to a real fault to tell them apart.
# Float32 rounding: a gradient summed in two halves differs from the one-pass sum by ~1e-7
# relative, and 20 steps of SGD/Muon carry that through without amplifying it much (weights
# are ~0.1; a real difference, such as one batch wrong, moves them by ~1e-2).
WEIGHT_TOLERANCE = 1e-5
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
PROBE = str(Path(__file__).parent / "ddp_probe.py")


def environment(probe_dir: Path | None = None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    if sys.platform.startswith("linux"):
        env["GLOO_SOCKET_IFNAME"] = "lo"  # loopback only
    if probe_dir is not None:
        probe_dir.mkdir()
        env["PROBE_DIR"] = str(probe_dir)
    return env


def launch(nprocs: int, data_root: Path, out: Path, probe_dir: Path | None = None, settings=SETTINGS, **popen):
    """`cifarlab train --resume` with `settings`: plain python for 1 process, torchrun for
    more; through tests/ddp_probe.py if `probe_dir` is given."""
    program = [PROBE] if probe_dir is not None else ["-m", "cifarlab"]
    start = [sys.executable] if nprocs == 1 else [*TORCHRUN, "--nproc-per-node", str(nprocs)]
    command = [*start, *program, "train", *settings, "--data-dir", str(data_root), "--out", str(out), "--resume"]
    return subprocess.Popen(command, env=environment(probe_dir), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            **popen)  # fmt: skip


def finish(process) -> None:
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err.decode()[-3000:]


def weights(out: Path) -> dict[str, torch.Tensor]:
    """The trained (not averaged) weights and the EMA weights of the run's last checkpoint."""
    last = out / "checkpoints" / "last"
    raw = torch.load(last / "state.pt", weights_only=True)["train_model"]
    return {**{f"raw.{k}": v for k, v in raw.items()}, **{f"ema.{k}": v for k, v in load_file(last / "model.safetensors").items()}}


def assert_close_weights(a: dict, b: dict, tolerance: float) -> None:
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    print(f"largest weight difference: {worst:.3g} (tolerance {tolerance})")
    assert worst <= tolerance, f"largest weight difference {worst:.3g} > {tolerance}"


def assert_same_metrics(a: Path, b: Path, loss_rtol: float) -> None:
    """The same records (steps, epochs, accuracies), losses within `loss_rtol`; times aside."""
    ra, rb = read_metrics(a / "metrics.jsonl"), read_metrics(b / "metrics.jsonl")
    assert len(ra) == len(rb) and len(ra) > STEPS // 4
    for x, y in zip(ra, rb):
        assert x.keys() == y.keys()
        for key in x.keys() - {"elapsed", "images_per_s"}:
            if "loss" in key:
                assert x[key] == pytest.approx(y[key], rel=loss_rtol), key
            elif key not in ("train_acc", "val_acc", "accuracy"):
                assert x[key] == y[key], key


def read_probe(probe_dir: Path, rank: int) -> dict:
    return json.loads((probe_dir / f"rank{rank}.json").read_text())


@pytest.fixture(scope="module")
def reference(real_root, tmp_path_factory):
    """One run of the settings by 1 process and by 2 (torchrun), each with its probe record."""
    root = tmp_path_factory.mktemp("reference")
    finish(launch(1, real_root, root / "one", probe_dir=root / "probe1"))
    finish(launch(2, real_root, root / "two", probe_dir=root / "probe2"))
    return root


def test_two_ranks_see_the_single_process_batches_and_end_with_its_weights(reference):
    one, two = read_probe(reference / "probe1", 0), [read_probe(reference / "probe2", r) for r in (0, 1)]
    assert len(one["batches"]) == STEPS and all(len(p["batches"]) == STEPS for p in two)
    for step, (epoch, batch, sums, labels) in enumerate(one["batches"]):
        halves = [p["batches"][step] for p in two]
        assert all(h[:2] == [epoch, batch] for h in halves)
        assert all(len(h[3]) == 50 for h in halves)  # each rank: half of the global batch
        assert halves[0][3] + halves[1][3] == labels  # rank 0's half, then rank 1's: the global batch
        assert torch.allclose(torch.tensor(halves[0][2] + halves[1][2]), torch.tensor(sums), rtol=1e-9)
    for epoch in (0, 1):  # every training image once per epoch, on one rank or the other
        seen = sorted(s for p in two for e, _, sums, _ in p["batches"] if e == epoch for s in sums)
        assert len(seen) == 1000 and len(set(seen)) > 990
        assert seen == pytest.approx(sorted(s for e, _, sums, _ in one["batches"] if e == epoch for s in sums), rel=1e-9)

    assert_close_weights(weights(reference / "one"), weights(reference / "two"), WEIGHT_TOLERANCE)
    assert two[0]["model"] == two[1]["model"]
    # logs show global figures: the loss over all 100 images of a step, not one rank's 50
    assert_same_metrics(reference / "one", reference / "two", loss_rtol=1e-4)
    eval_one, eval_two = (json.loads((reference / name / "eval.json").read_text()) for name in ("one", "two"))
    assert eval_two["processes"] == 2 and eval_one["num_images"] == eval_two["num_images"]
    assert eval_two["accuracy"] == pytest.approx(eval_one["accuracy"], abs=2 / eval_one["num_images"])


def test_only_rank_0_writes_the_run_directory(reference):
    rank0, rank1 = (read_probe(reference / "probe2", r)["writes"] for r in (0, 1))
    assert rank1 == []
    assert {"config.yaml", "metrics.jsonl", "eval.json", "state.pt", "model.safetensors"} <= {Path(p).name for _, p in rank0}
    files = lambda out: sorted(str(p.relative_to(out)) for p in out.rglob("*"))  # noqa: E731
    assert files(reference / "two") == files(reference / "one")


def test_sigkill_of_the_whole_job_then_resume(reference, real_root, tmp_path):
    """Kill both ranks and torchrun mid-run; resuming with 2 ranks ends bit-identical to the
    uninterrupted 2-rank run, and resuming with 1 process continues the same run."""
    killed = tmp_path / "killed"
    job = launch(2, real_root, killed, start_new_session=True)
    deadline = time.monotonic() + 240
    while not (killed / "checkpoints" / "last" / "meta.json").is_file():
        assert job.poll() is None and time.monotonic() < deadline, "the job ended before its first checkpoint"
        time.sleep(0.02)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    assert not (killed / "eval.json").exists()
    shutil.copytree(killed, tmp_path / "killed-single", symlinks=True)

    finish(launch(2, real_root, killed))
    assert_close_weights(weights(reference / "two"), weights(killed), 0.0)
    assert_same_metrics(reference / "two", killed, loss_rtol=1e-12)  # running sums re-added in another order

    finish(launch(1, real_root, tmp_path / "killed-single"))  # another world size, the same global batches
    assert_close_weights(weights(reference / "two"), weights(tmp_path / "killed-single"), WEIGHT_TOLERANCE)


@pytest.mark.parametrize("robust", [
    [], ["--set", "train.adversarial=fgsm"],
    ["--set", "augment.policy=augmix", "--set", "optim.jsd_weight=12", "--set", "augment.noise_sigma=0.1"],
    ["--set", "train.drop_easy=0.3", "--set", "train.drop_easy_share=0.5"],
], ids=["plain", "fgsm", "augmix-jsd-noise", "drop-easy"])  # fmt: skip
def test_ranks_hold_the_same_model_with_batchnorm_whitening_and_muon(robust, real_root, tmp_path):
    """The `fast` recipe's parts under DDP: the whitening init (broadcast from rank 0), Muon on
    the all-reduced gradients, lookahead, and BatchNorm statistics (each rank's own until the
    epoch end's broadcast): both ranks end with bit-identical weights and buffers. Also with
    adversarial training (crafted on each rank's slice, outside DDP), the 3-view JSD loss, and
    train.drop_easy (each rank scores alone: they must choose the same images)."""
    fast = ["--recipe", "fast", "--set", "model.options.widths=[16, 32, 32]", "--train-subset", "1000",
            "--epochs", "2", "--batch-size", "200", "--device", "cpu", "--no-report",
            "--set", "optim.lookahead_every=2", "--set", "optim.lookahead_start_epoch=0.5", *robust]  # fmt: skip
    finish(launch(2, real_root, tmp_path / "fast", probe_dir=tmp_path / "probe", settings=fast))
    ranks = [read_probe(tmp_path / "probe", r) for r in (0, 1)]
    assert any(".running_mean" in key for key in ranks[0]["model"]) and ranks[0]["model"] == ranks[1]["model"]
    assert ranks[0]["kept"] == ranks[1]["kept"] and (ranks[0]["kept"] is None) == ("train.drop_easy=0.3" not in robust)


def test_a_selftraining_student_trains_on_the_same_pool_images_on_every_rank(synthetic_root, tmp_path):
    """--semi selftrain: each rank predicts its shard of the pool and all gather the predictions,
    so both ranks train on the very images, with the very classes, of a single-process student."""
    few = ["--recipe", "fast", "--set", "model.options.widths=[16, 32, 32]", "--labels-per-class", "10",
           "--set", "data.calib_size=0", "--epochs", "2", "--batch-size", "20", "--device", "cpu", "--no-report",
           "--set", "train.precision=fp32", "--set", "train.tta=none"]  # fmt: skip
    finish(launch(1, synthetic_root, tmp_path / "teacher", settings=few))
    threshold, sure, predicted = sure_of_the_pool(tmp_path / "teacher", 100, 300)
    student = [*few, "--semi", "selftrain", "--teacher", str(tmp_path / "teacher"), "--set", f"semi.threshold={threshold}"]
    finish(launch(1, synthetic_root, tmp_path / "one", probe_dir=tmp_path / "probe1", settings=student))
    finish(launch(2, synthetic_root, tmp_path / "two", probe_dir=tmp_path / "probe2", settings=student))
    one, *ranks = [read_probe(tmp_path / "probe1", 0)] + [read_probe(tmp_path / "probe2", r) for r in (0, 1)]
    assert ranks[0]["trained_on"] == ranks[1]["trained_on"] == one["trained_on"]
    positions, labels = one["trained_on"]
    assert len(positions) == 100 + int(sure.sum()) and labels[100:] == predicted.tolist()
    recorded = [json.loads((tmp_path / run / "labelled.json").read_text()) for run in ("one", "two")]
    assert recorded[0]["pseudo_positions"] == recorded[1]["pseudo_positions"] == positions[100:]


def test_a_global_batch_that_ranks_cannot_share_is_refused(real_root, tmp_path):
    job = subprocess.run([*TORCHRUN, "--nproc-per-node", "2", "-m", "cifarlab", "train", *SETTINGS, "--batch-size", "101",
                          "--data-dir", str(real_root), "--out", str(tmp_path / "run")],
                         env=environment(), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert job.returncode != 0
    assert "train.batch_size=101 is the global batch, shared equally by the 2 processes" in job.stderr
    assert not (tmp_path / "run").exists()


def test_sync_bn_is_refused_on_cpu_and_a_no_op_for_one_process(monkeypatch):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    assert distributed.convert_sync_batchnorm(model, torch.device("cpu")) is model
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    with pytest.raises(CifarlabError, match="sync_bn needs CUDA"):
        distributed.convert_sync_batchnorm(model, torch.device("cpu"))
