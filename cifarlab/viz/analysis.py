"""The numbers behind the report's pictures: a run's test predictions recomputed from its
checkpoint (logits with the run's TTA, penultimate features), confused pairs,
the examples to show, and 2-D embeddings of the features."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..config import Config
from ..data import DeviceLoader, load_split, stratified_indices
from ..engine.calibration import probabilities
from ..engine.checkpoint import Checkpoint
from ..engine.metrics import predict, predict_with_features
from ..engine.inference import checkpoint_loader
from ..engine.runtime import autocast


@dataclass
class Predictions:
    images: torch.Tensor  # uint8 (N, 3, H, W), the test split in file order
    labels: torch.Tensor
    logits: torch.Tensor  # float32, with the run's test-time augmentation (as eval.json)
    features: torch.Tensor | None  # what the classifier layer reads (one view); None without an nn.Linear head
    classes: list[str]
    loader: DeviceLoader  # feeds images to the model as its run's test did
    temperature: float | None = None  # the checkpoint's fitted temperature (None: raw probabilities)

    @property
    def probabilities(self) -> torch.Tensor:
        """What the model's users see: calibrated when a temperature was fitted."""
        return probabilities(self.logits, self.temperature).float()

    @property
    def losses(self) -> torch.Tensor:
        return F.cross_entropy(self.logits, self.labels, reduction="none")


def predict_test_split(checkpoint: Checkpoint, config: Config, device: torch.device) -> Predictions:
    """Run the checkpoint over the test split named by the run's config (one pass that also
    collects the classifier's inputs, plus one with the run's TTA if it used one)."""
    data = load_split(config.data.dataset, "test", config.data.data_dir, download=False)
    loader = checkpoint_loader(checkpoint, config, data, device)
    model, precision, tta = checkpoint.model, autocast(device, config.train.precision), config.train.tta
    logits, labels, features = predict_with_features(model, loader, precision)
    if tta != "none":
        logits, _ = predict(model, loader, tta, precision)
    return Predictions(data.images, labels, logits, features, data.classes, loader, checkpoint.temperature)


def most_confused_pairs(confusion: list[list[int]], classes: list[str], top: int = 10) -> list[dict]:
    """The largest off-diagonal cells: how often a true class was taken for another."""
    matrix = torch.tensor(confusion)
    support = matrix.sum(1)
    off_diagonal = matrix.clone().fill_diagonal_(0).flatten()
    count, index = off_diagonal.topk(min(top, len(off_diagonal)))
    k = len(classes)
    return [
        {"true": classes[i // k], "predicted": classes[i % k], "count": c, "share": c / support[i // k].item()}
        for c, i in zip(count.tolist(), index.tolist())
        if c > 0
    ]


def one_per_class(labels: torch.Tensor, count: int) -> torch.Tensor:
    """The first image of `count` classes spread evenly over the classes present: a fixed set
    that does not depend on the model."""
    present = labels.unique()
    chosen = present[torch.linspace(0, len(present) - 1, min(count, len(present))).round().long()]
    return torch.stack([(labels == c).nonzero()[0, 0] for c in chosen.tolist()])


def top_loss_mistakes(predictions: Predictions, count: int) -> torch.Tensor:
    """Indices of the misclassified images with the highest loss (the most confident errors)."""
    wrong = (predictions.logits.argmax(1) != predictions.labels).nonzero().flatten()
    order = predictions.losses[wrong].argsort(descending=True)
    return wrong[order[:count]]


TSNE_POINTS = 2000  # t-SNE's cost: Barnes-Hut on at most this many points takes seconds on a CPU


def embeddings(features: torch.Tensor, labels: torch.Tensor, seed: int = 0) -> tuple[dict[str, np.ndarray], torch.Tensor]:
    """2-D views of the penultimate features of a stratified sample of at most TSNE_POINTS
    test images: PCA (linear, always cheap) and t-SNE (neighbourhoods; its cost grows with
    the number of points, which the sample bounds). Returns {method: points} and the labels."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    if len(labels) > TSNE_POINTS:
        _, sample = stratified_indices(labels, TSNE_POINTS, seed)
        features, labels = features[sample], labels[sample]
    x = features.double().numpy()
    perplexity = min(30.0, (len(x) - 1) / 3)  # must stay below the number of points
    points = {
        "PCA": PCA(n_components=2, random_state=seed).fit_transform(x),
        "t-SNE": TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x),
    }
    return points, labels
