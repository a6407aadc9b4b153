"""FixMatch (Sohn et al. 2020) and confidence-thresholded pseudo-labelling (Lee 2013) as one
objective that the trainer calls in place of its plain loss; and self-training with a teacher
run, which labels the pool once before an ordinary supervised run (the student) starts.

The unlabelled images arrive as image tensors only (data/unlabelled.py yields no labels for
them), so the only targets they can have are a model's own confident predictions.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from ..config import Config, SemiConfig
from ..data import ImageSet, Splits, label_differences
from ..engine import distributed
from ..engine.checkpoint import load_checkpoint
from ..engine.inference import checkpoint_loader, class_probabilities
from ..engine.runtime import autocast
from ..errors import CifarlabError


def pseudo_labels(probabilities: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard pseudo-labels (the top class) and the mask of the images whose top probability
    reaches `threshold`: only those teach, online (FixMatch, pseudo) and from a teacher alike."""
    confidence, labels = probabilities.max(1)
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
        targets, mask = pseudo_labels(guess.detach().float().softmax(1), self.threshold)
        unlabelled_loss = (F.cross_entropy(logits[len(x) :].float(), targets, reduction="none") * mask).mean()
        labelled = logits[: len(x)]
        loss = criterion(labelled.float(), y) + self.weight * unlabelled_loss
        n = torch.tensor(len(mask), dtype=torch.float64, device=mask.device)
        return labelled, loss, torch.stack([unlabelled_loss.detach().double() * n, mask.sum().double(), n])


def pseudo_labelled(splits: Splits, config: Config, device: torch.device, saved: dict | None = None) -> Splits:
    """Self-training's training set (Scudder 1965; Xie et al. 2020's noisy student): the
    labelled images, plus each pool image that the teacher run predicts, with its own TTA, at
    a top probability ≥ semi.threshold, labelled with that prediction. The teacher must have
    learnt from exactly this run's labels (no others can leak in); the student then trains as
    any supervised run, with its own augmentation as the noise, and can teach the next round.
    Under torchrun each process predicts its shard of the pool and all gather the predictions,
    so every rank chooses the same images (each labelling the whole pool alone could differ
    in rounding, and an image at τ would then train on one rank only).
    `saved`: the run's own labelled.json when it resumes; the teacher's labels recorded there
    are used, so a resumed student needs no teacher and trains on exactly the same set."""
    pool = splits.unlabelled
    if not len(pool):
        raise CifarlabError(f"semi.method=selftrain: data.labels_per_class={config.data.labels_per_class} leaves no "
                            f"unlabelled images for the teacher to label")  # fmt: skip
    if saved is not None and "pseudo_positions" in saved:
        chosen, labels = _recorded(saved, splits)
    else:
        chosen, labels = _teacher_labels(splits, config, device)
    train = splits.train
    train = ImageSet(torch.cat([train.images, pool.images[chosen]]), torch.cat([train.labels, labels]), train.classes)
    positions = torch.cat([splits.train_positions, splits.unlabelled_positions[chosen]])
    return dataclasses.replace(splits, train=train, train_positions=positions)


def _teacher_labels(splits: Splits, config: Config, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(which pool images, their labels): the teacher's confident predictions, in pool order."""
    semi = config.semi
    checkpoint = load_checkpoint(semi.teacher, device)
    taught = checkpoint.config()
    differ = label_differences(taught.data, config.data)
    if differ or checkpoint.classes != splits.classes:
        raise CifarlabError(f"semi.teacher '{semi.teacher}' learnt from other labels than this run "
                            f"({'; '.join(differ) or 'other classes'}): a teacher must have learnt from exactly the "
                            f"student's labels")  # fmt: skip
    pool = splits.unlabelled
    hidden = ImageSet(pool.images, torch.zeros(len(pool.images), dtype=torch.long), pool.classes)  # the loader wants labels
    loader = checkpoint_loader(checkpoint, taught, distributed.shard(hidden), device)
    probabilities = class_probabilities(checkpoint, loader, raw=True, tta=taught.train.tta,
                                        autocast=autocast(device, taught.train.precision))  # fmt: skip
    probabilities = distributed.gather_shards(probabilities, len(pool))
    labels, keep = pseudo_labels(probabilities, semi.threshold)
    if not keep.any():
        raise CifarlabError(f"semi.teacher '{semi.teacher}' predicts no pool image at semi.threshold={semi.threshold} "
                            f"(its highest: {probabilities.max():.3f}); lower the threshold")  # fmt: skip
    return keep.nonzero().squeeze(1), labels[keep]


def _recorded(saved: dict, splits: Splits) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's labels as the run recorded them (training-file positions), as pool indices."""
    positions, labels = saved["pseudo_positions"], saved["pseudo_labels"]
    where = {int(p): i for i, p in enumerate(splits.unlabelled_positions.tolist())}
    valid = (isinstance(positions, list) and isinstance(labels, list) and len(positions) == len(labels)
             and all(isinstance(p, int) and p in where for p in positions)
             and all(isinstance(c, int) and 0 <= c < len(splits.classes) for c in labels))  # fmt: skip
    if not valid:
        raise CifarlabError("labelled.json: its pseudo_positions and pseudo_labels are not a labelling of this run's "
                            "unlabelled pool; the run folder was changed")  # fmt: skip
    return torch.tensor([where[p] for p in positions], dtype=torch.long), torch.tensor(labels, dtype=torch.long)


def teacher_labelled(splits: Splits) -> torch.Tensor:
    """Which training images carry a teacher's label: those outside the labelled ones."""
    return ~torch.isin(splits.train_positions, splits.labelled_positions)
