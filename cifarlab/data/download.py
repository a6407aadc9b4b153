"""Download an official CIFAR archive: progress bar, md5 check, atomic extraction.

Nothing appears in the data folder until the archive is complete, verified and unpacked:
the dataset folder is moved into place with one rename.
"""

from __future__ import annotations

import os
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from ..errors import CifarlabError
from .datasets import DatasetSpec, default_download_root, get_spec, md5sum


def download_root(data_dir: str | Path | None) -> Path:
    """Where a download goes: --data-dir, else $CIFARLAB_DATA, else ~/.cache/cifarlab."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    if os.environ.get("CIFARLAB_DATA"):
        return Path(os.environ["CIFARLAB_DATA"]).expanduser()
    return default_download_root()


def _fetch(url: str, dest: Path) -> None:
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=Path(url).name) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError) as e:
        raise CifarlabError(
            f"could not download {url} ({e}). Without internet, copy the dataset's official folder "
            f"into a data directory and pass --data-dir (or set $CIFARLAB_DATA)."
        ) from None


def download(name: str, data_dir: str | Path | None = None, url: str | None = None, md5: str | None = None) -> Path:
    """Fetch, check and unpack a dataset; returns the root folder that now holds it.

    `url` points at a mirror; the archive must still match `md5` (default: the official one).
    """
    spec = get_spec(name)
    root = download_root(data_dir)
    if (root / spec.folder).is_dir():
        return root
    url, md5 = url or spec.url, md5 or spec.archive_md5
    created = not root.exists()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CifarlabError(f"cannot create data directory '{root}': {e}") from None
    try:
        _fetch_and_unpack(spec, url, md5, root)
    except BaseException:
        if created:
            root.rmdir()  # leave no trace of a failed download
        raise
    return root


def _fetch_and_unpack(spec: DatasetSpec, url: str, md5: str, root: Path) -> None:
    with tempfile.TemporaryDirectory(dir=root, prefix=".download-") as tmp:
        archive = Path(tmp) / "archive.tar.gz"
        _fetch(url, archive)
        actual = md5sum(archive)
        if actual != md5:
            raise CifarlabError(
                f"downloaded archive from {url} has md5 {actual}, expected {md5}: it is corrupt or not "
                f"the official file. Nothing was written; try again."
            )
        try:
            with tarfile.open(archive, "r:gz") as tar:
                tar.extractall(Path(tmp) / "x", filter="data")  # refuses links and paths outside the folder
        except (tarfile.TarError, OSError, EOFError) as e:
            raise CifarlabError(f"cannot unpack archive from {url}: {e}") from None
        extracted = Path(tmp) / "x" / spec.folder
        if not extracted.is_dir():
            raise CifarlabError(f"archive from {url} has no '{spec.folder}/' folder")
        os.replace(extracted, root / spec.folder)
