"""FixMatch (Sohn et al. 2020) and confidence-thresholded self-training (pseudo-labelling,
Lee 2013) as one objective that the trainer calls in place of its plain loss.

The unlabelled images arrive as image tensors only (data/unlabelled.py yields no labels for
them), so the only targets they can have are the model's own confident predictions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import SemiConfig


def pseudo_labels(logits: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard pseudo-labels (the top class, no gradient) and the mask of the images whose top
    probability reaches `threshold`: only those teach."""
    confidence, labels = logits.detach().float().softmax(1).max(1)
    return labels, confidence >= threshold


class SemiObjective:
    """loss = labelled loss + λ_u × the masked cross-entropy against the pseudo-labels, averaged
    over the whole unlabelled batch (FixMatch's form: images below τ count as zero, so the
    unlabelled loss grows as the model becomes confident on more of the pool).

    fixmatch: the pseudo-label comes from the weak view, in a forward pass without gradient
    (a third of a training pass: cheaper than FixMatch's one pass over all three batches;
    it runs in train mode, so BatchNorm normalizes the weak batch on its own and its running
    statistics take one more update per step); the labelled and strong batches then go
    through the net together, so BatchNorm normalizes them as one batch, as in the paper.
    pseudo: the labelled and weak batches go through together, and the weak view learns its
    own confident predictions."""

    def __init__(self, semi: SemiConfig):
        self.method, self.threshold, self.weight = semi.method, semi.threshold, semi.unlabelled_weight

    def __call__(self, forward, criterion, x: torch.Tensor, y: torch.Tensor,
                 views: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
        """(labelled logits, loss, [unlabelled loss × n, confident images, n] for the log)."""
        if self.method == "fixmatch":
            weak, strong = views
            with torch.no_grad():
                guess = forward(weak)
            logits = forward(torch.cat([x, strong]))
        else:
            (weak,) = views
            logits = forward(torch.cat([x, weak]))
            guess = logits[len(x) :]
        targets, mask = pseudo_labels(guess, self.threshold)
        unlabelled_loss = (F.cross_entropy(logits[len(x) :].float(), targets, reduction="none") * mask).mean()
        labelled = logits[: len(x)]
        loss = criterion(labelled.float(), y) + self.weight * unlabelled_loss
        n = torch.tensor(len(mask), dtype=torch.float64, device=mask.device)
        return labelled, loss, torch.stack([unlabelled_loss.detach().double() * n, mask.sum().double(), n])
