"""Data-parallel scaling: the same `cifarlab train` run through torchrun with 1 and with N
processes (same global batch, same samples, same lr), timed end to end. Prints JSON.

    python benchmarks/ddp_throughput.py [--data-dir ../shared/data] [--nprocs 1 2] [--device cpu]

`train_seconds` is the trainer's own clock (training steps and per-epoch evaluation, without
start-up, data loading and the final test); `wall_seconds` is the whole command. On one
machine's CPU, N processes share its cores: a speed-up there only shows that the gradient
all-reduce costs less than what splitting the batch saves; on N GPUs each process has its own.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cifarlab.engine.runtime import hardware


def run(nprocs: int, args, out: Path) -> dict:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nprocs),
        "-m", "cifarlab", "train", "--recipe", args.recipe, "--model", args.model, "--epochs", str(args.epochs),
        "--batch-size", str(args.batch_size), "--train-subset", str(args.train_subset), "--device", args.device,
        "--set", "data.val_size=0", "--no-report", "--out", str(out),
    ] + (["--data-dir", args.data_dir] if args.data_dir else [])  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // nprocs))}  # the cores, shared out
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"{nprocs} process(es) failed:\n{done.stderr[-3000:]}")
    result = json.loads((out / "eval.json").read_text())
    images = args.epochs * (args.train_subset // args.batch_size) * args.batch_size
    return {
        "processes": nprocs,
        "wall_seconds": round(wall, 2),
        "train_seconds": round(result["train_seconds"], 2),
        "images_per_s": round(images / result["train_seconds"], 1),
        "test_accuracy": result["accuracy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--nprocs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--device", default="cpu", help="cpu | cuda (one GPU per process)")
    parser.add_argument("--recipe", default="resnet20")
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--train-subset", type=int, default=5120)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        runs = [run(n, args, Path(tmp) / f"n{n}") for n in args.nprocs]
    base = runs[0]["images_per_s"]
    for r in runs:
        r["speedup"] = round(r["images_per_s"] / base, 2)
    print(json.dumps({
        "benchmark": "ddp_throughput",
        "workload": {k: getattr(args, k) for k in ("recipe", "model", "epochs", "batch_size", "train_subset", "device")},
        "global_batch_per_step": args.batch_size,
        "runs": runs,
        "hardware": hardware(),
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
