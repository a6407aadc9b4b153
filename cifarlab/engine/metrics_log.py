"""metrics.jsonl: one JSON object per line, appended as training goes.

A resumed run truncates the file to the size it had at the checkpoint, so the lines of the
lost stretch are not duplicated: the file ends up as an uninterrupted run would write it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..fileio import parse_json, read_text


class MetricsLog:
    def __init__(self, path: Path):
        self.path = path

    def offset(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def truncate(self, offset: int) -> None:
        if self.path.exists():
            os.truncate(self.path, offset)

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def read_metrics(path: Path) -> list[dict]:
    """Every record; a damaged line is named by its own line number."""
    lines = read_text(path, "metrics log").splitlines()
    return [parse_json(line, f"metrics log '{path}'", i) for i, line in enumerate(lines, 1) if line.strip()]
