"""A model's metrics on a split: logits with optional test-time augmentation, then accuracy,
loss, per-class precision/recall/F1, the confusion matrix and how well the probabilities are
calibrated (engine/calibration.py), and their text summary.
(metrics_log.py is something else: the metrics.jsonl file a run appends to.)"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..data import DeviceLoader
from ..errors import CifarlabError
from ..fileio import read_json
from .calibration import calibration_metrics


def _flip_average(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (model(x) + model(x.flip(-1)))


def tta_logits(model: nn.Module, x: torch.Tensor, tta: str, share: float = 1.0) -> torch.Tensor:
    """Average logits over views: 'flip' adds the mirror image; 'flip-translate' also averages
    1-px shifts up-left and down-right (reflect-padded), each with its mirror, weighted as in
    airbench (half the weight on the unshifted pair). With `share` < 1 only that share of the
    batch, the images whose plain view is least sure (smallest gap between its two highest
    logits), gets the other views; the rest keep the plain view's logits: TTA rarely changes
    a sure prediction, and the other views are all of its cost."""
    plain = model(x)
    if tta == "none":
        return plain
    if share >= 1:
        return _views_average(model, x, plain, tta)
    top = plain.topk(2, dim=1).values
    unsure = (top[:, 0] - top[:, 1]).topk(math.ceil(share * len(x)), largest=False).indices
    logits = plain.clone()
    logits[unsure] = _views_average(model, x[unsure], plain[unsure], tta)
    return logits


def _views_average(model: nn.Module, x: torch.Tensor, plain: torch.Tensor, tta: str) -> torch.Tensor:
    logits = 0.5 * (plain + model(x.flip(-1)))
    if tta == "flip":
        return logits
    h, w = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    shifted = [padded[..., :h, :w], padded[..., 2:, 2:]]
    return 0.5 * logits + 0.25 * sum(_flip_average(model, s) for s in shifted)


@torch.no_grad()
def predict(model: nn.Module, loader: DeviceLoader, tta: str = "none", autocast=None,
            tta_share: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Float32 logits and labels (on the CPU) for every image of the loader, in order
    (`tta_share`: see tta_logits)."""
    was_training = model.training
    model.eval()
    outputs, labels = [], []
    with autocast or contextlib.nullcontext():
        for x, y in loader.epoch(0):
            outputs.append(tta_logits(model, x, tta, tta_share).float().cpu())
            labels.append(y.cpu())
    model.train(was_training)
    return torch.cat(outputs), torch.cat(labels)


def classifier_layer(model: nn.Module) -> nn.Linear | None:
    """The last nn.Linear: its input is the penultimate feature vector."""
    return next((m for m in reversed(list(model.modules())) if isinstance(m, nn.Linear)), None)


def predict_with_features(model: nn.Module, loader: DeviceLoader, autocast=None):
    """`predict` without TTA that also keeps, in the same pass, what the classifier reads (the
    penultimate features, flattened, float32 on the CPU; None for a net without an nn.Linear
    head): the report's embeddings and active learning's core-set distances."""
    head = classifier_layer(model)
    features: list[torch.Tensor] = []

    def keep_input(module, inputs, output):
        features.append(inputs[0].float().flatten(1).cpu())

    hook = head.register_forward_hook(keep_input) if head is not None else None
    try:
        logits, labels = predict(model, loader, "none", autocast)
    finally:
        if hook is not None:
            hook.remove()
    return logits, labels, torch.cat(features) if features else None


def finite(logits: torch.Tensor, source) -> torch.Tensor:
    """The logits, or one error: weights that overflow (a diverged run saved while still
    finite) give NaN/inf outputs, whose accuracy and probabilities would mean nothing."""
    bad = int((~logits.isfinite().all(1)).sum())
    if bad:
        raise CifarlabError(f"the model of '{source}' gives NaN/inf outputs for {bad} of {len(logits)} images "
                            f"(its weights overflow); retrain it with a lower learning rate (--lr)")  # fmt: skip
    return logits


