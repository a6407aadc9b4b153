"""Time to 90/93/94% CIFAR-10 test accuracy for a recipe over several seeds, beside a
plain-PyTorch baseline (same net, torchvision DataLoader + transforms, plain SGD + cosine).
Prints JSON.

    python benchmarks/time_to_accuracy.py --recipe fast90 --seeds 0 1 2 --probe --baseline-epochs 10

Times are wall-clock seconds on this machine: `train_seconds` runs from the first step (the
whitening init included) to the end of the last epoch; `eval_seconds` is the one final test
evaluation with the recipe's TTA; their sum is the headline. `train_gflop_per_s` is the
training's arithmetic (FLOPs of one forward and backward pass per image, counted by
torch.utils.flop_counter, × the images trained on) over `train_seconds`; with --peak, the
process first measures this CPU's fp32 matmul rate (`fp32_matmul_gflop_per_s`), and each run
says what fraction of it the training reached. The count is of direct convolution; where
oneDNN computes a conv with fewer operations (Winograd), the fraction can pass 1: `fast`
reached 1.19 on the development machine. The final accuracy comes from
the honest path (eval.json: fixed budget, test evaluated once). With --probe the test set is
also evaluated after every epoch, off the clock and without influencing training, to find
when each threshold was first crossed (time = training time so far + that evaluation).
--results FILE appends every finished seed as a JSON line and summarizes all lines of the
same recipe, so seeds can be run in separate sessions. --runs DIR keeps each seed's run
directory (checkpoints, eval.json, report) as DIR/<recipe>-seed<N> (compared ones as DIR/compared-<recipe>-seed<N>); by default deleted.
--compare RECIPE runs a second recipe after each seed, with the same seed, in the same script
run (e.g. `airbench94_muon`, the record's budget; --compare-set gives its settings), and reports
the ratio of the mean total times and the difference of the mean accuracies over those seeds.
Every run has a fresh process of its own: memory reuse, once on, holds for the whole process.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode
from torchvision import transforms

import cifarlab
from cifarlab.data import DeviceLoader, get_spec, load_split, locate
from cifarlab.engine.metrics import predict
from cifarlab.engine.metrics_log import read_metrics
from cifarlab.engine.runtime import autocast, hardware

THRESHOLDS = (0.90, 0.93, 0.94)


class TestProbe:
    """After each epoch, off the clock: test accuracy with the run's TTA."""

    def __init__(self):
        self.points: list[dict] = []

    def on_epoch_end(self, trainer) -> None:
        with trainer.untimed():
            start = time.perf_counter()
            tta = trainer.config.train.tta
            logits, labels = predict(trainer.eval_model, trainer.test_loader, tta, autocast(trainer.device, trainer.config.train.precision),
                                     trainer.config.train.tta_share)  # fmt: skip
            accuracy = (logits.argmax(1) == labels).double().mean().item()
            self.points.append({"epoch": trainer.epoch, "train_seconds": trainer.elapsed,
                                "eval_seconds": time.perf_counter() - start, "accuracy": accuracy})  # fmt: skip


def times_to_thresholds(points: list[dict]) -> dict:
    out = {}
    for threshold in THRESHOLDS:
        hit = next((p for p in points if p["accuracy"] >= threshold), None)
        out[f"{threshold:.0%}"] = round(hit["train_seconds"] + hit["eval_seconds"], 1) if hit else None
    return out


