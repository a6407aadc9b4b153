"""Checkpoints: a folder with `model.safetensors` (the weights to evaluate), `meta.json`
(what the weights are: architecture, classes, normalization, config, metrics) and, for
`last`, `state.pt` (what resuming needs: optimizer, schedule, RNG, EMA, position).

A checkpoint folder is written beside its final place and swapped in with renames, so a
crash at any moment leaves either the old or the new checkpoint, never a mix. Nothing here
unpickles code: weights are safetensors, and `state.pt` is read with `weights_only=True`.

A folder may hold `model.onnx` instead of `model.safetensors` (`cifarlab quantize` writes
such folders), and an exported `.onnx` file carries its meta.json inside; both load as an
OnnxModel (engine/onnx_model.py). A `.pt2` program is refused: torch.export.load unpickles
parts of the archive and falls back to `weights_only=False` when the safe load fails.

A folder may also hold `calibration.json`: the temperature fitted on held-out images for
these weights (engine/calibration.py). It sits beside the weights it belongs to, so new
weights written over a checkpoint (a new folder swapped in) never inherit a stale one.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..config import Config, from_dict
from ..errors import CifarlabError, first_line
from ..fileio import disk_full_as_os_error, fsync, read_json, write_json
from ..models import create_model
from .onnx_model import OnnxModel

FORMAT = "cifarlab-checkpoint-v1"
CALIBRATION_FILE = "calibration.json"


def save_checkpoint(folder: Path, weights: dict[str, torch.Tensor], meta: dict, state: dict | None = None) -> None:
    """Write a checkpoint folder atomically (see module docstring); a failed write (a full
    disk) removes its partial folder and leaves the previous checkpoint in place."""
    partial = folder.with_name(folder.name + ".partial")
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        with disk_full_as_os_error(partial / "model.safetensors"):
            save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, partial / "model.safetensors")
        (partial / "meta.json").write_text(json.dumps({"format": FORMAT, **meta}, indent=2) + "\n")
        if state is not None:
            with disk_full_as_os_error(partial / "state.pt"):
                torch.save(state, partial / "state.pt")
        for path in partial.iterdir():
            fsync(path)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
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
    """meta.json, checked before anything uses it: one CifarlabError for a wrong type, a
    missing key or normalization that would give NaN predictions (std 0)."""
    path = folder / "meta.json"
    if not path.exists():
        raise CifarlabError(f"'{folder}' is not a cifarlab checkpoint (no meta.json)")
    return checked_meta(read_json(path, "checkpoint file"), path)


def checked_meta(meta, where: Path) -> dict:
    problem = _meta_problem(meta)
    if problem:
        raise CifarlabError(f"'{where}' is not a valid {FORMAT} file: {problem}")
    return meta


def _meta_problem(meta) -> str | None:
    """What is wrong with a parsed meta.json, or None."""
    if not isinstance(meta, dict):
        return f"a JSON {type(meta).__name__}, not an object"
    if meta.get("format") != FORMAT:
        return f"format={meta.get('format')!r}"
    missing = [key for key in ("model", "classes", "mean", "std") if key not in meta]
    if missing:
        return f"missing {', '.join(missing)}"
    if not isinstance(meta["model"], str):
        return "'model' must be a model name"
    classes = meta["classes"]
    if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) for c in classes):
        return "'classes' must be a list of two or more names"
    if len(set(classes)) < len(classes):
        return "'classes' names a class twice"
    for key in ("mean", "std"):
        values = meta[key]
        if not (isinstance(values, list) and len(values) == 3 and all(_is_finite_number(v) for v in values)):
            return f"'{key}' must be three numbers (one per RGB channel)"
    if min(meta["std"]) <= 0:
        return "'std' must be > 0"
    for key in ("model_options", "model_resized", "config"):
        if not isinstance(meta.get(key, {}), dict):
            return f"'{key}' must be an object"
    return None


def read_calibration(folder: Path) -> dict | None:
    """The folder's calibration.json (None when it has none), checked before its temperature is used."""
    path = folder / CALIBRATION_FILE
    if not path.exists():
        return None
    record = read_json(path, "calibration file")
    temperature = record.get("temperature") if isinstance(record, dict) else None
    if not (_is_finite_number(temperature) and temperature > 0):
        raise CifarlabError(
            f"'{path}' is not a valid calibration file: its temperature must be a finite number > 0 (got "
            f"{temperature!r}); delete it (raw probabilities) or fit it again with `cifarlab calibrate`"
        )
    return record


