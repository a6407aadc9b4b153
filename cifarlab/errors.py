"""The one exception type users see: the CLI prints its message and exits with status 2."""

from __future__ import annotations

import errno
import importlib
from pathlib import Path


class CifarlabError(Exception):
    """A problem the user can fix (bad path, corrupt file, unknown name, bad value, NaN loss).

    The message says what went wrong and what to do; no traceback is shown for it.
    """


def describe_os_error(e: OSError) -> str:
    """One line for an OSError that reached the CLI (a write into a bad place, a full disk)."""
    path = e.filename if e.filename is not None else "?"
    if e.errno == errno.ENOSPC:
        return f"no space left on device while writing '{path}'; free some space and run again"
    if e.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied: '{path}'"
    if e.errno == errno.EROFS:
        return f"read-only file system: cannot write '{path}'"
    if e.errno == errno.ENOTDIR:
        file = next((p for p in (Path(path), *Path(path).parents) if p.is_file()), None)
        return f"'{file or path}' is a file, not a folder" + (f" (in '{path}')" if file and str(file) != str(path) else "")
    if e.errno == errno.EEXIST:
        return f"'{path}' already exists and is not a folder"
    if e.errno == errno.EISDIR:
        return f"'{path}' is a folder, not a file"
    return f"{e.strerror or e}: '{path}'"


def first_line(e: BaseException) -> str:
    """The first line of a library's exception text; the lines after it advise programmers."""
    return next(iter(str(e).splitlines()), type(e).__name__)


def import_extra(module: str, extra: str = "compress"):
    """An optional dependency (onnxruntime, torchao, ...), or one CifarlabError saying how to
    install it: the core commands must work without these packages."""
    try:
        return importlib.import_module(module)
    except ImportError:
        name = module.split(".")[0]
        raise CifarlabError(f"this needs the {name} package, which is not installed: pip install 'cifarlab[{extra}]'") from None
