"""What a fine-tuning run starts from: an architecture (a `create_model` name and options),
the weights to load into it, and the input normalization those weights were trained with.

    runs/NAME, runs/NAME/checkpoints/best, …/model.safetensors    a cifarlab run or checkpoint
    torchvision:resnet18[:IMAGENET1K_V1]   torchvision's weights API (downloads once, then its cache)
    timm:resnet18.a1_in1k                  timm's pretrained weights (when timm is installed)
    FILE.safetensors | FILE.pt | FILE.pth  a state dict; `arch` names its architecture (offline use)

Nothing here runs code from a file: safetensors, or torch.load(weights_only=True).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torchvision

from ..config import FinetuneConfig
from ..engine.checkpoint import find_checkpoint, load_tensors, read_meta, read_weights
from ..errors import CifarlabError
from ..models import check_model_name
from ..models.external import import_timm

# torchvision's ImageNet weights all expect inputs normalized with these.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Source:
    arch: str  # a create_model name
    options: dict  # the builder options the weights were made with
    resized: dict  # the layers a channel-pruned source has shrunk (models/resize.py); {} for a net as built
    mean: tuple[float, ...] | None  # the normalization they expect; None: unknown (use the target's)
    std: tuple[float, ...] | None
    read_weights: Callable[[], dict[str, torch.Tensor]]
    label: str  # names the source in messages


def open_source(cfg: FinetuneConfig) -> Source:
    """Describe `cfg.source` (cheap: weights are read only by `read_weights`)."""
    prefix, colon, rest = cfg.source.partition(":")
    if colon and prefix in ("torchvision", "timm"):
        if cfg.arch:
            raise CifarlabError(f"finetune.arch is for a weights file; '{cfg.source}' names its architecture itself")
        return _torchvision(rest) if prefix == "torchvision" else _timm(rest)
    path = Path(cfg.source).expanduser()
    if not path.exists():
        raise CifarlabError(
            f"fine-tuning source '{cfg.source}' does not exist; give a run directory or checkpoint, a weights file "
            f"with --arch, torchvision:<model>[:<weights>] or timm:<name>"
        )
    if path.is_dir() or (path.parent / "meta.json").is_file():
        if cfg.arch:
            raise CifarlabError(f"finetune.arch is for a weights file; the checkpoint '{path}' records its architecture")
        return _checkpoint(path)
    return _weights_file(path, cfg.arch)


def _checkpoint(path: Path) -> Source:
    folder = find_checkpoint(path)
    meta = read_meta(folder)
    return Source(meta["model"], meta.get("model_options", {}), meta.get("model_resized", {}), tuple(meta["mean"]),
                  tuple(meta["std"]), lambda: read_weights(folder / "model.safetensors"), str(folder))  # fmt: skip


def _torchvision(spec: str) -> Source:
    arch, _, name = spec.partition(":")
    check_model_name(f"torchvision:{arch}")
    available = torchvision.models.get_model_weights(arch)
    try:
        weights = available[name or "DEFAULT"]
    except KeyError:
        raise CifarlabError(
            f"torchvision has no weights '{name}' for {arch}; it has: {', '.join(available.__members__)}"
        ) from None

    def read() -> dict[str, torch.Tensor]:
        try:
            return weights.get_state_dict(progress=True, check_hash=True, weights_only=True)
        except Exception as e:  # no network, a proxy error, a damaged download: all mean the same to the user
            raise CifarlabError(
                f"cannot get torchvision's {weights} from {weights.url} ({type(e).__name__}: {e}). Offline? Save "
                f"them where you can download (torch.save(model.state_dict(), FILE)) and use "
                f"--from FILE --arch torchvision:{arch}"
            ) from None

    transform = weights.transforms()
    return Source(f"torchvision:{arch}", {}, {}, tuple(transform.mean), tuple(transform.std), read, f"torchvision:{spec}")


def _timm(name: str) -> Source:
    timm = import_timm()
    check_model_name(f"timm:{name}")

    def read() -> dict[str, torch.Tensor]:
        try:
            return timm.create_model(name, pretrained=True).state_dict()
        except Exception as e:  # as above: whatever failed, the weights are not here
            raise CifarlabError(
                f"cannot get timm's pretrained weights for '{name}' ({type(e).__name__}: {e}). Offline? Save them "
                f"where you can download and use --from FILE --arch timm:{name}"
            ) from None

    mean, std = _timm_normalization(name)
    return Source(f"timm:{name}", {}, {}, mean, std, read, f"timm:{name}")


def _timm_normalization(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    timm = import_timm()
    mean, std = (timm.get_pretrained_cfg_value(name, key) for key in ("mean", "std"))
    return tuple(mean or IMAGENET_MEAN), tuple(std or IMAGENET_STD)


def _weights_file(path: Path, arch: str | None) -> Source:
    if not arch:
        raise CifarlabError(
            f"'{path}' is a weights file: name the architecture it was saved from with --arch "
            f"(a `cifarlab models` name, torchvision:<model> or timm:<name>)"
        )
    check_model_name(arch)
    namespace, _, name = arch.partition(":")
    if namespace == "torchvision":
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    elif namespace == "timm":
        mean, std = _timm_normalization(name)
    else:  # a bare file does not say what a cifarlab net was trained on: the target's statistics
        mean = std = None
    return Source(arch, {}, {}, mean, std, lambda: read_state_dict(path), str(path))


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a safetensors file, or from a torch.save file without unpickling code."""
    weights = read_weights(path) if path.suffix == ".safetensors" else load_tensors(path)
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise CifarlabError(f"'{path}' is not a state dict (a mapping of parameter names to tensors)")
    return weights
