"""Shared fixtures: the real CIFAR data when present (../shared/data or $CIFARLAB_TEST_DATA),
and a small synthetic dataset in the official file layout, so the suite runs anywhere."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import REPO, real_data_root, write_cifar10


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    return write_cifar10(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="session")
def real_root() -> Path:
    root = real_data_root()
    if root is None:
        pytest.skip("real CIFAR-10 not found (../shared/data)")
    return root


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch, tmp_path):
    """No test reads the user's data folders or writes into the repository, and subprocesses
    import this checkout's cifarlab (not another installed copy)."""
    monkeypatch.delenv("CIFARLAB_DATA", raising=False)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
