"""cifarlab: develop, train, evaluate, fine-tune and compress CNNs on CIFAR-10/100.

    import cifarlab
    config = cifarlab.resolve_config("tutorial")      # a named recipe; edit fields freely
    run = cifarlab.train(config)                      # → run.dir, run.test["accuracy"]
    metrics = cifarlab.evaluate(run.dir, split="test", tta="flip")
    cifarlab.calibrate(run.dir)                        # a temperature fitted on held-out images
    model = cifarlab.load_model(run.dir)
    tuned = cifarlab.finetune(run.dir, "cifar100", "full")   # → the same kind of Run
    small = cifarlab.prune(run.dir, amount=0.5)              # fewer channels, fine-tuned: a Run too
    int8 = cifarlab.quantize(run.dir)                  # → runs/<run>-int8 (model.onnx), int8.test
    cifarlab.export_model(run.dir, "onnx")             # → <run>.onnx, checked on test images
    table, _ = cifarlab.bench([run.dir, int8.dir])     # latency, throughput, size, accuracy side by side
    result, _ = cifarlab.robustness(run.dir)          # CIFAR-10-C and FGSM / PGD: robustness.json
    found = cifarlab.lr_find(config)                  # the lr range test: found.result.suggestion, found.sets

Sweeps (Optuna, an optional extra): cifarlab.tune.sweep.sweep(SweepSettings(...)).
"""

__version__ = "0.1.0"

from .compress import export_model  # noqa: E402
from .config import ActiveConfig, Config, QuantizeConfig, resolve as resolve_config  # noqa: E402
from .engine import Checkpoint, Run, classify_images, evaluate, load_checkpoint, load_model  # noqa: E402
from .errors import CifarlabError  # noqa: E402
from .models import create_model, list_models, model_stats  # noqa: E402
from .robust import RobustnessConfig  # noqa: E402
from .run import active, audit_labels, bench, calibrate, finetune, prune, quantize, robustness, train  # noqa: E402
from .tune.lr_find import lr_find  # noqa: E402

__all__ = [
    "ActiveConfig",
    "Checkpoint",
    "CifarlabError",
    "Config",
    "QuantizeConfig",
    "RobustnessConfig",
    "Run",
    "active",
    "audit_labels",
    "bench",
    "calibrate",
    "classify_images",
    "create_model",
    "evaluate",
    "export_model",
    "finetune",
    "list_models",
    "load_checkpoint",
    "load_model",
    "lr_find",
    "model_stats",
    "prune",
    "quantize",
    "resolve_config",
    "robustness",
    "train",
]
