"""Which active-learning strategy buys the most test accuracy per label? Every strategy over
several seeds (a seed fixes the random start set, so all strategies share round 0), each
round retrained from scratch; prints JSON: per strategy and labelled count, the mean test
accuracy ± its standard deviation over the seeds, and in how many rounds after round 0 each
strategy's mean beats random's at the same label count.

    python benchmarks/active.py --data-dir ../shared/data --start 1000 --budget 1000 --rounds 4 --seeds 0 1 2 \\
        --out runs/bench-active

Every (strategy, seed) is an ordinary `cifarlab active` folder, OUT/<strategy>-seed<S>; one
that already holds a complete active.json is read, not rerun, so the grid can be filled in
over several sessions. OUT/active.png plots all of them. Cost: strategies × seeds × (rounds + 1)
trainings of --recipe on at most start + rounds × budget images.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cifarlab.config import ActiveConfig
from cifarlab.engine.runtime import hardware
from cifarlab.labels import STRATEGIES, read_results, summarize
from cifarlab.run import active, compare_active


def run_one(strategy: str, seed: int, args, folder: Path) -> dict:
    if (folder / "active.json").is_file():
        (done,) = read_results([folder])
        if len(done["rounds"]) == args.rounds + 1:
            return done
        raise SystemExit(f"{folder} holds an unfinished or different run; delete it or choose another --out")
    sets = [f"train.batch_size={args.batch_size}", *args.set]
    result, _ = active(ActiveConfig(args.start, args.budget, args.rounds, strategy), args.recipe, sets, seed,
                       args.epochs, folder, args.data_dir, args.device, verbose=False)  # fmt: skip
    return result


def wins_over_random(summary: dict) -> dict:
    """Per strategy: the rounds after round 0 where its mean beats random's at equal labels."""
    random = {p["labelled"]: p["mean"] for p in summary.get("random", [])}
    wins = {}
    for strategy, points in summary.items():
        if strategy == "random" or not random:
            continue
        compared = [p for p in points[1:] if p["labelled"] in random]  # round 0 is the same for every strategy
        wins[strategy] = {"rounds_compared": len(compared),
                          "rounds_won": sum(p["mean"] > random[p["labelled"]] for p in compared)}  # fmt: skip
    return wins


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--start", type=int, default=1000)
    parser.add_argument("--budget", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--recipe", default="fast")
    parser.add_argument("--epochs", type=int, help="epochs of every round (default: the recipe's)")
    parser.add_argument("--batch-size", type=int, default=500,
                        help="at most --start: the loader drops a last partial batch, so a batch larger than the "
                             "labelled set trains on nothing (fast's own 2,000 is; lrs are per 1024 there)")  # fmt: skip
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--data-dir")
    parser.add_argument("--device")
    parser.add_argument("--out", default="runs/bench-active")
    args = parser.parse_args()

    out = Path(args.out)
    folders = [out / f"{strategy}-seed{seed}" for strategy in args.strategies for seed in args.seeds]
    for folder in folders:
        strategy, seed = folder.name.rsplit("-seed", 1)
        run_one(strategy, int(seed), args, folder)
    results = read_results(folders)
    summary = summarize(results)
    _, plot = compare_active(folders, out / "active.png")
    print(json.dumps({
        "start": args.start, "budget": args.budget, "rounds": args.rounds, "seeds": args.seeds, "recipe": args.recipe,
        "epochs": args.epochs, "batch_size": args.batch_size, "sets": args.set, "retrain": "from scratch each round",
        "summary": summary, "wins_over_random": wins_over_random(summary), "plot": str(plot),
        "train_seconds": sum(r["train_seconds"] for result in results for r in result["rounds"]),
        "hardware": hardware(),
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
