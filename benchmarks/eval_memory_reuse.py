"""`cifarlab eval` of a run with `train.reuse_memory` off and on, each in its own process
(the allocator setting is process-wide), alternating, `--repeats` times. Prints JSON.

    python benchmarks/eval_memory_reuse.py runs/fast [--tta flip-translate] [--repeats 2]

"on" evaluates the run as saved (`train.reuse_memory: true`, the default); "off" the same
with runtime.keep_freed_memory made a no-op. Each line gives the wall time of `evaluate()`
(the checkpoint load, the data and the test pass), its test accuracy, the process's system
time and its minor page faults: evaluation batches' activations are over glibc's 32 MiB
mmap threshold, so without reuse each batch faults its memory in anew.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from cifarlab.engine.runtime import hardware

CHILD = """
import json, resource, sys, time
from cifarlab.engine import inference
if sys.argv[3] == "off":
    inference.keep_freed_memory = lambda: False
start = time.perf_counter()
metrics = inference.evaluate(sys.argv[1], tta=sys.argv[2], device="cpu")
seconds = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"seconds": round(seconds, 1), "accuracy": metrics["accuracy"],
                  "system_seconds": round(usage.ru_stime, 1), "minor_page_faults": usage.ru_minflt}))
"""


def evaluate(run: Path, tta: str, mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, str(run), tta, mode], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"evaluating {run} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--tta", default="flip-translate")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    if not (args.run / "config.yaml").is_file():
        sys.exit(f"'{args.run}' is not a run folder (no config.yaml)")
    measured = {"off": [], "on": []}
    for _ in range(args.repeats):
        for mode, lines in measured.items():
            lines.append(evaluate(args.run, args.tta, mode))
    seconds = {mode: round(statistics.mean(m["seconds"] for m in lines), 1) for mode, lines in measured.items()}
    print(json.dumps({"benchmark": "eval_memory_reuse", "run": str(args.run), "tta": args.tta,
                      "hardware": hardware(), "runs": measured, "mean_seconds": seconds,
                      "on_over_off": round(seconds["on"] / seconds["off"], 3)}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
