"""int8 inference on this CPU: the float model in PyTorch (eager, channels_last, as `cifarlab
eval` runs it) against each way `cifarlab quantize` can make it int8. Prints JSON.

    python benchmarks/quantize_throughput.py RUN [RUN ...] [--calib 1000] [--threads T] [--results FILE.json]

Per run, on the same test images (no TTA) and calibration images (the run's training split,
as `cifarlab quantize` picks them):

- fp32 eager: PyTorch, oneDNN fp32 kernels;
- fp32 onnxruntime: the ONNX export in ONNX Runtime (the reference for its int8 speed-up);
- int8 onnxruntime: ONNX Runtime's quantize_static, U8S8, QDQ, per-channel (the default backend);
  also S8S8 (signed activations), to show why U8S8;
- int8 pt2e compiled: torchao PT2E + X86InductorQuantizer, converted, torch.compile with
  freezing (oneDNN int8 kernels): in memory only, it cannot be saved safely;
- int8 pt2e in onnxruntime: that PT2E model as it is saved (its ONNX export).

Throughput: images/s at batch 256; latency: median ms of single-image calls (the best of
`--repeats` rounds in which the models take turns, since the CPU may be shared: the least
disturbed round counts). Accuracy: top-1 on the whole test set (no TTA); agreement: the same
top-1 class as fp32 eager.
`isa` lists the oneDNN kernels PyTorch ran (ONEDNN_VERBOSE; none: PyTorch's own kernels) and
whether ONNX Runtime's MLAS was granted AMX by the kernel (arch_prctl), which is when it
dispatches U8S8 GEMMs to AMX.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from cifarlab.compress.export import onnx_proto
from cifarlab.compress.quantize import _quantize_static, calibrate, prepare_pt2e
from cifarlab.data import make_splits, stratified_indices
from cifarlab.engine.checkpoint import load_checkpoint
from cifarlab.engine.inference import checkpoint_loader
from cifarlab.engine.metrics import predict
from cifarlab.engine.onnx_model import OnnxModel
from cifarlab.engine.runtime import hardware


@torch.no_grad()
def speeds(models: dict, x256: torch.Tensor, x1: torch.Tensor, batches: int, repeats: int) -> dict:
    """Per model: images/s at batch 256 (best of `repeats` timings of `batches` batches) and
    the median ms of a single-image call (best of `repeats` medians of 50 calls). The models
    take turns within each repeat, so a busy moment of a shared CPU hits them alike."""
    inputs = {name: (x256, x1) if name == "fp32 eager" else (x256.contiguous(), x1.contiguous()) for name in models}
    for name, model in models.items():  # warm-up: compiles, packs weights
        for x in inputs[name]:
            model(x)
            model(x)
    best = {name: (float("inf"), float("inf")) for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            big, one = inputs[name]
            seconds = _timed(lambda: model(big), batches)
            single = statistics.median(_timed(lambda: model(one), 1) for _ in range(50))
            best[name] = (min(best[name][0], seconds), min(best[name][1], single))
    return {name: {"images_per_s_batch256": len(x256) * batches / seconds, "latency_ms_batch1": 1000 * single}
            for name, (seconds, single) in best.items()}  # fmt: skip


def _timed(call, count: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
        call()
    return time.perf_counter() - start


def onnx_session(proto, folder: Path, name: str) -> OnnxModel:
    import onnx

    onnx.save(proto, folder / f"{name}.onnx")
    return OnnxModel(folder / f"{name}.onnx")


def s8s8(proto, calibration: torch.Tensor):
    """ONNX Runtime's static quantization with signed activations (not offered by `cifarlab quantize`)."""
    import onnx
    from onnxruntime import quantization

    from cifarlab.compress.quantize import _Batches

    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "s8s8.onnx"
        quantization.quantize_static(proto, out, _Batches(calibration, "images"), quant_format=quantization.QuantFormat.QDQ,
                                     activation_type=quantization.QuantType.QInt8, weight_type=quantization.QuantType.QInt8,
                                     per_channel=True)  # fmt: skip
        return onnx.load(out)


def onednn_kernels(model, x: torch.Tensor) -> dict:
    """The oneDNN primitives (kind:implementation) one forward pass runs, with counts."""
    with tempfile.TemporaryFile(mode="w+") as log:
        sys.stdout.flush()
        saved = os.dup(1)
        os.dup2(log.fileno(), 1)
        try:
            with torch.no_grad(), torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                model(x)
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        log.seek(0)
        lines = [line.split(",") for line in log if line.startswith("onednn_verbose,v1,primitive,exec,")]
    return dict(collections.Counter(f"{fields[5]} {fields[6]}" for fields in lines))  # e.g. convolution brg_conv_fwd:avx512_core


