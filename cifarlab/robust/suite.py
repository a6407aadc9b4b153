"""The corrupted test sets, generated once and kept in a cache folder.

One file per corruption, `<name>-seed<S>-<clean md5>.npy`: uint8 (5, N, 32, 32, 3), the
five severities of the N clean images, laid out as the published CIFAR-10-C files are
(severity-major). Beside it, `<same>.json` holds the md5 of that array; a file whose bytes no
longer match (a damaged disk, an interrupted copy, an edit) is generated again, never used.
The clean images' md5 is in the name, so another image set (a --limit, another dataset)
never meets a wrong file. The folder is $CIFARLAB_CACHE/cifar10-c, else
~/.cache/cifarlab/cifar10-c: writable even where the dataset folder is read-only.

The random draws of (seed, corruption, severity) come from their own generator, so a
corruption repeats bit for bit whatever else is generated, and in any order.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import CifarlabError
from ..fileio import atomic_path, write_json
from .corruptions import CORRUPTIONS, SIZE

SEVERITIES = (1, 2, 3, 4, 5)
FORMAT = "cifarlab-corruptions-v1"


def cache_folder() -> Path:
    root = os.environ.get("CIFARLAB_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "cifarlab") / "cifar10-c"


def md5(array: np.ndarray) -> str:
    return hashlib.md5(np.ascontiguousarray(array).data).hexdigest()


def corrupt(images: np.ndarray, name: str, severity: int, seed: int) -> np.ndarray:
    """One corruption at one severity of uint8 images (N, 32, 32, 3), drawn from
    (seed, corruption, severity)'s own random stream."""
    rng = np.random.default_rng([seed, list(CORRUPTIONS).index(name), severity])
    return CORRUPTIONS[name](images.copy(), severity, rng)


@dataclass
class Corrupted:
    images: np.ndarray  # uint8 (5, N, 32, 32, 3)
    seconds: float  # to generate it now; 0 when read from the cache
    cached: bool


def corrupted(images: np.ndarray, name: str, seed: int = 0, folder: Path | None = None,
              log: Callable[[str], None] = lambda message: None) -> Corrupted:  # fmt: skip
    """The five severities of `name` for uint8 images (N, 32, 32, 3), from the cache when its
    file is there and intact, else generated and cached (atomically: a crash leaves no file)."""
    if images.dtype != np.uint8 or images.shape[1:] != (SIZE, SIZE, 3):
        raise CifarlabError(f"the corruptions need uint8 32×32 RGB images (CIFAR's); got {images.dtype} "
                            f"{tuple(images.shape[1:])}")  # fmt: skip
    folder = folder or cache_folder()
    path = folder / f"{name}-seed{seed}-{md5(images)[:12]}.npy"
    cached = _read(path, log)
    if cached is not None:
        return Corrupted(cached, 0.0, True)
    start = time.perf_counter()
    array = np.stack([corrupt(images, name, severity, seed) for severity in SEVERITIES])
    seconds = time.perf_counter() - start
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)
    write_json(path.with_suffix(".json"), {"format": FORMAT, "corruption": name, "seed": seed,
                                           "shape": list(array.shape), "md5": md5(array), "seconds": seconds})  # fmt: skip
    return Corrupted(array, seconds, False)


def _read(path: Path, log: Callable[[str], None]) -> np.ndarray | None:
    """The cached array, or None (with a note when a file was there but cannot be trusted)."""
    record_path = path.with_suffix(".json")
    if not (path.is_file() and record_path.is_file()):
        return None
    try:
        record = json.loads(record_path.read_text())
        array = np.load(path, allow_pickle=False)
        if isinstance(record, dict) and record.get("format") == FORMAT and md5(array) == record.get("md5"):
            return array
    except (OSError, ValueError, UnicodeDecodeError):  # unreadable, truncated, not JSON
        pass
    log(f"cache file '{path}' does not match its recorded md5; generating it again")
    return None
