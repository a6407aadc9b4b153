"""Atomic file writes (a reader, or a crash, never sees a half-written file), and the
readers that turn a missing, unreadable or malformed file into one CifarlabError."""

from __future__ import annotations

import errno
import json
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import CifarlabError


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename.

    On any exception the temporary file is removed and `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        fsync(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.lexists(tmp):  # (unlink on a read-only file system fails even for a missing file)
            tmp.unlink()
        if isinstance(e, OSError) and str(e.filename) == str(tmp):  # name the file the user asked for
            raise OSError(e.errno, e.strerror, str(path)) from None
        raise


def fsync(path: Path) -> None:
    """Flush a file to disk and give it the usual permissions (some writers create it 0600)."""
    os.chmod(path, 0o666 & ~_UMASK)
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


def read_text(path: str | Path, what: str = "file") -> str:
    """A UTF-8 text file; `what` names it in the message ("config file", "checkpoint meta.json")."""
    path = Path(path)
    if path.is_dir():
        raise CifarlabError(f"{what} '{path}' is a folder, not a file")
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CifarlabError(f"{what} '{path}' does not exist") from None
    except UnicodeDecodeError as e:
        raise CifarlabError(f"{what} '{path}' is not UTF-8 text (byte {e.start}); the file is corrupt") from None


def parse_json(text: str, where: str, first_line: int = 1):
    """`json.loads`, with a CifarlabError naming `where` and the line of a syntax error
    (`first_line`: the file's line number of `text`'s first line, for JSON-lines files)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        line = first_line + e.lineno - 1
        raise CifarlabError(f"{where} is not valid JSON (line {line}: {e.msg}); the file is corrupt") from None


def read_json(path: str | Path, what: str = "file"):
    return parse_json(read_text(path, what), f"{what} '{path}'")


@contextmanager
def disk_full_as_os_error(path: str | Path) -> Iterator[None]:
    """torch.save and safetensors report a full disk as their own errors ("unexpected pos",
    "No space left on device"); re-raise those as the OSError(ENOSPC) they are."""
    try:
        yield
    except OSError:
        raise
    except Exception as e:
        if "unexpected pos" in str(e) or "No space left" in str(e):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from None
        raise