def ort_amx_granted() -> bool:
    """Whether a process that imports onnxruntime (alone) holds AMX tile permission: MLAS
    requests it at start-up and uses its AMX U8S8 GEMM kernels when granted."""
    code = ("import ctypes, onnxruntime; m = ctypes.c_ulong(0); "
            "ctypes.CDLL(None).syscall(158, 0x1022, ctypes.byref(m)); print(m.value >> 18 & 1)")  # fmt: skip
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "1"


def measure(run: str, calib: int, batches: int, repeats: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:  # the ONNX files (sessions read them when made)
        return _measure(run, calib, batches, repeats, Path(folder))


def _measure(run: str, calib: int, batches: int, repeats: int, folder: Path) -> dict:
    checkpoint = load_checkpoint(run)
    config = checkpoint.config()
    splits = make_splits(config.data)
    test = checkpoint_loader(checkpoint, config, splits.test, torch.device("cpu"))
    picked = stratified_indices(splits.train.labels, calib, config.train.seed)[1]
    calibration = test.prepare(splits.train.images[picked]).contiguous()
    x256 = test.prepare(splits.test.images[:256])  # channels_last when the run's config says so
    x1 = x256[:1]
    reference, labels = predict(checkpoint.model, test)
    models = {"fp32 eager": checkpoint.model}
    checkpoint.model.to(memory_format=torch.contiguous_format)
    float_proto = onnx_proto(checkpoint.model, calibration[:2])
    models["fp32 onnxruntime"] = onnx_session(float_proto, folder, "fp32")
    models["int8 onnxruntime (U8S8)"] = onnx_session(_quantize_static(float_proto, calibration), folder, "u8s8")
    models["int8 onnxruntime (S8S8)"] = onnx_session(s8s8(float_proto, calibration), folder, "s8s8")
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    prepared = prepare_pt2e(checkpoint.model.eval(), calibration[:2])
    calibrate(prepared, calibration)
    converted = convert_pt2e(prepared)
    converted.training = False
    models["int8 pt2e in onnxruntime"] = onnx_session(onnx_proto(converted, calibration[:2]), folder, "pt2e")
    torch._inductor.config.freezing = True  # constant weights: lets inductor pack them for oneDNN's int8 kernels
    start = time.perf_counter()
    compiled = torch.compile(converted, dynamic=False)
    with torch.no_grad():
        compiled(x256.contiguous())
    compile_seconds = time.perf_counter() - start
    models["int8 pt2e compiled"] = compiled
    checkpoint.model.to(memory_format=torch.channels_last if config.train.channels_last else torch.contiguous_format)
    results = speeds(models, x256, x1, batches, repeats)
    for name, model in models.items():
        logits = predict(model, test)[0] if name != "int8 pt2e compiled" else _logits(model, test)
        results[name]["test_accuracy"] = (logits.argmax(1) == labels).double().mean().item()
        results[name]["agreement_with_fp32"] = (logits.argmax(1) == reference.argmax(1)).double().mean().item()
        print(f"{run}: {name}: {results[name]}", file=sys.stderr)
    isa = {"pytorch fp32 eager (oneDNN), batch 256": onednn_kernels(checkpoint.model, x256),
           "pytorch fp32 eager (oneDNN), batch 1": onednn_kernels(checkpoint.model, x1),
           "pytorch int8 pt2e compiled (oneDNN), batch 256": onednn_kernels(compiled, x256.contiguous()),
           "onnxruntime granted AMX": ort_amx_granted()}  # fmt: skip
    return {"run": run, "model": checkpoint.meta["model"], "calib": calib, "pt2e_compile_seconds": compile_seconds,
            "results": results, "isa": isa}  # fmt: skip


def _logits(model, loader) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(x.contiguous()) for x, _ in loader.epoch(0)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--calib", type=int, default=1000)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="CPU threads for PyTorch and ONNX Runtime (default: torch's)")
    parser.add_argument("--results", help="also write the JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)  # ONNX Runtime sessions take the same count (engine/onnx_model.py)
    report = {"hardware": hardware(), "cpu_flags": _cpu_flags(), "threads": torch.get_num_threads(),
              "runs": [measure(run, args.calib, args.batches, args.repeats) for run in args.runs]}  # fmt: skip
    text = json.dumps(report, indent=2)
    print(text)
    if args.results:
        Path(args.results).write_text(text + "\n")


def _cpu_flags() -> list[str]:
    flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")).split()
    return sorted(f for f in flags if f.startswith(("amx", "avx512_vnni", "avx_vnni", "avx512_bf16")))


if __name__ == "__main__":
    main()
