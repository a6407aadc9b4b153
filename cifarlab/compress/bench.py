"""`cifarlab bench RUN [RUN ...]` (run.bench writes it): what each variant of a net costs and what it scores, measured
side by side in one process with one thread count, so the rows compare.

A variant is a run folder (its tested checkpoint, PyTorch), a `cifarlab quantize` folder
(model.onnx, ONNX Runtime), or an exported `.onnx` file. Per variant: parameters and MACs of
the float architecture (a multiply-add counts once; unstructured zeros are still multiplied,
so the sparsity is shown beside them), the model file's size, batch-1 latency (p50 and p99
over `calls` single-image calls after warm-up), images/s at batch 256 (the best of `ROUNDS`
timings: on a shared CPU the least disturbed one counts), and the test accuracy the variant
was tested at once (its eval.json; an exported file with none is evaluated here). The
variants take turns in every round, so a busy moment hits them alike. The first variant is
the baseline of the speed-up and accuracy-change columns.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data import make_splits
from ..engine.checkpoint import Checkpoint, load_checkpoint
from ..engine.inference import checkpoint_loader, evaluate, input_size
from ..engine.metrics import read_tested
from ..engine.onnx_model import OnnxModel
from ..engine.runtime import hardware
from ..errors import CifarlabError
from ..models import ModelStats, create_model, model_stats
from .sparsity import sparsity

BATCH, ROUNDS, WARMUP = 256, 4, 5


@dataclass
class _Variant:
    label: str
    path: Path
    checkpoint: Checkpoint
    result: dict  # the test metrics it was tested at
    big: torch.Tensor  # BATCH test images (all of a smaller test set), in the layout the model runs in
    one: torch.Tensor


def measure(paths: list[str | Path], calls: int = 200, batches: int = 2, data_dir: str | None = None) -> dict:
    """The table as a dict: `rows` (one per variant, in order) and what it was measured on.
    Threads: torch's current count, which ONNX Runtime sessions take too (engine/onnx_model.py)."""
    if calls < 1 or batches < 1:
        raise CifarlabError("--calls and --batches must be at least 1")
    variants = [_variant(Path(p), label, data_dir) for p, label in zip(paths, _labels([Path(p) for p in paths]))]
    timings = _timings(variants, calls, batches)
    base = None
    rows = []
    for variant, (latencies, seconds) in zip(variants, timings):
        row = _row(variant, latencies, len(variant.big) * batches / seconds)
        base = base or row
        row["speedup_throughput"] = row["images_per_s"] / base["images_per_s"]
        row["speedup_latency"] = base["latency_ms_p50"] / row["latency_ms_p50"]
        row["accuracy_change"] = row["test_accuracy"] - base["test_accuracy"]
        rows.append(row)
    return {"rows": rows, "calls": calls, "batch": len(variants[0].big), "batches": batches, "rounds": ROUNDS,
            "threads": torch.get_num_threads(), "hardware": hardware(), "onnxruntime": _onnxruntime_version()}  # fmt: skip


def _labels(paths: list[Path]) -> list[str]:
    """Folder or file names, or whole paths where two share a name."""
    names = [p.name for p in paths]
    return [name if names.count(name) == 1 else str(path) for name, path in zip(names, paths)]


def _variant(path: Path, label: str, data_dir: str | None) -> _Variant:
    checkpoint, result = _tested(path, data_dir)
    config = checkpoint.config(data_dir)
    test = make_splits(config.data).test
    big = checkpoint_loader(checkpoint, config, test, torch.device("cpu")).prepare(test.images[:BATCH])
    if isinstance(checkpoint.model, OnnxModel):
        big = big.contiguous()
    return _Variant(label, path, checkpoint, result, big, big[:1].clone())


def _tested(path: Path, data_dir: str | None) -> tuple[Checkpoint, dict]:
    """The model a folder was tested with and that test's metrics; a file or checkpoint
    folder without a test is tested here, once, as its run was (the run's TTA)."""
    where, result = read_tested(path)
    checkpoint = load_checkpoint(where)
    if result is None:
        result = evaluate(path, "test", checkpoint.config().train.tta, data_dir, "cpu")
    return checkpoint, result


