"""Is lr-find's suggestion any good? The range test on a recipe, then short runs at the
suggestion, a third of it and three times it (every group's lr scaled together, as the
suggested --set line does), compared on validation accuracy (never the test set). Prints
JSON; --out FILE writes it too.

    python benchmarks/lr_find_check.py --recipe resnet20 --epochs 2 --data-dir ../shared/data
    python benchmarks/lr_find_check.py --recipe fast90 --epochs 2 --start 0.1 --end 1000 \
        --set data.val_size=5000 --data-dir ../shared/data

(`fast90` holds out no validation images, so the check adds 5,000; its optim.lr is the
biases' lr per 1024 examples, 54.3, hence the higher range.) Each run is untested
(`train(test=False)`): its score is its best validation accuracy after --epochs.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import cifarlab
from cifarlab.engine.runtime import hardware
from cifarlab.fileio import write_json
from cifarlab.tune.lr_find import lr_find, yaml_number

FACTORS = (1 / 3, 1.0, 3.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", required=True)
    parser.add_argument("--epochs", type=int, default=2, help="epochs of each check run (default: 2)")
    parser.add_argument("--start", type=float, default=1e-6)
    parser.add_argument("--end", type=float, default=10.0)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="for the test and every run")
    parser.add_argument("--data-dir")
    parser.add_argument("--out", metavar="FILE.json")
    args = parser.parse_args()
    sets = args.set + ([f"data.data_dir={args.data_dir}"] if args.data_dir else [])

    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        found = lr_find(cifarlab.resolve_config(args.recipe, sets=sets), args.start, args.end, args.steps,
                        str(Path(scratch) / "lr-find"))  # fmt: skip
        result = {"recipe": args.recipe, "sets": args.set, "epochs": args.epochs, "range": [args.start, args.end],
                  "steps": args.steps, "stop": found.result.stop, "note": found.result.note,
                  "suggestion": found.result.suggestion, "suggested_sets": found.sets,
                  "lr_find_seconds": round(time.perf_counter() - started, 1), "runs": []}  # fmt: skip
        if found.factor is None:
            print(json.dumps(result, indent=2))
            raise SystemExit("no suggestion to check: " + found.result.note)
        for factor in FACTORS:
            scaled = []
            for line in found.sets:
                key, value = line.split("=")
                scaled.append(f"{key}={yaml_number(float(value) * factor)}")
            config = cifarlab.resolve_config(args.recipe, sets=[*sets, *scaled, f"train.epochs={args.epochs}",
                                                                f"train.out={Path(scratch) / f'x{factor:.3g}'}"])  # fmt: skip
            started = time.perf_counter()
            run = cifarlab.train(config, verbose=False, test=False)
            result["runs"].append({"times_suggestion": round(factor, 4), "sets": scaled,
                                   "best_val_accuracy": run.best_val_accuracy,
                                   "seconds": round(time.perf_counter() - started, 1)})  # fmt: skip
    result["hardware"] = hardware()
    print(json.dumps(result, indent=2))
    if args.out:
        write_json(args.out, result)


if __name__ == "__main__":
    main()
