"""Labels: learning from fewer of them (semi-supervised objectives: FixMatch, pseudo-labelling),
which images to label next (simulated active learning) and which given labels are probably
wrong (confident learning). The loops train ordinary runs through a `train` callable that
run.py hands down."""

from .active import active_learning, read_results, summarize
from .audit import LabelIssues
from .semi import SemiObjective, pseudo_labelled, pseudo_labels, teacher_labelled
from .strategies import STRATEGIES

__all__ = ["LabelIssues", "STRATEGIES", "SemiObjective", "active_learning", "pseudo_labelled",
           "pseudo_labels", "read_results", "summarize", "teacher_labelled"]  # fmt: skip
