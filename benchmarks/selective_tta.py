"""Test-time augmentation for only the least sure images: a run's test accuracy and
evaluation time at several `--tta-share`s, in one process, one after the other. Prints JSON.

    python benchmarks/selective_tta.py runs/fast [--tta flip-translate] [--shares 1 0.5 0.25 0.1]

Each share is one `cifarlab eval RUN --tta T --tta-share S` (checkpoint load and data
included in its seconds); "none" is the plain view alone, the floor of what TTA costs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from cifarlab.engine.inference import evaluate
from cifarlab.engine.runtime import hardware
from cifarlab.errors import CifarlabError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--tta", default="flip-translate")
    parser.add_argument("--shares", type=float, nargs="+", default=[1.0, 0.5, 0.25, 0.1])
    args = parser.parse_args()
    rows = []
    try:
        for tta, share in [("none", 1.0)] + [(args.tta, s) for s in args.shares]:
            start = time.perf_counter()
            metrics = evaluate(args.run, tta=tta, tta_share=share, device="cpu")
            rows.append({"tta": tta, "tta_share": share, "seconds": round(time.perf_counter() - start, 1),
                         "accuracy": metrics["accuracy"], "loss": round(metrics["loss"], 4)})  # fmt: skip
    except CifarlabError as error:
        sys.exit(str(error))
    print(json.dumps({"benchmark": "selective_tta", "run": str(args.run), "hardware": hardware(), "rows": rows},
                     indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
