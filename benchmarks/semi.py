"""Semi-supervised vs labels-only training at equal wall time on this machine. Prints JSON.

    python benchmarks/semi.py --labels-per-class 400 --seeds 0 1 2 --budget-minutes 60

For each seed, two arms of the `fast-semi` recipe on the same labelled images (data.split_seed
fixes them): its semi-supervised method (fixmatch, or --method pseudo) and labels-only
(semi.method=none; --baseline-set adds settings to this arm only, e.g. optim.label_smoothing=0.2).
Each arm gets the same budget (--baseline-minutes gives labels-only its own): it first trains a
few steps (a probe, off the books) to measure its seconds per step here, then runs with the most
epochs whose steps fit the budget less --reserve-minutes (start-up and the final test
evaluation, which both arms pay alike). Reported:
each arm's real train and eval seconds, its test accuracy (eval.json: the test set evaluated
once, at the end), and semi minus labels-only in points. The probe assumes the machine's speed
stays as it was: on a shared CPU an arm can end far from the budget (`within_budget` says).
--results FILE appends each seed as a JSON line and summarizes the file's lines measured alike
(labels per class, method, settings, budgets; a seed measured again counts once, by its last line).

--method selftrain: the semi arm is a labels-only teacher given --teacher-minutes (fitted as
above), then --rounds students of --student-recipe (no validation or calibration hold-out: every
label trains), each taught by the run before it (--thresholds: how sure each round's teacher must be,
e.g. 0.95 0.6 when the students' label smoothing caps their confidence below 0.95); the arm's
time is the teacher's train and eval seconds plus each student's whole wall time (its labelling
of the pool included), all against the one budget.
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

PROBE_STEPS = 8  # the first step (whitening init, allocation) is left out of the timing


class _Probe:
    """Times steps 2..PROBE_STEPS of a run, then stops it."""

    class Done(Exception):
        pass

    def __init__(self):
        self.elapsed = {}

    def on_log(self, trainer, record):
        if record["kind"] == "step":
            self.elapsed[record["step"]] = record["elapsed"]
            self.steps_per_epoch = trainer.steps_per_epoch
            if record["step"] == PROBE_STEPS:
                raise _Probe.Done

    def seconds_per_step(self) -> float:
        return (self.elapsed[PROBE_STEPS] - self.elapsed[1]) / (PROBE_STEPS - 1)


def arm_config(args, seed: int, method: str, out: Path, extra: list[str], epochs: int | None = None) -> cifarlab.Config:
    sets = [f"data.labels_per_class={args.labels_per_class}", f"semi.method={method}", f"train.seed={seed}",
            f"train.out={out}", "train.report=false", *args.set, *extra]  # fmt: skip
    if args.data_dir:
        sets.append(f"data.data_dir={args.data_dir}")
    if epochs is not None:
        sets.append(f"train.epochs={epochs}")
    return cifarlab.resolve_config("fast-semi", sets=sets)


def run_arm(args, seed: int, method: str, folder: Path, extra: list[str], minutes: float | None = None) -> dict:
    probe = _Probe()
    # PROBE_STEPS epochs: the probe stops itself at step PROBE_STEPS even at one step per epoch (25 labels per class).
    probe_config = arm_config(args, seed, method, folder / f"{method}-seed{seed}-probe", extra + ["train.log_every=1"],
                              epochs=PROBE_STEPS)
    try:
        cifarlab.train(probe_config, callbacks=[probe], verbose=False)
    except _Probe.Done:
        pass
    seconds_per_step = probe.seconds_per_step()
    minutes = minutes or args.budget_minutes
    train_budget = 60 * (minutes - args.reserve_minutes)
    epochs = max(1, int(train_budget / (seconds_per_step * probe.steps_per_epoch)))
    run = cifarlab.train(arm_config(args, seed, method, folder / f"{method}-seed{seed}", extra, epochs), verbose=False)
    test = run.test
    return {"method": method, "dir": str(run.dir), "epochs": epochs, "steps_per_epoch": probe.steps_per_epoch,
            "probe_seconds_per_step": round(seconds_per_step, 3), "accuracy": test["accuracy"],
            "train_seconds": round(test["train_seconds"], 1), "eval_seconds": round(test["eval_seconds"], 1),
            "total_seconds": round(test["train_seconds"] + test["eval_seconds"], 1),
            "within_budget": test["train_seconds"] + test["eval_seconds"] <= 60 * minutes}  # fmt: skip


def selftrain_arm(args, seed: int, folder: Path) -> dict:
    """A labels-only teacher on part of the budget, then students, each taught by the last run."""
    teacher = run_arm(args, seed, "none", folder / "teacher", [], minutes=args.teacher_minutes)
    taught_by, total, rounds = teacher["dir"], teacher["total_seconds"], []
    for round_ in range(1, args.rounds + 1):
        sets = [f"data.labels_per_class={args.labels_per_class}", "data.val_size=0", "data.calib_size=0",
                "semi.method=selftrain", f"semi.teacher={taught_by}", f"train.seed={seed}",
                f"train.out={folder / f'selftrain-seed{seed}-round{round_}'}", "train.report=false", *args.set,
                *args.student_set]  # fmt: skip
        if args.thresholds:
            sets.append(f"semi.threshold={args.thresholds[round_ - 1]}")
        if args.data_dir:
            sets.append(f"data.data_dir={args.data_dir}")
        start = time.perf_counter()
        run = cifarlab.train(cifarlab.resolve_config(args.student_recipe, sets=sets), verbose=False)
        wall = time.perf_counter() - start
        record = json.loads((run.dir / "labelled.json").read_text())
        rounds.append({"accuracy": run.test["accuracy"], "pseudo_labelled": record["pseudo_labelled"],
                       "train_seconds": round(run.test["train_seconds"], 1), "wall_seconds": round(wall, 1)})  # fmt: skip
        taught_by, total = str(run.dir), total + wall
    return {"method": "selftrain", "student_recipe": args.student_recipe, "teacher": teacher, "rounds": rounds,
            "accuracy": rounds[-1]["accuracy"], "total_seconds": round(total, 1),
            "within_budget": total <= 60 * args.budget_minutes}  # fmt: skip


def setup(args) -> dict:
    """What a result line was measured with: the summary averages only lines that agree on it."""
    measured = {"labels_per_class": args.labels_per_class, "method": args.method, "sets": args.set,
                "baseline_sets": args.baseline_set, "budget_seconds": 60 * args.budget_minutes,
                "baseline_budget_seconds": 60 * (args.baseline_minutes or args.budget_minutes),
                "reserve_seconds": 60 * args.reserve_minutes}  # fmt: skip
    if args.method == "selftrain":
        measured.update(rounds=args.rounds, thresholds=args.thresholds, student_recipe=args.student_recipe,
                        student_sets=args.student_set, teacher_minutes=args.teacher_minutes)  # fmt: skip
    return measured


def run_seed(args, seed: int, folder: Path) -> dict:
    semi = selftrain_arm(args, seed, folder) if args.method == "selftrain" else run_arm(args, seed, args.method, folder, [])
    labels_only = run_arm(args, seed, "none", folder, args.baseline_set, minutes=args.baseline_minutes)
    return {
        **setup(args), "seed": seed, "semi": semi, "labels_only": labels_only,
        "gain_points": round(100 * (semi["accuracy"] - labels_only["accuracy"]), 2), "hardware": hardware(),
    }  # fmt: skip


def summarize(results: list[dict]) -> dict:
    mean = lambda xs: round(statistics.mean(xs), 5)  # noqa: E731
    return {
        "seeds": [r["seed"] for r in results],
        "semi_accuracy_mean": mean([r["semi"]["accuracy"] for r in results]),
        "labels_only_accuracy_mean": mean([r["labels_only"]["accuracy"] for r in results]),
        "gain_points_mean": round(statistics.mean(r["gain_points"] for r in results), 2),
        "semi_total_seconds_max": max(r["semi"]["total_seconds"] for r in results),
        "labels_only_total_seconds_max": max(r["labels_only"]["total_seconds"] for r in results),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--labels-per-class", type=int, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--method", default="fixmatch", help="fixmatch | pseudo | selftrain (default: fixmatch)")
    parser.add_argument("--teacher-minutes", type=float, default=10.0, help="selftrain: the teacher's budget")
    parser.add_argument("--rounds", type=int, default=1, help="selftrain: students, each taught by the last run")
    parser.add_argument("--student-recipe", default="fast", help="selftrain: the students' recipe (default: fast)")
    parser.add_argument("--student-set", action="append", default=[], metavar="KEY=VALUE",
                        help="selftrain: a setting of the students only")
    parser.add_argument("--thresholds", type=float, nargs="+", metavar="TAU",
                        help="selftrain: semi.threshold of each round, one per round (default: the recipe's)")
    parser.add_argument("--budget-minutes", type=float, default=60.0, help="wall time per arm, all included")
    parser.add_argument("--baseline-minutes", type=float,
                        help="the labels-only arm's budget (default: --budget-minutes; less where it has long "
                             "stopped improving, e.g. on 250 images)")
    parser.add_argument("--reserve-minutes", type=float, default=3.0,
                        help="of the budget, kept for start-up and the final TTA evaluation (default: 3)")
    parser.add_argument("--data-dir")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a setting of both arms")
    parser.add_argument("--baseline-set", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting of the labels-only arm only")
    parser.add_argument("--results", type=Path, help="append each seed as a JSON line here, and summarize the file")
    parser.add_argument("--runs", type=Path, help="keep the run folders here (default: a temporary folder, deleted)")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds {args.rounds}: self-training needs one student or more")
    if args.thresholds and len(args.thresholds) != args.rounds:
        parser.error(f"--thresholds needs one value per round ({args.rounds}), got {len(args.thresholds)}")
    if any(not 0 < tau <= 1 for tau in args.thresholds or []):
        parser.error(f"--thresholds {' '.join(map(str, args.thresholds))}: each must be in (0, 1]")
    for name, minutes in (("--budget-minutes", args.budget_minutes), ("--teacher-minutes", args.teacher_minutes),
                          ("--baseline-minutes", args.baseline_minutes)):
        if minutes is not None and minutes <= args.reserve_minutes:
            parser.error(f"{name} {minutes} leaves no training time after --reserve-minutes {args.reserve_minutes}")
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.runs or Path(scratch)
        results = []
        for seed in args.seeds:
            results.append(run_seed(args, seed, folder))
            if args.results:
                with open(args.results, "a") as f:
                    f.write(json.dumps(results[-1]) + "\n")
    if args.results:
        lines = [json.loads(line) for line in args.results.read_text().splitlines() if line.strip()]
        wanted = setup(args)
        alike = {r["seed"]: r for r in lines if all(r.get(key) == value for key, value in wanted.items())}
        results = list(alike.values())  # a seed measured again counts once, by its last line
    print(json.dumps({"runs": results, "summary": summarize(results)}, indent=2))


if __name__ == "__main__":
    main()
