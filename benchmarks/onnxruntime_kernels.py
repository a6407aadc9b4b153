"""Which instructions ONNX Runtime's CPU time goes to for an (int8) ONNX model: AMX tiles,
AVX512-VNNI dot products, or the thread pool's spin. Prints JSON.

    python benchmarks/onnxruntime_kernels.py MODEL.onnx [--seconds 8] [--threads 2]

ONNX Runtime ships without symbols, so it runs the model at batch 256 under `perf record`
(software clock sampling: works in VMs without a PMU), then disassembles the 128 bytes
around each sampled address in its library (objdump) and sorts the samples, hottest first
until 85% of them are covered, by what that code contains: `tdpb*`/`tileload*` (AMX),
`vpdpbusd` on zmm registers (AVX512-VNNI), `pause` (spinning), or anything else.
Needs `perf` and `objdump` (binutils).
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import onnxruntime

LOOP = """
import sys, time, numpy as np, onnxruntime as ort
options = ort.SessionOptions(); options.intra_op_num_threads = int(sys.argv[3])
session = ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
x = np.random.rand(256, 3, 32, 32).astype(np.float32)
end = time.time() + float(sys.argv[2])
while time.time() < end:
    session.run(None, {session.get_inputs()[0].name: x})
"""


def kind(code: str) -> str:
    if re.search(r"\btdpb|\btileload", code):
        return "AMX"
    if re.search(r"vpdpbusd\S*\s+%zmm", code):
        return "AVX512-VNNI"
    return "thread-pool spin (pause)" if re.search(r"\bpause\b", code) else "other"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model")
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    library = next(Path(onnxruntime.__file__).parent.glob("capi/onnxruntime_pybind11_state*.so"))
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "perf.data"
        subprocess.run(["perf", "record", "-q", "-e", "cpu-clock", "-F", "4000", "-o", str(data), "--", sys.executable,
                        "-c", LOOP, args.model, str(args.seconds), str(args.threads)], check=True)  # fmt: skip
        report = subprocess.run(["perf", "report", "-i", str(data), "--sort", "dso,sym", "--stdio"], capture_output=True,
                                text=True, check=True).stdout  # fmt: skip
    samples = sorted(((float(pct), int(address, 16)) for pct, dso, address in
                      re.findall(r"^\s+([\d.]+)%\s+(\S+)\s+\[\.\]\s+(0x[0-9a-f]+)", report, re.M)
                      if dso == library.name), reverse=True)  # fmt: skip
    total, covered, shares = sum(p for p, _ in samples), 0.0, collections.Counter()
    for pct, address in samples:
        if covered >= 0.85 * total:
            break
        code = subprocess.run(["objdump", "-d", "--no-show-raw-insn", f"--start-address={address - 96:#x}",
                               f"--stop-address={address + 32:#x}", str(library)], capture_output=True, text=True).stdout  # fmt: skip
        shares[kind(code)] += pct
        covered += pct
    print(json.dumps({"model": args.model, "threads": args.threads, "onnxruntime": onnxruntime.__version__,
                      "percent_of_all_samples_in_onnxruntime": round(total, 1),
                      "percent_by_kind_of_classified_samples": {k: round(100 * v / covered, 1) for k, v in shares.most_common()}},
                     indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
