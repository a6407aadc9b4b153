"""Using a saved model: evaluate it on a split, or classify image files."""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import Config, choices
from ..data import DeviceLoader, ImageSet, make_splits, read_image
from ..errors import CifarlabError
from .calibration import probabilities as calibrated
from .checkpoint import Checkpoint, load_checkpoint
from .metrics import finite, metrics_from_logits, predict
from .runtime import autocast, keep_freed_memory, select_device


def evaluate(
    source: str | Path, split: str = "test", tta: str = "none", data_dir: str | None = None, device: str = "auto",
    raw: bool = False, tta_share: float = 1.0,
) -> dict:
    """Metrics of a run's (best) checkpoint, or any checkpoint, on its dataset's val or test split.

    The split is rebuilt from the run's saved data settings, so 'val' is the same held-out
    set the run selected its checkpoint on. The calibration figures cover the raw
    probabilities and, unless `raw`, those with the checkpoint's fitted temperature.
    """
    if split not in ("val", "test"):
        raise CifarlabError(f"unknown split '{split}'; choose 'val' or 'test'")
    if tta not in choices("train.tta"):
        raise CifarlabError(f"unknown TTA '{tta}'; choose one of: {', '.join(choices('train.tta'))}")
    if not 0 < tta_share <= 1:
        raise CifarlabError(f"--tta-share={tta_share} is out of range; it must be in (0, 1]")
    dev = select_device(device)
    checkpoint = load_checkpoint(source, dev)
    config = checkpoint.config(data_dir)
    splits = make_splits(config.data)
    data = splits.val if split == "val" else splits.test
    if data is None:
        raise CifarlabError("this run was trained with data.val_size=0: it has no validation split")
    loader = checkpoint_loader(checkpoint, config, data, dev)
    logits, labels = predict(checkpoint.model, loader, tta, autocast(dev, config.train.precision), tta_share)
    finite(logits, source)
    return {
        "split": split,
        "checkpoint": str(checkpoint.path),
        "tta": tta,
        "tta_share": tta_share,
        **metrics_from_logits(logits, labels, checkpoint.classes, None if raw else checkpoint.temperature),
    }


def checkpoint_loader(checkpoint: Checkpoint, config: Config, data: ImageSet, device: torch.device) -> DeviceLoader:
    """Feed `data` to the checkpoint's model as its run's final test did: same normalization,
    batch size and memory format (the model is put in that format too), so the logits repeat;
    freed memory is kept for reuse as in the run (process-wide: see runtime.keep_freed_memory)."""
    if config.train.reuse_memory:
        keep_freed_memory()
    channels_last = config.train.channels_last
    checkpoint.model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    return DeviceLoader(data, config.train.eval_batch_size, checkpoint.mean, checkpoint.std, device=device,
                        channels_last=channels_last)  # fmt: skip


def classify_images(source: str | Path, paths: list[str | Path], top_k: int = 5, device: str = "auto",
                    raw: bool = False) -> list[list[tuple[str, float]]]:  # fmt: skip
    """Top-k (class, probability) for each image file, read as the checkpoint's training images
    were (size, normalization); the probabilities are calibrated when the checkpoint has a
    fitted temperature, unless `raw`."""
    dev = select_device(device)
    checkpoint = load_checkpoint(source, dev)
    images = torch.stack([read_image(p, input_size(checkpoint)) for p in paths])
    probabilities = class_probabilities(checkpoint, image_loader(checkpoint, images, dev), raw)
    return [top_classes(row, checkpoint.classes, top_k) for row in probabilities]


def input_size(checkpoint: Checkpoint) -> int:
    """The side of the square images the checkpoint's model was trained on: files of any size are resized to it."""
    return checkpoint.config().data.image_size


def image_loader(checkpoint: Checkpoint, images: torch.Tensor, device: torch.device) -> DeviceLoader:
    """uint8 images (N, 3, S, S) fed to the checkpoint's model normalized as its training images were."""
    data = ImageSet(images, torch.zeros(len(images), dtype=torch.long), checkpoint.classes)
    return DeviceLoader(data, 256, checkpoint.mean, checkpoint.std, device=device, channels_last=False)


def class_probabilities(checkpoint: Checkpoint, loader: DeviceLoader, raw: bool = False, tta: str = "none",
                        autocast=None) -> torch.Tensor:  # fmt: skip
    """(N, classes) probabilities of the loader's images (by default without TTA, as `cifarlab
    predict`), in float64 as calibration computes them, so each row sums to 1 within rounding;
    calibrated with the checkpoint's fitted temperature unless `raw` or none was fitted."""
    logits, _ = predict(checkpoint.model, loader, tta, autocast)
    return calibrated(finite(logits, checkpoint.path), None if raw else checkpoint.temperature)


def top_classes(probabilities: torch.Tensor, classes: list[str], k: int) -> list[tuple[str, float]]:
    """The k most probable (class, probability) pairs of one image's probabilities, most probable first."""
    top = probabilities.topk(min(k, len(classes)))
    return [(classes[i], p) for p, i in zip(top.values.tolist(), top.indices.tolist())]
