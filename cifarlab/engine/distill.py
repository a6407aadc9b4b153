"""Knowledge distillation (Hinton et al. 2015): the net also learns a finished net's predictions,
both softened by a temperature T, whose small probabilities for the wrong classes say how the
classes resemble each other, which the labels alone do not. A pruned net fine-tuned so learns
back from the net it was cut from; a small net learns from a large one."""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Config
from ..data import Splits, label_differences
from ..errors import CifarlabError
from ..models import takes_side
from .checkpoint import load_checkpoint
from .onnx_model import OnnxModel


class Teacher:
    """A finished run's float net, frozen in eval mode, that sees the clean view of the
    student's batches (renormalized first when the two nets learnt with a different mean and
    std). Refused, before the run starts, where it could not teach this run: other classes,
    other image sizes, and, for a few-label run, other labels than the run's own (they would leak in)."""

    def __init__(self, config: Config, splits: Splits, device: torch.device):
        path = config.optim.distill_from
        checkpoint = load_checkpoint(path, device, calibration=False)
        model = checkpoint.model
        if isinstance(model, OnnxModel):
            raise CifarlabError(f"optim.distill_from '{path}' is an ONNX model; give the float run it came from")
        if checkpoint.classes != list(splits.classes):
            raise CifarlabError(f"optim.distill_from '{path}' predicts other classes than this run "
                                f"({len(checkpoint.classes)}: {', '.join(checkpoint.classes[:4])}, …); a teacher "
                                f"must know the student's classes, in the same order")  # fmt: skip
        taught = checkpoint.config().data if "config" in checkpoint.meta else None
        data = config.data
        if data.few_labels:
            differ = label_differences(taught, data) if taught else ["its run's settings are not saved"]
            if differ:
                raise CifarlabError(f"optim.distill_from '{path}' learnt from other labels than this run "
                                    f"({'; '.join(differ)}): it would pass labels on that a few-label run must "
                                    f"not see")  # fmt: skip
        if taught and taught.image_size != data.image_size:
            raise CifarlabError(f"optim.distill_from '{path}' learnt from {taught.image_size}-pixel images, this run "
                                f"trains on {data.image_size}-pixel ones")  # fmt: skip
        for side in {data.image_size, config.train.low_res or data.image_size}:
            if not takes_side(model, side, device):
                raise CifarlabError(f"optim.distill_from '{path}': its model {checkpoint.meta['model']} does not take "
                                    f"the {side}×{side} images this run trains on")  # fmt: skip
        memory_format = torch.channels_last if config.train.channels_last else torch.contiguous_format
        self.model: nn.Module = model.to(device, memory_format=memory_format).requires_grad_(False)
        # x_teacher = x × scale + shift: the student's normalized pixels in the teacher's normalization
        ours, theirs = (torch.tensor(v, device=device).view(1, 3, 1, 1) for v in (splits.std, checkpoint.std))
        self.scale = ours / theirs
        self.shift = (torch.tensor(splits.mean, device=device).view(1, 3, 1, 1)
                      - torch.tensor(checkpoint.mean, device=device).view(1, 3, 1, 1)) / theirs  # fmt: skip
        self.same_normalization = (tuple(splits.mean), tuple(splits.std)) == (checkpoint.mean, checkpoint.std)
        self.weight, self.temperature = config.optim.distill_weight, config.optim.distill_temperature
        digest = hashlib.blake2b(digest_size=16)
        for name, tensor in sorted(self.model.state_dict().items()):
            raw = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
            digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)};".encode() + raw.numpy().tobytes())
        self.fingerprint = digest.hexdigest()  # a resumed run checks that it learns from the same net

    def loss(self, logits: torch.Tensor, x: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        """(1 - w) × `loss` (the labels' cross-entropy) + w × T² × KL(teacher ‖ net) over the
        batch `x` whose student `logits` these are; T² keeps the gradients' scale as T changes."""
        with torch.no_grad():
            taught = self.model(x if self.same_normalization else x * self.scale + self.shift).float()
        t = self.temperature
        divergence = F.kl_div(F.log_softmax(logits / t, dim=1), F.log_softmax(taught / t, dim=1), log_target=True,
                              reduction="batchmean")  # fmt: skip
        return (1 - self.weight) * loss + self.weight * t * t * divergence
