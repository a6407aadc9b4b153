"""Making a trained net cheaper and shipping it.

Pruning (`cifarlab prune`, channels.py / sparsity.py / prune.py): channels (structured, with
torch-pruning: smaller layers, fewer MACs) or weights (unstructured zeros: the same compute).
A pruned run is an ordinary fine-tuning run: its `finetune.source` is the pruned checkpoint
kept in its checkpoints/pruned/, its `model.resized` rebuilds the smaller net, and it trains
with the source run's recipe at 0.3x its lrs, learning the unpruned net's predictions too
(engine/distill.py); eval, predict, report, finetune --from and train --resume treat it like
any other run.

int8 quantization (quantize.py) and export to ONNX / torch.export (export.py).

    import cifarlab
    run = cifarlab.prune("runs/fast90", amount=0.5)      # → run.dir, run.test["accuracy"]
"""

from .channels import prune_channels
from .export import Export, Parity, export_model
from .prune import PruneTarget, describe, prune_model, pruned_config
from .sparsity import prune_unstructured, sparsity

__all__ = [
    "Export",
    "Parity",
    "PruneTarget",
    "describe",
    "export_model",
    "prune_channels",
    "prune_model",
    "prune_unstructured",
    "pruned_config",
    "sparsity",
]
