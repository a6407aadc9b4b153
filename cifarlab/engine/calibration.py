"""Probabilities a user can trust: post-hoc temperature scaling (Guo et al., ICML 2017, "On
Calibration of Modern Neural Networks") and the figures that say how far probabilities match
outcomes: top-label and classwise ECE over equal-width bins, NLL and Brier score.

One scalar T divides every logit. softmax(z / T) keeps each image's order of classes, so no
prediction changes; it only sharpens (T < 1) or softens (T > 1) the probabilities. T is the
one that minimizes the NLL on held-out labelled images, never on the test set. The file a
fitted temperature lives in is engine/checkpoint.py's business (calibration.json).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import CifarlabError

ECE_BINS = 15  # equal-width confidence bins, as in Guo et al. 2017
LOG_T_LIMIT = 4.6  # T stays within [0.01, 100]: held-out images the model gets all right would push T to 0


def probabilities(logits: torch.Tensor, temperature: float | None = None) -> torch.Tensor:
    """softmax(logits / T) (T None: no temperature fitted, T = 1), the one place a temperature
    meets logits. In float64: float32 would round near-equal logits divided by a large T to
    ties, and a tie could move the argmax."""
    return (logits.double() / (temperature or 1.0)).softmax(1)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T that minimizes the NLL of softmax(logits / T) on labelled held-out images.

    LBFGS on log T over the cached logits: log T keeps T positive and makes the problem
    smooth and close to quadratic, so a few iterations of a one-parameter problem suffice."""
    if len(labels) == 0:
        raise CifarlabError("no held-out images to fit a temperature on")
    logits = logits.detach().double().cpu()
    if not bool(logits.isfinite().all()):
        raise CifarlabError("the model gives NaN/inf outputs on the held-out images; no temperature can be fitted")
    labels = labels.cpu()
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=100, tolerance_grad=1e-9, tolerance_change=1e-12,
                                  line_search_fn="strong_wolfe")  # fmt: skip

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits * torch.exp(-log_t.clamp(-LOG_T_LIMIT, LOG_T_LIMIT)), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().clamp(-LOG_T_LIMIT, LOG_T_LIMIT).exp())


@dataclass
class Reliability:
    """What a reliability diagram draws: scores binned by value against how often they came true."""

    edges: np.ndarray  # bin edges over the score, bins + 1 values
    confidence: np.ndarray  # mean score per bin (nan where empty)
    accuracy: np.ndarray  # how often the event happened per bin (nan where empty)
    counts: np.ndarray
    ece: float  # expected calibration error: sum over bins of (share of images) × |accuracy − confidence|


def _binned(scores: torch.Tensor, hits: torch.Tensor, bins: int) -> Reliability:
    """Equal-width bins; bin m holds ((m-1)/bins, m/bins], as in Guo et al. (bin 1 also holds 0)."""
    scores, hits = scores.double().contiguous(), hits.double()
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    index = torch.bucketize(scores, edges[1:-1])
    counts = torch.bincount(index, minlength=bins).double()
    confidence = torch.bincount(index, scores, bins) / counts
    accuracy = torch.bincount(index, hits, bins) / counts
    filled = counts > 0
    ece = (counts[filled] / len(scores) * (accuracy[filled] - confidence[filled]).abs()).sum().item()
    return Reliability(edges.numpy(), confidence.numpy(), accuracy.numpy(), counts.long().numpy(), ece)


def reliability(probabilities: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> Reliability:
    """Top-label: the probability of the predicted class against whether it was right."""
    confidence, predicted = probabilities.max(1)
    return _binned(confidence, predicted == labels, bins)


def scores(logits: torch.Tensor, labels: torch.Tensor, temperature: float | None = None, bins: int = ECE_BINS) -> dict:
    """How well softmax(logits / T) matches the labels. ece: top-label; classwise_ece: every
    class's probability binned against that class's frequency, averaged over the classes
    (Kull et al. 2019), which also sees the probabilities of the classes not predicted;
    nll: mean negative log-likelihood; brier: squared distance to the one-hot label, summed
    over classes, mean over images (0 best, 2 worst)."""
    p = probabilities(logits, temperature)
    one_hot = F.one_hot(labels, p.shape[1]).double()
    return {
        "ece": reliability(p, labels, bins).ece,
        "classwise_ece": sum(_binned(p[:, k], one_hot[:, k], bins).ece for k in range(p.shape[1])) / p.shape[1],
        "nll": F.cross_entropy(logits.double() / (temperature or 1.0), labels).item(),
        "brier": (p - one_hot).square().sum(1).mean().item(),
    }


def calibration_metrics(logits: torch.Tensor, labels: torch.Tensor, temperature: float | None) -> dict:
    """eval.json's `calibration`: the scores of the raw probabilities and, for a model with a
    fitted temperature, of the calibrated ones, with the binning they were computed with."""
    block = {"bins": ECE_BINS, "images": len(labels), "temperature": temperature, "raw": scores(logits, labels)}
    if temperature is not None:
        block["calibrated"] = scores(logits, labels, temperature)
    return block


def fit_record(logits: torch.Tensor, labels: torch.Tensor, split: str, tta: str) -> dict:
    """Fit T on held-out logits; what calibration.json keeps: T, where it was fitted (split,
    images, the TTA of the logits) and the scores on those images before and after."""
    temperature = fit_temperature(logits, labels)
    return {"temperature": temperature, "split": split, "images": len(labels), "tta": tta, "bins": ECE_BINS,
            "before": scores(logits, labels), "after": scores(logits, labels, temperature)}  # fmt: skip


def describe_fit(record: dict) -> str:
    before, after = record["before"], record["after"]
    return (f"temperature {record['temperature']:.4f} fitted on {record['split']} ({record['images']:,} images, "
            f"tta={record['tta']}): NLL {before['nll']:.4f} → {after['nll']:.4f}, ECE {before['ece']:.2%} → "
            f"{after['ece']:.2%}")  # fmt: skip
