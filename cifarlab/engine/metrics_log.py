"""metrics.jsonl: one JSON object per line, appended as training goes.

A resumed run truncates the file to the size it had at the checkpoint, so the lines of the
lost stretch are not duplicated: the file ends up as an uninterrupted run would write it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


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
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
