"""Compression of a trained net. Pruning (`cifarlab prune`): channels (structured, with
torch-pruning: smaller layers, fewer MACs) or weights (unstructured zeros: the same compute).

A pruned run is an ordinary fine-tuning run: its `finetune.source` is the pruned checkpoint
kept in its checkpoints/pruned/, its `model.resized` rebuilds the smaller net, and it trains
with the source run's recipe at 0.3× its lrs; eval, predict, report, finetune --from and
train --resume treat it like any other run.

    import cifarlab
    run = cifarlab.prune("runs/fast90", amount=0.5)      # → run.dir, run.test["accuracy"]
"""

from .channels import prune_channels
from .prune import PruneTarget, describe, prune_model, pruned_config
from .sparsity import prune_unstructured, sparsity

__all__ = ["PruneTarget", "describe", "prune_channels", "prune_model", "prune_unstructured", "pruned_config", "sparsity"]