def save_calibration(folder: Path, record: dict) -> None:
    write_json(folder / CALIBRATION_FILE, record)


def _is_finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path)
    except FileNotFoundError:
        raise CifarlabError(f"missing weights file '{path}'") from None
    except (SafetensorError, OSError) as e:
        raise CifarlabError(f"'{path}' is truncated or corrupt ({e})") from None


def read_state(folder: Path) -> dict:
    path = folder / "state.pt"
    if not path.is_file():
        raise CifarlabError(f"'{folder}' has no resume state (state.pt)")
    return load_tensors(path)


def load_tensors(path: Path):
    """`torch.load(weights_only=True)` with one-line errors: torch's own text for a refused
    file is eight lines that advise `weights_only=False`, which is exactly what not to do."""
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": noise to a user
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a damaged or hostile file
        if isinstance(e, pickle.UnpicklingError) and "Weights only load failed" in str(e):
            raise CifarlabError(
                f"'{path}' holds code or objects other than tensors (or is no torch.save file): refused, nothing "
                f"in it was run; convert it to safetensors where you trust it"
            ) from None
        raise CifarlabError(f"'{path}' is truncated or corrupt ({type(e).__name__}: {first_line(e)})") from None


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
    path: Path  # the checkpoint folder, or the exported .onnx file
    calibration: dict | None = None  # its calibration.json: the fitted temperature and where it was fitted

    @property
    def temperature(self) -> float | None:
        """What the logits are divided by for calibrated probabilities; None when none was fitted."""
        return self.calibration["temperature"] if self.calibration else None

    def config(self, data_dir: str | None = None) -> Config:
        """The run's saved config (evaluation rebuilds its data from it); `data_dir`: where
        the run's dataset is now, if it moved."""
        if "config" not in self.meta:
            raise CifarlabError(f"the meta.json of '{self.path}' has no saved config; it cannot be evaluated on its dataset")
        config = from_dict(self.meta["config"])
        if data_dir is not None:
            config.data.data_dir = data_dir
        return config


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu", calibration: bool = True) -> Checkpoint:
    """A run's best (else last) checkpoint, a checkpoint folder, or an ONNX model (see the
    module docstring), ready for inference. `calibration=False` leaves out calibration.json
    (for `cifarlab calibrate`, which replaces it, even when it is damaged)."""
    path = Path(path)
    if path.suffix == ".pt2" and path.is_file():
        raise CifarlabError(
            f"'{path}' is a torch.export program: loading one can run pickled code, so cifarlab does not; "
            f"evaluate the run it came from, or its ONNX export"
        )
    if path.suffix == ".onnx" and path.is_file():
        model = OnnxModel(path)
        meta = checked_meta(model.meta(), path)
    else:
        path = find_checkpoint(path)
        meta = read_meta(path)
        if (path / "model.onnx").is_file():
            model = OnnxModel(path / "model.onnx")
        else:
            model = create_model(meta["model"], num_classes=len(meta["classes"]), resized=meta.get("model_resized"),
                                 **meta.get("model_options", {}))  # fmt: skip
            load_weights_into(model, read_weights(path / "model.safetensors"), str(path))
    model.to(device).eval()
    fitted = read_calibration(path) if calibration and path.is_dir() else None
    return Checkpoint(model, meta["classes"], tuple(meta["mean"]), tuple(meta["std"]), meta, path, fitted)


def load_model(path: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    """The model of a run or checkpoint, in eval mode (inputs normalized as in its meta.json)."""
    return load_checkpoint(path, device).model
