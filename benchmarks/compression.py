"""The compression trade-off of a trained run, made with cifarlab's own commands and timed side
by side by `cifarlab bench`. Prints JSON.

    python benchmarks/compression.py RUN [--work DIR] [--macs-ratio 0.5] [--allocation uniform|global]
                                         [--finetune-epochs 3] [--threads T] [--results FILE.json] [--make-only]

Variants (in --work, default benchmarks/work/<run>; one already there is reused, so a rerun
only re-times):

- fp32 ONNX: `cifarlab export RUN` (what ONNX Runtime alone gives, without int8);
- sparse: `cifarlab prune RUN --method unstructured --amount 0.5` (half the weights zero; the
  same MACs, so no time should be saved);
- pruned: `cifarlab prune RUN --macs-ratio R --allocation A --finetune-epochs E` (channels; a
  global allocation's variants are named `-pruned-global`), and its fp32 ONNX export;
- int8 and pruned + int8: `cifarlab quantize ... --int8` (ONNX Runtime, 1,000 calibration images).

`goals` compares them with the source run (PyTorch fp32, the first row): int8 ≥ 2× throughput
at ≤ 0.3 points, pruned ≤ 0.5× MACs at ≤ 0.5 points with ≥ 1.6× latency speed-up, pruned + int8
≥ 3× throughput at ≤ 1 point. The pruned net's batch-1 latency is given twice, each against the
unpruned net in the same runtime: in eager PyTorch, where a small net's per-layer dispatch
overhead (the same number of layers either way) caps the gain, and in ONNX Runtime, which a
deployment of a pruned net would use. Time it alone on the machine: the bench shares nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import cifarlab
from cifarlab.compress.bench import format_table
from cifarlab.compress.channels import ALLOCATIONS
from cifarlab.run import bench

NO_REPORT = ["train.report=false"]


def variants(run: Path, work: Path, macs_ratio: float, epochs: int, allocation: str = "uniform") -> dict[str, Path]:
    """Make (or reuse) every variant; returns them by role, the source first."""
    name = run.name
    pruned = f"{name}-pruned" + ("" if allocation == "uniform" else f"-{allocation}")
    paths = {"fp32": run, "fp32 onnx": work / f"{name}.onnx", "sparse": work / f"{name}-sparse",
             "pruned": work / pruned, "pruned onnx": work / f"{pruned}.onnx",
             "int8": work / f"{name}-int8", "pruned int8": work / f"{pruned}-int8"}  # fmt: skip
    work.mkdir(parents=True, exist_ok=True)
    if not paths["fp32 onnx"].is_file():
        cifarlab.export_model(run, "onnx", paths["fp32 onnx"])
    if not (paths["sparse"] / "eval.json").is_file():
        cifarlab.prune(run, "unstructured", amount=0.5, finetune_epochs=epochs, out=str(paths["sparse"]), sets=NO_REPORT)
    if not (paths["pruned"] / "eval.json").is_file():
        cifarlab.prune(run, "channels", macs_ratio=macs_ratio, finetune_epochs=epochs, out=str(paths["pruned"]),
                       sets=NO_REPORT, allocation=allocation)  # fmt: skip
    made = made_with(paths["pruned"])
    if made != {"macs_ratio_target": macs_ratio, "allocation": allocation, "finetune_epochs": epochs}:
        raise SystemExit(f"{paths['pruned']} was made with {made}, not these settings; remove it or choose another --work")
    if not paths["pruned onnx"].is_file():
        cifarlab.export_model(paths["pruned"], "onnx", paths["pruned onnx"])
    for source, target in ((run, "int8"), (paths["pruned"], "pruned int8")):
        if not (paths[target] / "eval.json").is_file():
            cifarlab.quantize(source, cifarlab.QuantizeConfig(out=str(paths[target])))
    return paths


def made_with(pruned: Path) -> dict:
    """The settings a pruned run was made with, which the report names as its own."""
    record = json.loads((pruned / "prune.json").read_text())
    epochs = cifarlab.resolve_config(config_file=str(pruned / "config.yaml")).train.epochs
    return {"macs_ratio_target": record["macs_ratio_target"], "allocation": record["allocation"], "finetune_epochs": epochs}


def goals(rows: dict[str, dict]) -> dict:
    """Each goal of the compression issue with the measured figures it rests on."""
    base = rows["fp32"]

    def loss(role: str) -> float:  # in points, rounded: 0.5 must not read as 0.5000000000000004
        return round(100 * (base["test_accuracy"] - rows[role]["test_accuracy"]), 2)

    def latency_speedup(role: str, baseline: str) -> float:
        return rows[baseline]["latency_ms_p50"] / rows[role]["latency_ms_p50"]

    pruned, int8, both = rows["pruned"], rows["int8"], rows["pruned int8"]
    latency = {"pytorch": latency_speedup("pruned", "fp32"), "onnxruntime": latency_speedup("pruned onnx", "fp32 onnx")}
    return {
        "int8": {"speedup_throughput": int8["speedup_throughput"], "loss_points": loss("int8"),
                 "met": int8["speedup_throughput"] >= 2.0 and loss("int8") <= 0.3},
        "pruned": {"macs_ratio": pruned["macs"] / base["macs"], "loss_points": loss("pruned"),
                   "speedup_latency": latency, "speedup_throughput": pruned["speedup_throughput"],
                   "latency_goal_met_in": [runtime for runtime, speedup in latency.items() if speedup >= 1.6],
                   "met": pruned["macs"] / base["macs"] <= 0.5 and loss("pruned") <= 0.5
                   and max(latency.values()) >= 1.6},
        "pruned int8": {"speedup_throughput": both["speedup_throughput"], "loss_points": loss("pruned int8"),
                        "met": both["speedup_throughput"] >= 3.0 and loss("pruned int8") <= 1.0},
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--work", type=Path, help="where the variants go (default: benchmarks/work/<run>)")
    parser.add_argument("--macs-ratio", type=float, default=0.5)
    parser.add_argument("--allocation", default="uniform", choices=ALLOCATIONS,
                        help="how pruning shares the channels among layers")
    parser.add_argument("--finetune-epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, help="CPU threads for the timings (default: torch's)")
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--results", help="also write the JSON here")
    parser.add_argument("--make-only", action="store_true", help="make the variants, time nothing (the timing wants "
                                                                 "the machine alone; making them does not)")  # fmt: skip
    args = parser.parse_args()
    work = args.work or Path("benchmarks/work") / args.run.name
    paths = variants(args.run, work, args.macs_ratio, args.finetune_epochs, args.allocation)
    if args.make_only:
        return
    table, _ = bench(list(paths.values()), work, args.threads, args.calls)
    rows = dict(zip(paths, table["rows"]))
    report = {"run": str(args.run), "macs_ratio_target": args.macs_ratio, "allocation": args.allocation,
              "finetune_epochs": args.finetune_epochs,
              "torch": torch.__version__, "goals": goals(rows), "bench": table}  # fmt: skip
    print(format_table(table), flush=True)
    text = json.dumps(report, indent=2)
    print(text)
    if args.results:
        Path(args.results).write_text(text + "\n")


if __name__ == "__main__":
    main()
