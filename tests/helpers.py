"""Helpers the tests import (`from helpers import ...`; pytest puts tests/ on sys.path): the
real CIFAR data's location, and small synthetic datasets and checkpoints in the official
layouts, so the suite runs anywhere, a way to stop a run mid-way as a crash would
(`train_until`), and a self-training teacher's view of its pool (`sure_of_the_pool`).
Fixtures built on them are in conftest.py."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def real_data_root() -> Path | None:
    root = Path(os.environ.get("CIFARLAB_TEST_DATA", REPO.parent / "shared" / "data"))
    return root if (root / "cifar-10-batches-py" / "data_batch_1").is_file() else None


def synthetic_images(labels: np.ndarray, seed: int) -> np.ndarray:
    """Noisy images whose mean colour depends on the class, so a model can learn them."""
    rng = np.random.default_rng(seed)
    base = (labels[:, None] * 23 % 200 + 20).astype(np.int16)
    pixels = base + rng.integers(-20, 21, size=(len(labels), 3072))
    return pixels.clip(0, 255).astype(np.uint8)


def write_cifar10(root: Path, per_batch: int = 100, test: int = 200) -> Path:
    """A CIFAR-10-shaped dataset in the official python layout (pickle protocol 2)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"num_cases_per_batch": per_batch, "label_names": CIFAR10_CLASSES, "num_vis": 3072}, f, protocol=2)
    for i, (name, n) in enumerate([(f"data_batch_{k}", per_batch) for k in range(1, 6)] + [("test_batch", test)]):
        labels = np.arange(n) % 10
        batch = {"batch_label": name, "labels": labels.tolist(), "data": synthetic_images(labels, i),
                 "filenames": [f"img_{j}.png" for j in range(n)]}  # fmt: skip
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    return root


def write_source_checkpoint(folder: Path, name: str = "resnet20", seed: int = 0) -> Path:
    """A cifarlab checkpoint of a freshly initialized 10-class net: a fine-tuning source whose
    every weight is known, made in milliseconds instead of a training run."""
    import torch

    from cifarlab import create_model
    from cifarlab.engine.checkpoint import save_checkpoint

    torch.manual_seed(seed)
    model = create_model(name, num_classes=10)
    meta = {"model": name, "model_options": {}, "classes": CIFAR10_CLASSES, "mean": [0.5, 0.4, 0.3], "std": [0.2] * 3}
    save_checkpoint(folder, model.state_dict(), meta)
    return folder


def write_run_checkpoint(folder: Path, data_root: Path, name: str = "lenet", sets=()) -> Path:
    """A freshly initialized checkpoint whose meta.json holds a run's config (the tutorial
    recipe on `data_root`, with `sets`): what evaluation, export and quantization rebuild the
    run's data from."""
    import json

    from cifarlab.config import resolve

    write_source_checkpoint(folder, name)
    config = resolve("tutorial", sets=[f"data.data_dir={data_root}", f"model.name={name}", *sets])
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps({**meta, "config": config.to_dict()}))
    return folder


# Tests run once per model keep these in the quick loop (`pytest -m "not slow"`): small nets of
# the main kinds (a plain CNN, a residual net, a torchvision net); the other models run in full runs.
QUICK_MODELS = ("lenet", "resnet20", "torchvision:resnet18")


def per_model(cases: list) -> list:
    """Parametrize values of a per-model test (each a model name, or a tuple that starts with
    one), with the models outside QUICK_MODELS marked slow."""
    params = []
    for case in cases:
        values = case if isinstance(case, tuple) else (case,)
        params.append(pytest.param(*values, marks=() if values[0] in QUICK_MODELS else pytest.mark.slow))
    return params


class StopAt:
    """Stops a run after training step `step`, keeping the weights it had then."""

    class Stop(Exception):
        pass

    def __init__(self, step: int):
        self.step, self.records = step, []

    def on_log(self, trainer, record):
        self.records.append(record)
        if record.get("kind") == "step" and record["step"] == self.step:
            self.weights = {k: v.clone() for k, v in trainer.model.state_dict().items()}
            raise StopAt.Stop


def train_until(config, step: int) -> StopAt:
    """Train `config` until step `step`, then stop it as a crash would (StopAt)."""
    import cifarlab

    stop = StopAt(step)
    with pytest.raises(StopAt.Stop):
        cifarlab.train(config, callbacks=[stop], verbose=False)
    return stop


def sure_of_the_pool(teacher: Path, fewest: int, most: int):
    """(threshold, which pool images reach it, their predicted classes): a few-label run's
    model on its unlabelled pool, without TTA, in fp32, and a threshold at the widest gap
    between two neighbouring confidences for which `fewest` to `most` images reach it; far from
    every confidence, so rounding (other batch sizes, shards) moves no image across it."""
    import torch

    from cifarlab.data import make_splits
    from cifarlab.engine.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(teacher, "cpu")
    pool = make_splits(checkpoint.config().data).unlabelled
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in (checkpoint.mean, checkpoint.std))
    with torch.no_grad():
        probabilities = checkpoint.model.eval()((pool.images.float() / 255 - mean) / std).softmax(1)
    confidence, predicted = probabilities.max(1)
    ranked, n = confidence.sort().values, len(confidence)
    gap = int(ranked.diff()[n - most - 1 : n - fewest].argmax()) + n - most - 1  # between ranked[gap] and [gap + 1]
    threshold = float((ranked[gap] + ranked[gap + 1]) / 2)
    sure = confidence >= threshold
    return threshold, sure, predicted[sure]
