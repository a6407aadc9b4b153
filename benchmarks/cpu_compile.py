"""`torch.compile` (inductor's C++ backend on the CPU) against eager mode for a recipe's training
steps, side by side in one process. Prints JSON.

    python benchmarks/cpu_compile.py --recipe fast --data-dir ../shared/data [--set train.precision=fp32]

Two trainers of the same config, one with `train.compile=true`, built as `cifarlab train` builds
them (build_trainer: the recipe's model, optimizers, Muon, precision and memory format) and
fed real training batches by their loaders; the code timed is Trainer.train_step, the step a
run takes. The first --warmup steps of each (the compilation among them) are timed apart; then
the two take turns, --steps steps each per round, so a slow spell of the machine hits both;
the figure is the median over --rounds of the mean step. Time it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch

import cifarlab
from cifarlab.engine import distributed
from cifarlab.engine.runtime import hardware, resolved_precision
from cifarlab.run import build_trainer
from cpu_precision import seconds  # this folder is the script's first import path


def trainer(args, compiled: bool, folder: Path):
    sets = [f"train.compile={str(compiled).lower()}", "train.report=false", *args.set]
    if args.data_dir:
        sets.append(f"data.data_dir={args.data_dir}")
    config = cifarlab.resolve_config(args.recipe, sets=sets)
    config.train.precision = resolved_precision(config.train.precision, torch.device("cpu"))
    built = build_trainer(config, folder, torch.device("cpu"), verbose=False)
    built.init_from_data()
    built.model.train()
    return built, iter(built.train_loader.epoch(0)), config


def steps(built, batches, count: int) -> float:
    """Mean seconds per training step over `count` steps."""
    return seconds(lambda: built.train_step(*next(batches)), count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="fast")
    parser.add_argument("--data-dir")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a setting of both trainers")
    parser.add_argument("--warmup", type=int, default=3, help="first steps of each, timed apart (compilation)")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per mode and round")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    if min(args.warmup, args.steps, args.rounds) < 1:
        parser.error("--warmup, --steps and --rounds must be at least 1")
    with distributed.session("cpu"), tempfile.TemporaryDirectory() as folder:
        modes = {name: trainer(args, name == "compiled", Path(folder) / name) for name in ("eager", "compiled")}
        warmup = {name: steps(built, batches, args.warmup) * args.warmup for name, (built, batches, _) in modes.items()}
        times = {name: [] for name in modes}
        for _ in range(args.rounds):
            for name, (built, batches, _) in modes.items():
                times[name].append(steps(built, batches, args.steps))
        config = modes["eager"][2]
    eager, compiled = (statistics.median(times[name]) for name in modes)
    print(json.dumps({
        "recipe": args.recipe, "sets": args.set, "model": config.model.name, "precision": config.train.precision,
        "batch_size": config.train.batch_size, "threads": torch.get_num_threads(), "rounds": args.rounds,
        "steps_per_round": args.steps, "warmup_seconds": {k: round(v, 2) for k, v in warmup.items()},
        "eager_seconds_per_step": round(eager, 4), "compiled_seconds_per_step": round(compiled, 4),
        "compiled_speedup": round(eager / compiled, 3),
        "per_round": {k: [round(t, 4) for t in v] for k, v in times.items()}, "hardware": hardware(),
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