def metrics_from_logits(logits: torch.Tensor, labels: torch.Tensor, classes: list[str],
                        temperature: float | None = None) -> dict:  # fmt: skip
    """Accuracy, loss, top-5, per-class precision/recall(=class accuracy)/F1, confusion matrix
    (rows: true class, columns: predicted class), and the calibration of the probabilities:
    raw, and with a fitted `temperature` also calibrated (which changes none of the rest)."""
    k = len(classes)
    predictions = logits.argmax(1)
    confusion = torch.bincount(labels * k + predictions, minlength=k * k).view(k, k)
    true_positive = confusion.diag().double()
    support = confusion.sum(1).double()
    predicted = confusion.sum(0).double()
    precision = torch.where(predicted > 0, true_positive / predicted.clamp(min=1), 0.0)
    recall = torch.where(support > 0, true_positive / support.clamp(min=1), 0.0)
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12), 0.0)
    result = {
        "num_images": len(labels),
        "accuracy": (predictions == labels).double().mean().item(),
        "loss": F.cross_entropy(logits, labels).item(),
        "macro_f1": f1.mean().item(),
        "per_class": {
            name: {
                "accuracy": recall[i].item(),
                "precision": precision[i].item(),
                "recall": recall[i].item(),
                "f1": f1[i].item(),
                "support": int(support[i]),
            }
            for i, name in enumerate(classes)
        },
        "confusion_matrix": confusion.tolist(),
        "calibration": calibration_metrics(logits, labels, temperature),
    }
    if k > 5:
        top5 = logits.topk(5, dim=1).indices
        result["top5_accuracy"] = (top5 == labels[:, None]).any(1).double().mean().item()
    return result


def format_report(metrics: dict, classes: list[str]) -> str:
    """A plain-text summary: headline figures, the per-class table and (up to 20 classes) the
    confusion matrix."""
    lines = [
        f"accuracy {metrics['accuracy']:.2%}  loss {metrics['loss']:.4f}  macro-F1 {metrics['macro_f1']:.4f}"
        + (f"  top-5 {metrics['top5_accuracy']:.2%}" if "top5_accuracy" in metrics else ""),
        *([_calibration_line(metrics["calibration"])] if "calibration" in metrics else []),
        "",
        f"{'class':>14} {'acc':>7} {'prec':>7} {'recall':>7} {'f1':>7} {'n':>6}",
    ]
    for name in classes:
        c = metrics["per_class"][name]
        lines.append(
            f"{name[:14]:>14} {c['accuracy']:7.2%} {c['precision']:7.3f} {c['recall']:7.3f} {c['f1']:7.3f} {c['support']:6d}"
        )
    if len(classes) <= 20:
        short = [name[:5] for name in classes]
        lines += ["", "confusion matrix (rows: true, columns: predicted)", " " * 14 + "".join(f"{s:>6}" for s in short)]
        for name, row in zip(classes, metrics["confusion_matrix"]):
            lines.append(f"{name[:13]:>13} " + "".join(f"{v:6d}" for v in row))
    return "\n".join(lines)


def _calibration_line(block: dict) -> str:
    def figures(scores: dict) -> str:
        return f"ECE {scores['ece']:.2%}  classwise ECE {scores['classwise_ece']:.2%}  NLL {scores['nll']:.4f}  " \
               f"Brier {scores['brier']:.4f}"  # fmt: skip

    if "calibrated" not in block:
        return f"probabilities (raw, no temperature): {figures(block['raw'])}  [{block['bins']} bins]"
    return (f"probabilities calibrated (T={block['temperature']:.4f}): {figures(block['calibrated'])}  "
            f"[raw: {figures(block['raw'])}; {block['bins']} bins]")  # fmt: skip


def read_result(run_dir: str | Path) -> dict:
    """A finished run's eval.json (what the final test wrote), or one CifarlabError saying why
    there is none or why it cannot be used."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CifarlabError(f"run directory '{run_dir}' does not exist")
    path = run_dir / "eval.json"
    if not path.exists():
        raise CifarlabError(
            f"'{run_dir}' has no eval.json: it is not a finished run (continue it with "
            f"`cifarlab train --out {run_dir} --resume`)"
        )
    result = read_json(path, "test results")
    if not isinstance(result, dict) or not {"accuracy", "per_class", "confusion_matrix", "checkpoint"} <= result.keys():
        raise CifarlabError(f"'{path}' is not a cifarlab eval.json (missing keys)")
    if result["checkpoint"] not in ("best", "last"):
        raise CifarlabError(f"'{path}' names an unknown checkpoint {result['checkpoint']!r} (expected best or last)")
    return result


def read_tested(path: str | Path) -> tuple[Path, dict | None]:
    """Where the model that a run, a `cifarlab quantize` folder or a model file was tested with
    is, and that test's metrics; None for what has no test yet (an exported file, a checkpoint
    folder, an unfinished run), whose model is found as `load_checkpoint` finds it."""
    path = Path(path)
    if path.is_dir() and (path / "model.onnx").is_file() and (path / "eval.json").is_file():  # cifarlab quantize
        result = read_json(path / "eval.json", "test results")
        if not isinstance(result, dict) or not isinstance(result.get("accuracy"), float):
            raise CifarlabError(f"'{path / 'eval.json'}' is not a cifarlab eval.json (no accuracy)")
        return path, result
    if path.is_dir() and (path / "eval.json").is_file():  # a run
        result = read_result(path)
        return path / "checkpoints" / result["checkpoint"], result
    return path, None
