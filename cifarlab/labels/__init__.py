"""Learning with fewer labels: semi-supervised objectives (FixMatch, pseudo-labelling)."""

from .semi import SemiObjective, pseudo_labels

__all__ = ["SemiObjective", "pseudo_labels"]