@torch.no_grad()
def _timings(variants: list[_Variant], calls: int, batches: int) -> list[tuple[list[float], float]]:
    """Per variant: the batch-1 call times (s) and the best round's seconds for `batches`
    batches of BATCH images."""
    for v in variants:  # warm-up: oneDNN primitives, ONNX Runtime's first runs
        for _ in range(WARMUP):
            v.checkpoint.model(v.one)
        v.checkpoint.model(v.big)
    latencies = [[] for _ in variants]
    best = [float("inf")] * len(variants)
    for turn in range(ROUNDS):
        per_round = calls // ROUNDS + (turn < calls % ROUNDS)  # `calls` in all
        for i, v in enumerate(variants):
            model = v.checkpoint.model
            start = time.perf_counter()
            for _ in range(batches):
                model(v.big)
            best[i] = min(best[i], time.perf_counter() - start)
            for _ in range(per_round):
                start = time.perf_counter()
                model(v.one)
                latencies[i].append(time.perf_counter() - start)
    return list(zip(latencies, best))


def _row(variant: _Variant, latencies: list[float], images_per_s: float) -> dict:
    meta = variant.checkpoint.meta
    model = variant.checkpoint.model
    onnx = isinstance(model, OnnxModel)
    stats = architecture_stats(variant.checkpoint)
    file = model.path if onnx else variant.checkpoint.path / "model.safetensors"
    ms = np.asarray(latencies) * 1000
    return {
        "label": variant.label,
        "path": str(variant.path),
        "model": meta["model"],
        "runtime": "onnxruntime" if onnx else "pytorch",
        "precision": "int8" if "quantization" in meta else "fp32",
        "params": stats.params,
        "macs": round(stats.mflops * 1e6 / 2),
        "sparsity": None if onnx else sparsity(model),
        "file_bytes": file.stat().st_size,
        "latency_ms_p50": float(np.percentile(ms, 50)),
        "latency_ms_p99": float(np.percentile(ms, 99)),
        "calls": len(ms),
        "images_per_s": images_per_s,
        "test_accuracy": variant.result["accuracy"],
        "tta": variant.result.get("tta", "none"),
    }


def architecture_stats(checkpoint: Checkpoint) -> ModelStats:
    """Parameters and FLOPs of the float architecture of a checkpoint (an int8 or exported
    model's too: its meta.json names the net it was made from), on its image size."""
    meta = checkpoint.meta
    with torch.device("meta"):
        architecture = create_model(meta["model"], len(meta["classes"]), meta.get("model_resized"),
                                    **meta.get("model_options", {}))  # fmt: skip
    return model_stats(architecture, input_size(checkpoint))


def _onnxruntime_version() -> str | None:
    try:
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime.__version__


def format_table(table: dict) -> str:
    """The rows as aligned text for the terminal."""
    header = ["variant", "runtime", "params", "MMACs", "file MB", "p50 ms", "p99 ms", "img/s@256", "×thr",
              "×lat", "test acc", "Δ acc"]  # fmt: skip
    lines = [header]
    for r in table["rows"]:
        lines.append([r["label"], f"{r['runtime']} {r['precision']}", f"{r['params']:,}", f"{r['macs'] / 1e6:,.1f}",
                      f"{r['file_bytes'] / 1e6:.2f}", f"{r['latency_ms_p50']:.2f}", f"{r['latency_ms_p99']:.2f}",
                      f"{r['images_per_s']:,.0f}", f"{r['speedup_throughput']:.2f}", f"{r['speedup_latency']:.2f}",
                      f"{r['test_accuracy']:.2%}", f"{100 * r['accuracy_change']:+.2f}"])  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))) for line in lines]
    hw = table["hardware"]
    text.append(f"{hw['cpu']}, {table['threads']} thread(s); p50/p99 over {table['rows'][0]['calls']} batch-1 calls, "
                f"throughput: best of {table['rounds']} rounds of {table['batches']}×{table['batch']} images; "
                f"Δ acc in points vs the first row")  # fmt: skip
    return "\n".join(text)

