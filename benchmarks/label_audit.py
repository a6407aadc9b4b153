"""Does the label audit find real label errors? The top --top images `cifarlab labels audit RUN`
flags on the CIFAR-10 test set, checked against a published list of its known label errors;
prints JSON: hits, precision of the top, recall of the list, and chance (the list's share of
the 10,000 test images).

    python benchmarks/label_audit.py runs/fast --known cifar10_mturk.json --top 100

The known list is not shipped (the cleanlab package holds no copy): it comes from the Label
Errors project (Northcutt, Athalye & Mueller, NeurIPS 2021 Datasets and Benchmarks;
labelerrors.com, github.com/cleanlab/label-errors). --known takes its Mechanical Turk file for
the CIFAR-10 test set, `mturk/cifar10_mturk.json`, as it is: the images its models flagged, each
shown to 5 workers; an image is a known error when fewer than 3 of them chose the given
label (54 images, the paper's count). It also takes the test-set indices of the errors as a
JSON list, a .npy array, or a text/CSV file whose lines each start with one (lines that do not,
such as a header, are skipped).
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
from pathlib import Path

import numpy as np

from cifarlab.run import audit_labels

TEST_IMAGES = 10_000
MAJORITY = 3  # of the 5 workers who saw each flagged image


def read_known(path: Path) -> set[int]:
    if path.suffix == ".json":
        values = json.loads(path.read_text())
        if values and all(isinstance(v, dict) for v in values):  # the Mechanical Turk file: 5 votes per image
            values = [v["id"] for v in values if v["mturk"]["given"] < MAJORITY]
    elif path.suffix == ".npy":
        values = np.load(path, allow_pickle=False).tolist()
    else:
        values = [int(m.group(1)) for line in path.read_text().splitlines() if (m := re.match(r"\s*(\d+)\b", line))]
    known = {int(v) for v in values}
    if not known or not all(0 <= v < TEST_IMAGES for v in known):
        raise SystemExit(f"{path}: expected test-set indices in 0..{TEST_IMAGES - 1}")
    return known


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a CIFAR-10 run directory (its model scores the test set)")
    parser.add_argument("--known", required=True, type=Path, help="indices of the known CIFAR-10 test label errors")
    parser.add_argument("--top", type=int, default=100)
    parser.add_argument("--data-dir")
    parser.add_argument("--device")
    args = parser.parse_args()

    known = read_known(args.known)
    with tempfile.TemporaryDirectory() as out:  # the run's folder keeps no benchmark files
        found, _, _ = audit_labels(args.run, "test", top=args.top, out=out, data_dir=args.data_dir, device=args.device)
    if found.audited != TEST_IMAGES:
        raise SystemExit(f"{args.run}: its test split has {found.audited} images, not CIFAR-10's {TEST_IMAGES}")
    top = found.index[: args.top].tolist()
    hits = sorted(set(top) & known)
    print(json.dumps({
        "run": args.run, "known_list": str(args.known), "known_errors": len(known), "flagged": len(found.index),
        "top": len(top), "hits": len(hits), "precision_at_top": len(hits) / max(len(top), 1),
        "recall_of_known": len(set(found.index.tolist()) & known) / len(known),
        "chance_precision": len(known) / TEST_IMAGES, "hit_indices": hits,
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
