"""Does pretraining help a new task with little data? From scratch vs linear probe vs full
fine-tuning, same architecture, same number of epochs, on one target, for several seeds.
Prints JSON.

    python benchmarks/transfer.py --source runs/bench/fast90-seed0 --target cifar100 --epochs 16 --seeds 0 1 2

`scratch` trains the source's architecture (same model options) from random init with the
source run's own recipe (its from-scratch learning rates); `linear` and `full` go through
`cifarlab.finetune` with its default recipe for the source; `linear` trains the head alone at
--linear-head-lr (the head of a linear probe does not co-adapt with a moving body and needs
a far higher lr than in full fine-tuning; for finetune-fast, tuned on seed 0). Each run's accuracy is its one
final test evaluation (eval.json); times are wall-clock seconds on this machine. --results
FILE appends every finished run as a JSON line and summarizes all lines, so seeds can be
run in separate sessions.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import cifarlab
from cifarlab.config import from_dict
from cifarlab.engine.checkpoint import find_checkpoint, read_meta
from cifarlab.engine.runtime import hardware

MODES = ("scratch", "linear", "full")


def run_mode(mode: str, source: str, target: str, epochs: int, seed: int, data_dir: str | None, out: Path,
             linear_head_lr: float | None) -> dict:  # fmt: skip
    common = [f"train.epochs={epochs}", f"train.seed={seed}", f"train.out={out}", "train.report=false"]
    if data_dir:
        common.append(f"data.data_dir={data_dir}")
    if mode == "scratch":
        source_config = from_dict(read_meta(find_checkpoint(source))["config"])  # the config alone, no weights
        flags = {"model": {"name": source_config.model.name, "options": source_config.model.options},
                 "data": {"dataset": target}}  # fmt: skip
        config = cifarlab.resolve_config(source_config.recipe, flags=flags, sets=common)
        run = cifarlab.train(config, verbose=False)
    else:
        head = [f"optim.groups.head.lr={linear_head_lr}"] if mode == "linear" and linear_head_lr else []
        run = cifarlab.finetune(source, target, mode, sets=common + head, verbose=False)
    return {
        "mode": mode, "seed": seed, "epochs": epochs, "target": target, "recipe": run.config.recipe,
        "batch_size": run.config.train.batch_size, "linear_head_lr": linear_head_lr if mode == "linear" else None,
        "test_accuracy": run.test["accuracy"], "train_seconds": round(run.test["train_seconds"], 1),
        "eval_seconds": round(run.test["eval_seconds"], 1), "tta": run.config.train.tta,
    }  # fmt: skip


def summarize(results: list[dict]) -> dict:
    summary = {}
    for mode in MODES:
        runs = [r for r in results if r["mode"] == mode]
        if not runs:
            continue
        accuracies = [r["test_accuracy"] for r in runs]
        summary[mode] = {
            "seeds": [r["seed"] for r in runs],
            "test_accuracy_mean": round(statistics.mean(accuracies), 5),
            "test_accuracy_std": round(statistics.stdev(accuracies), 5) if len(runs) > 1 else None,
            "seconds_mean": round(statistics.mean(r["train_seconds"] + r["eval_seconds"] for r in runs), 1),
        }
    if "scratch" in summary and "full" in summary:
        gain = summary["full"]["test_accuracy_mean"] - summary["scratch"]["test_accuracy_mean"]
        summary["full_minus_scratch_points"] = round(100 * gain, 2)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", required=True, help="a cifarlab run directory or checkpoint")
    parser.add_argument("--target", default="cifar100")
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--linear-head-lr", type=float, help="head lr of the linear probe (default: the recipe's)")
    parser.add_argument("--data-dir")
    parser.add_argument("--results", help="JSON-lines file: append each run, summarize all lines")
    args = parser.parse_args()

    results = []
    with tempfile.TemporaryDirectory(prefix="cifarlab-transfer-") as tmp:
        for seed in args.seeds:
            for mode in args.modes:
                result = run_mode(mode, args.source, args.target, args.epochs, seed, args.data_dir,
                                  Path(tmp) / f"{mode}-seed{seed}", args.linear_head_lr)  # fmt: skip
                results.append(result)
                if args.results:
                    with open(args.results, "a") as f:
                        f.write(json.dumps({**result, "source": args.source, "hardware": hardware()}) + "\n")
    if args.results:
        lines = [json.loads(line) for line in Path(args.results).read_text().splitlines() if line.strip()]
        results = [r for r in lines if r["target"] == args.target and r["epochs"] == args.epochs]
    print(json.dumps({"benchmark": "transfer", "hardware": hardware(), "source": args.source,
                      "target": args.target, "runs": results, "summary": summarize(results)}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
