"""Knowledge distillation (Hinton et al. 2015): the net also learns a finished net's predictions,
both softened by a temperature T, whose small probabilities for the wrong classes say how the
classes resemble each other, which the labels alone do not. A pruned net fine-tuned so learns
back from the net it was cut from; a small net learns from a large one."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import OptimConfig
from ..errors import CifarlabError
from .checkpoint import load_checkpoint
from .onnx_model import OnnxModel


class Teacher:
    """A finished run's float net, frozen in eval mode, that sees the student's own batches
    (renormalized first when the two nets learnt with a different mean and std)."""

    def __init__(self, settings: OptimConfig, classes: list[str], mean: tuple, std: tuple, device: torch.device,
                 channels_last: bool = True):  # fmt: skip
        path = settings.distill_from
        checkpoint = load_checkpoint(path, device, calibration=False)
        if isinstance(checkpoint.model, OnnxModel):
            raise CifarlabError(f"optim.distill_from '{path}' is an ONNX model; give the float run it came from")
        if checkpoint.classes != list(classes):
            raise CifarlabError(f"optim.distill_from '{path}' predicts other classes than this run's "
                                f"({len(checkpoint.classes)}: {', '.join(checkpoint.classes[:4])}, …); a teacher "
                                f"must know the student's classes, in the same order")  # fmt: skip
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model: nn.Module = checkpoint.model.to(device, memory_format=memory_format).requires_grad_(False)
        # x_teacher = x × scale + shift: the student's normalized pixels in the teacher's normalization
        ours, theirs = (torch.tensor(v, device=device).view(1, 3, 1, 1) for v in (std, checkpoint.std))
        self.scale = ours / theirs
        self.shift = (torch.tensor(mean, device=device).view(1, 3, 1, 1) - torch.tensor(checkpoint.mean, device=device)
                      .view(1, 3, 1, 1)) / theirs  # fmt: skip
        self.same_normalization = tuple(mean) == tuple(checkpoint.mean) and tuple(std) == tuple(checkpoint.std)
        self.weight, self.temperature = settings.distill_weight, settings.distill_temperature

    def loss(self, logits: torch.Tensor, x: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        """(1 - w) × `loss` (the labels' cross-entropy) + w × T² × KL(teacher ‖ net) over the
        batch `x` whose student `logits` these are; T² keeps the gradients' scale as T changes."""
        with torch.no_grad():
            taught = self.model(x if self.same_normalization else x * self.scale + self.shift).float()
        t = self.temperature
        divergence = F.kl_div(F.log_softmax(logits / t, dim=1), F.log_softmax(taught / t, dim=1), log_target=True,
                              reduction="batchmean")  # fmt: skip
        return (1 - self.weight) * loss + self.weight * t * t * divergence
