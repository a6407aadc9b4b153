"""The calibration of trained runs on their test images, raw and temperature-scaled, per run and
as mean ± std over the runs of each recipe. Prints JSON.

    python benchmarks/calibration.py RUN [RUN ...] [--results FILE.json]

Each RUN is a finished `cifarlab train` run: train fits the temperature at the end on the
run's held-out images (its calibration hold-out, else its validation split) and writes the
test figures, raw and calibrated, to RUN/eval.json; this script only gathers them, so it
measures what a user's own run reports. Nothing here is timed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import yaml

SCORES = ("ece", "classwise_ece", "nll", "brier")


def run_row(run: Path) -> dict:
    """One run's test accuracy, its temperature and where it was fitted, and the scores."""
    try:
        result = json.loads((run / "eval.json").read_text())
        config = yaml.safe_load((run / "config.yaml").read_text())
        fit = json.loads((run / "checkpoints" / result["checkpoint"] / "calibration.json").read_text())
        calibration = result["calibration"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        sys.exit(f"error: {run} is not a finished, calibrated run ({type(error).__name__}: {error})")
    return {
        "run": str(run), "recipe": config["recipe"], "model": config["model"]["name"],
        "epochs": config["train"]["epochs"], "seed": config["train"]["seed"],
        "test_accuracy": result["accuracy"], "test_images": calibration["images"], "bins": calibration["bins"],
        "temperature": calibration["temperature"], "fitted_on": fit["split"], "fitted_images": fit["images"],
        "raw": {k: calibration["raw"][k] for k in SCORES}, "calibrated": {k: calibration["calibrated"][k] for k in SCORES},
    }  # fmt: skip


def mean_std(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None}


def summary(rows: list[dict]) -> dict:
    """Mean ± std (sample std; None for one run) of each figure over the runs of a recipe and budget."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(f"{row['recipe']} ({row['model']}, {row['epochs']} epochs)", []).append(row)
    return {
        name: {"runs": len(group), "seeds": [r["seed"] for r in group],
               "test_accuracy": mean_std([r["test_accuracy"] for r in group]),
               "temperature": mean_std([r["temperature"] for r in group]),
               **{f"{kind}_{score}": mean_std([r[kind][score] for r in group])
                  for kind in ("raw", "calibrated") for score in SCORES}}
        for name, group in groups.items()
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--results", help="also write the JSON here")
    args = parser.parse_args()
    rows = [run_row(run) for run in args.runs]
    text = json.dumps({"runs": rows, "summary": summary(rows)}, indent=2)
    print(text)
    if args.results:
        Path(args.results).write_text(text + "\n")


if __name__ == "__main__":
    main()
