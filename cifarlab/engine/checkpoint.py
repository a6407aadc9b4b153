"""Checkpoints: a folder with `model.safetensors` (the weights to evaluate), `meta.json`
(what the weights are: architecture, classes, normalization, config, metrics) and, for
`last`, `state.pt` (what resuming needs: optimizer, schedule, RNG, EMA, position).

A checkpoint folder is written beside its final place and swapped in with renames, so a
crash at any moment leaves either the old or the new checkpoint, never a mix. Nothing here
unpickles code: weights are safetensors, and `state.pt` is read with `weights_only=True`.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import CifarlabError
from ..fileio import fsync
from ..models import create_model

FORMAT = "cifarlab-checkpoint-v1"


def save_checkpoint(folder: Path, weights: dict[str, torch.Tensor], meta: dict, state: dict | None = None) -> None:
    """Write a checkpoint folder atomically (see module docstring)."""
    partial = folder.with_name(folder.name + ".partial")
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, partial / "model.safetensors")
    (partial / "meta.json").write_text(json.dumps({"format": FORMAT, **meta}, indent=2) + "\n")
    if state is not None:
        torch.save(state, partial / "state.pt")
    for path in partial.iterdir():
        fsync(path)
    if folder.exists():
        os.replace(folder, old)
    os.replace(partial, folder)  # a crash between the two renames is finished by recover_checkpoint
    shutil.rmtree(old, ignore_errors=True)


def recover_checkpoint(folder: Path) -> None:
    """Finish a swap that a crash interrupted, and drop leftovers of an unfinished write.

    `.old` exists only once `.partial` was complete, so with no `folder` the partial one wins.
    """
    partial = folder.with_name(folder.name + ".partial")
    old = folder.with_name(folder.name + ".old")
    if not folder.exists() and old.exists():
        os.replace(partial if partial.exists() else old, folder)
    shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)


def read_meta(folder: Path) -> dict:
    path = folder / "meta.json"
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise CifarlabError(f"'{folder}' is not a cifarlab checkpoint (no meta.json)") from None
    except json.JSONDecodeError as e:
        raise CifarlabError(f"'{path}' is corrupt ({e})") from None
    if meta.get("format") != FORMAT:
        raise CifarlabError(f"'{path}' is not a {FORMAT} file (format={meta.get('format')!r})")
    return meta


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path)
    except FileNotFoundError:
        raise CifarlabError(f"missing weights file '{path}'") from None
    except (SafetensorError, OSError) as e:
        raise CifarlabError(f"'{path}' is truncated or corrupt ({e})") from None


def read_state(folder: Path) -> dict:
    path = folder / "state.pt"
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CifarlabError(f"'{folder}' has no resume state (state.pt)") from None
    except Exception as e:  # torch raises many types for a damaged or hostile file
        raise CifarlabError(f"'{path}' cannot be read safely ({type(e).__name__}: {e})") from None


def load_weights_into(model: nn.Module, weights: dict[str, torch.Tensor], source: str) -> None:
    """`load_state_dict`, with an error that names every mismatched key and shape."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong_shape = [
        f"{k} {tuple(weights[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in weights and weights[k].shape != v.shape
    ]
    if missing or unexpected or wrong_shape:
        parts = [
            f"{label}: {', '.join(keys[:8])}{' …' if len(keys) > 8 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong_shape))
            if keys
        ]
        raise CifarlabError(f"weights in {source} do not fit the model; " + "; ".join(parts))
    model.load_state_dict(weights)


def find_checkpoint(path: str | Path) -> Path:
    """A run directory (its `best`, else `last`), a checkpoint folder, or a model.safetensors file."""
    path = Path(path)
    if not path.exists():
        raise CifarlabError(f"'{path}' does not exist")
    if path.is_file():
        path = path.parent
    if (path / "checkpoints").is_dir():
        for name in ("best", "last"):
            if (path / "checkpoints" / name / "meta.json").is_file():
                return path / "checkpoints" / name
        raise CifarlabError(f"run '{path}' has no checkpoint yet")
    if not (path / "meta.json").is_file():
        raise CifarlabError(f"'{path}' is neither a run directory nor a checkpoint folder")
    return path


@dataclass
class Checkpoint:
    """A model ready for inference and what it needs to be used correctly."""

    model: nn.Module
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    meta: dict
    folder: Path


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> Checkpoint:
    folder = find_checkpoint(path)
    meta = read_meta(folder)
    model = create_model(meta["model"], num_classes=len(meta["classes"]), **meta.get("model_options", {}))
    load_weights_into(model, read_weights(folder / "model.safetensors"), str(folder))
    model.to(device).eval()
    return Checkpoint(model, meta["classes"], tuple(meta["mean"]), tuple(meta["std"]), meta, folder)


def load_model(path: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    """The model of a run or checkpoint, in eval mode (inputs normalized as in its meta.json)."""
    return load_checkpoint(path, device).model