def matmul_peak(seconds: float = 5.0, n: int = 2048, dtype: torch.dtype = torch.float32) -> float:
    """This CPU's GFLOP/s on n × n matmuls in `dtype` with torch's threads: the ceiling a
    training run's arithmetic rate is set against."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        calls += 1
    return 2 * n**3 * calls / (time.perf_counter() - start) / 1e9


def train_flops_per_image(config: cifarlab.Config, side: int = 32) -> float:
    """FLOPs of one training forward and backward pass per side × side image (frozen layers
    compute no weight gradients, so this is less than 3× the forward's)."""
    model = cifarlab.create_model(config.model.name, **config.model.options).train()
    with FlopCounterMode(display=False) as counter:
        model(torch.randn(2, 3, side, side)).sum().backward()
    return counter.get_total_flops() / 2


def train_flops(config: cifarlab.Config, epoch_ends: list[int]) -> float:
    """FLOPs of a run's training steps (`epoch_ends`: the step count at each epoch's end), each
    epoch's at its image side (train.low_res) and with its own steps (train.drop_easy's late
    epochs have fewer; its scoring pass is not training and is not counted)."""
    t = config.train
    sides = [t.low_res if epoch < t.low_res_epochs else config.data.image_size for epoch in range(t.epochs)]
    per_side = {side: train_flops_per_image(config, side) for side in set(sides)}
    steps = [end - start for start, end in zip([0, *epoch_ends], epoch_ends)]
    return sum(per_side[side] * n for side, n in zip(sides, steps)) * t.batch_size


def run_recipe(recipe: str, seed: int, data_dir: str | None, sets: list[str], probe: bool, out: Path,
               peak: float | None = None) -> dict:  # fmt: skip
    config = cifarlab.resolve_config(
        recipe, flags={"train": {"seed": seed, "out": str(out)}, "data": {"data_dir": data_dir}}, sets=sets
    )
    probe_callback = TestProbe()
    run = cifarlab.train(config, callbacks=[probe_callback] if probe else [], verbose=False)
    final = {"epoch": config.train.epochs, "train_seconds": run.test["train_seconds"],
             "eval_seconds": run.test["eval_seconds"], "accuracy": run.test["accuracy"]}  # fmt: skip
    points = probe_callback.points[:-1] + [final] if probe else [final]
    epoch_ends = [m["step"] for m in read_metrics(run.dir / "metrics.jsonl") if m.get("kind") == "epoch"]
    gflop_per_s = train_flops(config, epoch_ends) / final["train_seconds"] / 1e9
    return {
        "recipe": recipe, "seed": seed, "sets": sets, "final_accuracy": run.test["accuracy"],
        "train_seconds": round(final["train_seconds"], 1), "eval_seconds": round(final["eval_seconds"], 1),
        "total_seconds": round(final["train_seconds"] + final["eval_seconds"], 1), "tta": config.train.tta,
        "time_to": times_to_thresholds(points), "probes": points if probe else None,
        "train_gflop_per_s": round(gflop_per_s, 1), "of_fp32_matmul_peak": round(gflop_per_s / peak, 3) if peak else None,
    }  # fmt: skip


def measured_run(recipe: str, seed: int, data_dir: str | None, sets: list[str], probe: bool, out: Path,
                 peak: float | None, warmup: bool) -> dict:  # fmt: skip
    """One timed run; with `warmup`, after an untimed one (seed 1000) in the same process, so
    that torch.compile and cuDNN autotuning are not timed."""
    if warmup:
        with tempfile.TemporaryDirectory(prefix="cifarlab-warmup-") as tmp:
            run_recipe(recipe, 1000, data_dir, sets, False, Path(tmp) / "run")
    return run_recipe(recipe, seed, data_dir, sets, probe, out, peak)


def in_fresh_process(fn, *args):
    """fn(*args) in a new process, waited for. Some settings hold for a whole process once a run
    makes them (memory reuse's malloc options, the thread count), so each run gets its own: a
    run without memory reuse after one with it would otherwise reuse memory too."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def run_baseline(config: cifarlab.Config, seed: int, epochs: int, batch_size: int, lr: float, data_dir) -> dict:
    """What a plain PyTorch script does with the same net: torchvision transforms in a
    DataLoader (2 workers), one SGD group (Nesterov 0.9, wd 5e-4), cosine, mean loss, no TTA.
    The net keeps its architecture and initialization (whitening filters included), but its
    head in the usual parametrization: the recipe's `head_*` options re-scale the head for
    per-group learning rates, which a single-lr SGD does not have."""
    torch.manual_seed(seed)
    spec = get_spec("cifar10")
    options = {k: v for k, v in config.model.options.items() if not k.startswith("head_")}
    model = cifarlab.create_model(config.model.name, **options).to(memory_format=torch.channels_last)
    train_set = load_split("cifar10", "train", data_dir)
    test_loader = DeviceLoader(load_split("cifar10", "test", data_dir), 1000, spec.mean, spec.std)
    pipeline = transforms.Compose([
        transforms.RandomCrop(32, padding=4, padding_mode="reflect"), transforms.RandomHorizontalFlip(),
        transforms.ToTensor(), transforms.Normalize(spec.mean, spec.std),
    ])  # fmt: skip
    root = locate("cifar10", data_dir, download=False).parent
    dataset = torchvision.datasets.CIFAR10(root, train=True, transform=pipeline, download=False)
    loader = DataLoader(dataset, batch_size, shuffle=True, drop_last=True, num_workers=2, persistent_workers=True)
    start = time.perf_counter()
    if hasattr(model, "init_from_data"):
        images = DeviceLoader(train_set, 5000, spec.mean, spec.std).prepare(train_set.images[:5000])
        model.init_from_data(images)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * len(loader))
    points, paused = [], 0.0
    for epoch in range(epochs):
        model.train()
        for x, y in loader:
            loss = F.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        train_seconds = time.perf_counter() - start - paused
        probe_start = time.perf_counter()
        logits, labels = predict(model, test_loader)
        eval_seconds = time.perf_counter() - probe_start
        paused += eval_seconds
        points.append({"epoch": epoch + 1, "train_seconds": train_seconds, "eval_seconds": eval_seconds,
                       "accuracy": (logits.argmax(1) == labels).double().mean().item()})  # fmt: skip
    return {"seed": seed, "epochs": epochs, "batch_size": batch_size, "lr": lr, "final_accuracy": points[-1]["accuracy"],
            "time_to": times_to_thresholds(points), "probes": points}  # fmt: skip


def baseline_ratios(run: dict, baseline: dict) -> dict:
    """Baseline time over recipe time per threshold, for the same seed. Where the baseline
    never got there, its whole training time over the recipe's is a lower bound."""
    ratios, bounds = {}, {}
    baseline_total = baseline["probes"][-1]["train_seconds"]
    for key, fast_time in run["time_to"].items():
        base_time = baseline["time_to"][key]
        ratios[key] = round(base_time / fast_time, 2) if base_time and fast_time else None
        if fast_time and not base_time:
            bounds[key] = round(baseline_total / fast_time, 2)
    return {"ratio_seed": run["seed"], "baseline_time_over_recipe_time": ratios,
            "baseline_time_over_recipe_time_at_least": bounds}  # fmt: skip


def summarize(results: list[dict]) -> dict:
    accuracies = [r["final_accuracy"] for r in results]
    totals = [r["total_seconds"] for r in results]
    spread = lambda xs: round(statistics.stdev(xs), 5) if len(xs) > 1 else None  # noqa: E731
    return {
        "seeds": [r["seed"] for r in results],
        "final_accuracy_mean": round(statistics.mean(accuracies), 5), "final_accuracy_std": spread(accuracies),
        "total_seconds_mean": round(statistics.mean(totals), 1), "total_seconds_std": spread(totals),
        "time_to_94%_all_seeds": [r["time_to"]["94%"] for r in results],
    }  # fmt: skip


def side_by_side(results: list[dict], compared: list[dict]) -> dict:
    """The recipe against the compared recipe, over the seeds both ran in this script run."""
    mean = lambda runs, key: statistics.mean(r[key] for r in runs)  # noqa: E731
    return {
        "recipe": compared[0]["recipe"], "runs": compared, "summary": summarize(compared),
        "time_over_compared": round(mean(results, "total_seconds") / mean(compared, "total_seconds"), 3),
        "accuracy_minus_compared": round(mean(results, "final_accuracy") - mean(compared, "final_accuracy"), 5),
    }  # fmt: skip


def append_line(path: str | None, result: dict) -> None:
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({**result, "hardware": hardware()}) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="fast")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--data-dir")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--probe", action="store_true", help="evaluate test after every epoch, off the clock")
    parser.add_argument("--baseline-epochs", type=int, default=0, help="also run the plain baseline (0 = skip)")
    parser.add_argument("--baseline-batch-size", type=int, default=512)
    parser.add_argument("--baseline-lr", type=float, default=0.05)
    parser.add_argument("--warmup", action="store_true",
                        help="before each timed run, an untimed one (seed 1000) in its process, so torch.compile and "
                             "cuDNN autotuning are not timed")
    parser.add_argument("--runs", metavar="DIR", help="keep the run directories here")
    parser.add_argument("--results", help="JSON-lines file: append each seed, summarize all lines of the recipe")
    parser.add_argument("--peak", action="store_true", help="first measure the CPU's fp32 matmul GFLOP/s (5 s)")
    parser.add_argument("--compare", metavar="RECIPE",
                        help="after each seed, run this recipe with the same seed, for a time ratio")
    parser.add_argument("--compare-set", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting of the --compare recipe (e.g. the same train.precision as --set gives)")
    args = parser.parse_args()
    peak = matmul_peak() if args.peak else None

    results, compared = [], []
    with tempfile.TemporaryDirectory(prefix="cifarlab-bench-") as tmp:
        for seed in args.seeds:
            for recipe, sets, runs, prefix in ((args.recipe, args.set, results, ""),
                                               (args.compare, args.compare_set, compared, "compared-")):
                if recipe:
                    out = Path(args.runs or tmp) / f"{prefix}{recipe}-seed{seed}"  # a recipe can be compared with itself
                    runs.append(in_fresh_process(measured_run, recipe, seed, args.data_dir, sets, args.probe, out, peak,
                                                 args.warmup))  # fmt: skip
                    append_line(args.results, runs[-1])
    runs = results  # with --results: every seed on file, those of earlier sessions too
    if args.results:
        lines = [json.loads(line) for line in Path(args.results).read_text().splitlines() if line.strip()]
        runs = [r for r in lines if r.get("recipe") == args.recipe and r.get("sets") == args.set]
    report = {"benchmark": "time_to_accuracy", "hardware": hardware(), "recipe": args.recipe,
              "fp32_matmul_gflop_per_s": round(peak, 1) if peak else None, "runs": runs,
              "summary": summarize(runs), "warmup": args.warmup}  # fmt: skip
    if args.compare:
        report["compared"] = side_by_side(results, compared)
    if args.baseline_epochs:
        config = cifarlab.resolve_config(args.recipe, sets=args.set)
        baseline = run_baseline(config, args.seeds[0], args.baseline_epochs, args.baseline_batch_size,
                                args.baseline_lr, args.data_dir)  # fmt: skip
        report["baseline"] = baseline
        report.update(baseline_ratios(results[0], baseline))  # the same seed, run in this process
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
