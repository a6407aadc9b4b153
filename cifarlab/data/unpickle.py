"""Read the official CIFAR pickles without letting a pickle run code.

`pickle.load` calls whatever global a file names, so a tampered "data_batch_1" could run
any code. The official files only need numpy's array reconstruction; everything else is
refused before it is looked up.
"""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path

import numpy as np

try:  # numpy >= 2 keeps the implementation in numpy._core
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct

# The only globals the official CIFAR-10/100 python pickles use, plus what a Python-3 rewrite in
# the same protocol adds (numpy 2's module path; `_codecs.encode`, which protocol 2 uses to
# spell bytes). None of them can run code.
_ALLOWED_GLOBALS = {
    ("_codecs", "encode"): codecs.encode,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class RefusedGlobal(pickle.UnpicklingError):
    """The file names a global outside the CIFAR format: refused before it is looked up."""


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise RefusedGlobal(
                f"refused to load global '{module}.{name}': not part of the CIFAR file format"
            ) from None


def load_restricted_pickle(path: str | Path):
    """Unpickle a CIFAR batch file; raises RefusedGlobal for anything outside the format.

    `latin1` decodes the Python-2 strings of the official files to `str` (numpy needs it for
    the array payload), as torchvision does.
    """
    with open(path, "rb") as f:
        return _RestrictedUnpickler(f, encoding="latin1").load()
