"""Training loop, optimization, checkpoints, evaluation and inference."""

from .checkpoint import Checkpoint, load_checkpoint, load_model
from .inference import classify_images, evaluate
from .trainer import Run, train

__all__ = ["Checkpoint", "Run", "classify_images", "evaluate", "load_checkpoint", "load_model", "train"]
