"""The robust recipes against their goals, each seed on this machine in one process. Prints JSON.

    python benchmarks/robust_recipes.py --seeds 0 1 2 --data-dir ../shared/data \
        --results benchmarks/results/robust-recipes.jsonl

Per seed, one after another: `fast` (the baseline), `fast-robust` and `fast-adv`, each trained
from scratch with that seed; then the CIFAR-10-C suite (15 corruptions x 5 severities, the 4
extra ones beside) on fast-robust and FGSM / PGD-10 L∞ 8/255 / PGD-L2 0.5 on fast-adv, on the
first --limit test images (default: all 10,000). Each recipe's clean accuracy is its eval.json
test accuracy (all 10,000 images, with the recipe's own TTA: flip-translate for fast and
fast-robust, none for fast-adv, as its attacks are measured); its wall seconds run from the
call that trains it to its return (start-up, training and the final test evaluation).
Goals (issue 15): fast-robust's mean corrupted accuracy >= 85% at <= 1 point below fast's
clean accuracy in <= 1.5x fast's wall time; fast-adv's PGD-10 >= 40% at >= 80% clean in <= 90
minutes. A timing means something only when nothing else ran beside it.
--recipes robust|adv measures one side alone (robust: fast and fast-robust; adv: fast-adv).
--results FILE appends each seed as a JSON line and summarizes every line of the file.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import cifarlab
from cifarlab.engine.runtime import hardware
from cifarlab.robust import EXTRA, STANDARD


def train(recipe: str, seed: int, folder: Path, args) -> tuple[dict, Path]:
    sets = [f"train.seed={seed}", f"train.out={folder / f'{recipe}-seed{seed}'}", "train.report=false", *args.set]
    if args.data_dir:
        sets.append(f"data.data_dir={args.data_dir}")
    start = time.perf_counter()
    run = cifarlab.train(cifarlab.resolve_config(recipe, sets=sets), verbose=False)
    wall = time.perf_counter() - start
    return {"accuracy": run.test["accuracy"], "train_seconds": round(run.test["train_seconds"], 1),
            "wall_seconds": round(wall, 1)}, run.dir  # fmt: skip


def measure(run_dir: Path, corruptions: list[str], attacks: list[str], args) -> dict:
    settings = cifarlab.RobustnessConfig(corruptions=corruptions, attacks=attacks, limit=args.limit)
    result, _ = cifarlab.robustness(run_dir, settings, data_dir=args.data_dir, verbose=False)
    return result


def run_robust(seed: int, folder: Path, args) -> dict:
    fast, _ = train("fast", seed, folder, args)
    robust, robust_dir = train("fast-robust", seed, folder, args)
    suite = measure(robust_dir, [*STANDARD, *EXTRA], [], args)
    robust.update(mean_corrupted_accuracy=suite["summary"]["mean_corrupted_accuracy"],
                  extra_mean_accuracy=suite["summary"]["extra_mean_accuracy"], suite_seconds=round(suite["seconds"], 1),
                  suite_images=suite["num_images"],
                  clean_drop_points=round(100 * (fast["accuracy"] - robust["accuracy"]), 2),
                  wall_ratio=round(robust["wall_seconds"] / fast["wall_seconds"], 3),
                  train_ratio=round(robust["train_seconds"] / fast["train_seconds"], 3))  # fmt: skip
    goals = {
        "fast_robust_corrupted_85": robust["mean_corrupted_accuracy"] >= 0.85,
        "fast_robust_clean_within_1_point": robust["clean_drop_points"] <= 1.0,
        "fast_robust_wall_within_1.5x": robust["wall_ratio"] <= 1.5,
    }
    return {"fast": fast, "fast_robust": robust, "goals": goals}


def run_adv(seed: int, folder: Path, args) -> dict:
    adv, adv_dir = train("fast-adv", seed, folder, args)
    attacks = measure(adv_dir, [], ["fgsm", "pgd", "pgd-l2"], args)
    adv.update({f"{name}_accuracy": attacks["attacks"][name]["accuracy"] for name in ("fgsm", "pgd", "pgd-l2")},
               attack_seconds=round(attacks["seconds"], 1), attack_images=attacks["num_images"])  # fmt: skip
    goals = {
        "fast_adv_pgd_40": adv["pgd_accuracy"] >= 0.40,
        "fast_adv_clean_80": adv["accuracy"] >= 0.80,
        "fast_adv_within_90_min": adv["wall_seconds"] <= 90 * 60,
    }
    return {"fast_adv": adv, "goals": goals}


SIDES = {"robust": run_robust, "adv": run_adv}


def run_seed(seed: int, folder: Path, args) -> dict:
    result = {"seed": seed, "sets": args.set, "measured": args.recipes, "goals": {}}
    for side in args.recipes:
        measured = SIDES[side](seed, folder, args)
        result["goals"].update(measured.pop("goals"))
        result.update(measured)
    result["hardware"] = hardware()
    return result


def summarize(results: list[dict]) -> dict:
    def spread(recipe: str, key: str) -> dict | None:
        values = [r[recipe][key] for r in results if recipe in r]
        if not values:
            return None
        return {"mean": round(statistics.mean(values), 5), "seeds": len(values),
                "std": round(statistics.stdev(values), 5) if len(values) > 1 else None}  # fmt: skip

    return {
        "seeds": [r["seed"] for r in results],
        "fast_accuracy": spread("fast", "accuracy"),
        "fast_robust_accuracy": spread("fast_robust", "accuracy"),
        "fast_robust_mean_corrupted_accuracy": spread("fast_robust", "mean_corrupted_accuracy"),
        "fast_robust_clean_drop_points": spread("fast_robust", "clean_drop_points"),
        "fast_robust_wall_ratio": spread("fast_robust", "wall_ratio"),
        "fast_adv_accuracy": spread("fast_adv", "accuracy"),
        "fast_adv_pgd_accuracy": spread("fast_adv", "pgd_accuracy"),
        "fast_adv_wall_seconds": spread("fast_adv", "wall_seconds"),
        "every_goal_measured_was_met": all(all(r["goals"].values()) for r in results),
        "goals_measured": sorted({goal for r in results for goal in r["goals"]}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--recipes", nargs="+", choices=list(SIDES), default=list(SIDES),
                        help="robust: fast and fast-robust with the corruption suite; adv: fast-adv with the attacks")
    parser.add_argument("--limit", type=int, help="the first N test images of the suite and the attacks (default: all)")
    parser.add_argument("--data-dir")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a setting of all 3 recipes")
    parser.add_argument("--results", type=Path, help="append each seed as a JSON line here, and summarize the file")
    parser.add_argument("--runs", type=Path, help="keep the run folders here (default: a temporary folder, deleted)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        results = []
        for seed in args.seeds:
            results.append(run_seed(seed, args.runs or Path(scratch), args))
            if args.results:
                with open(args.results, "a") as f:
                    f.write(json.dumps(results[-1]) + "\n")
    if args.results:
        results = [json.loads(line) for line in args.results.read_text().splitlines() if line.strip()]
    print(json.dumps({"runs": results, "summary": summarize(results)}, indent=2))


if __name__ == "__main__":
    main()
