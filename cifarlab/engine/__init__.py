"""Training loop, optimization, checkpoints, evaluation and inference (below run.py, which builds what they get)."""

from .checkpoint import Checkpoint, load_checkpoint, load_model
from .inference import classify_images, evaluate
from .trainer import Run

__all__ = ["Checkpoint", "Run", "classify_images", "evaluate", "load_checkpoint", "load_model"]
