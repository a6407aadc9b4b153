"""Pool-based active learning, simulated: the "labels" of the chosen images are the dataset's
own, read instead of asked of a person, so strategies can be compared at equal label counts.

Round 0 trains on `start` images drawn at random (uniformly, with the run's seed: the same
set for every strategy at a seed). Each later round scores the unlabelled pool with the last
round's model (one batched inference pass, no test-time augmentation), adds the `budget`
images the strategy picks, and trains a new model from scratch on all labels so far: the
standard protocol (Sener & Savarese 2018; Beluch et al. 2018), as warm-starting from the
previous round's weights generalizes worse (Ash & Adams, NeurIPS 2020). Every round is an
ordinary run (OUT/round-NN) trained on `data.labelled_indices` = OUT/labelled-NN.json; its
validation and calibration hold-outs, if any, are carved from those labelled images.
OUT/active.json keeps, per round, the labelled count, a hash of the labelled set, the test
accuracy and the time, rewritten after every round.
"""

from __future__ import annotations

import dataclasses
import hashlib
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from ..config import ActiveConfig, Config
from ..data import ImageSet, write_labelled_indices
from ..engine.calibration import probabilities
from ..engine.checkpoint import load_checkpoint
from ..engine.inference import checkpoint_loader
from ..engine.metrics import finite, predict_with_features
from ..engine.runtime import autocast, select_device
from ..engine.trainer import Run
from ..errors import CifarlabError
from ..fileio import read_json, write_json
from .strategies import select

RESULT_FILE = "active.json"


def active_learning(config: Config, settings: ActiveConfig, images: ImageSet, folder: Path,
                    train: Callable[[Config], Run], on_round: Callable[[dict], None] = lambda result: None,
                    verbose: bool = True) -> dict:  # fmt: skip
    """Run every round into `folder` (empty); returns what active.json holds. `images`: the
    training file of `config`'s dataset (`training_file`), which `settings` were validated
    against; `train` trains one round's config into its `train.out` (run.train); `on_round`
    gets the result after each round (to redraw a plot)."""
    labelled = torch.randperm(len(images), generator=torch.Generator().manual_seed(config.train.seed))[: settings.start]
    result = {"strategy": settings.strategy, "start": settings.start, "budget": settings.budget,
              "rounds_planned": settings.rounds, "seed": config.train.seed, "recipe": config.recipe,
              "model": config.model.name, "dataset": config.data.dataset, "training_images": len(images),
              "retrain": "from scratch each round", "rounds": []}  # fmt: skip
    generator = torch.Generator().manual_seed(config.train.seed + 1)
    run, added, pick_seconds = None, settings.start, 0.0
    for n in range(settings.rounds + 1):
        if run is not None:
            start = time.perf_counter()
            chosen = acquire(run, images, labelled, settings, generator)
            pick_seconds = time.perf_counter() - start
            labelled, added = torch.cat([labelled, chosen]), len(chosen)
        labelled_file = folder / f"labelled-{n:02d}.json"
        write_labelled_indices(labelled_file, labelled)
        round_config = dataclasses.replace(
            config, data=dataclasses.replace(config.data, labelled_indices=str(labelled_file.resolve())),
            train=dataclasses.replace(config.train, out=str(folder / f"round-{n:02d}")),
        )  # fmt: skip
        if verbose:
            print(f"active learning ({settings.strategy}) round {n}: {len(labelled)} labelled images")
        run = train(round_config)
        result["rounds"].append({
            "round": n, "labelled": len(labelled), "added": added, "labelled_file": labelled_file.name,
            "labelled_sha256": _digest(labelled), "run": run.dir.name, "test_accuracy": run.test["accuracy"],
            "train_seconds": run.test["train_seconds"], "pick_seconds": pick_seconds,
        })  # fmt: skip
        write_json(folder / RESULT_FILE, result)
        on_round(result)
    return result


def acquire(run: Run, images: ImageSet, labelled: torch.Tensor, settings: ActiveConfig,
            generator: torch.Generator) -> torch.Tensor:  # fmt: skip
    """Positions (in the training file) of the `settings.budget` pool images the strategy
    picks, scored by the round's (best, else last) model; none of them labelled already."""
    unlabelled = torch.ones(len(images), dtype=torch.bool)
    unlabelled[labelled] = False
    pool = unlabelled.nonzero().flatten()
    if settings.strategy == "random":
        return pool[select("random", settings.budget, len(pool), generator=generator)]
    if settings.strategy != "coreset":
        return pool[select(settings.strategy, settings.budget, len(pool), model_outputs(run, images.subset(pool))[0])]
    _, features = model_outputs(run, images.subset(torch.cat([pool, labelled])))
    if features is None:
        raise CifarlabError(f"coreset needs penultimate features, and {run.config.model.name} has no nn.Linear head; "
                            f"choose another strategy")  # fmt: skip
    return pool[select("coreset", settings.budget, len(pool), pool_features=features[: len(pool)],
                       labelled_features=features[len(pool):])]  # fmt: skip


def model_outputs(run: Run, data: ImageSet) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The run's probabilities for `data` (with its fitted temperature, if any) and penultimate
    features, in one batched pass."""
    device = select_device(run.config.train.device)
    checkpoint = load_checkpoint(run.dir, device)
    loader = checkpoint_loader(checkpoint, run.config, data, device)
    logits, _, features = predict_with_features(checkpoint.model, loader, autocast(device, run.config.train.precision))
    return probabilities(finite(logits, run.dir), checkpoint.temperature).float(), features


def _digest(positions: torch.Tensor) -> str:
    """sha256 of the sorted positions as text ("3,17,…"): the same set, the same hash, anywhere."""
    return hashlib.sha256(",".join(map(str, sorted(positions.tolist()))).encode()).hexdigest()


def read_results(paths: list[str | Path]) -> list[dict]:
    """active.json files (or folders holding one), checked enough to plot and summarize."""
    results = []
    for path in map(Path, paths):
        file = path / RESULT_FILE if path.is_dir() else path
        result = read_json(file, "active-learning result")
        rounds = result.get("rounds") if isinstance(result, dict) else None
        if not (isinstance(rounds, list) and rounds and isinstance(result.get("strategy"), str)
                and all(isinstance(r, dict) and _is_round(r) for r in rounds)):  # fmt: skip
            raise CifarlabError(f"'{file}' is not a `cifarlab active` result (a strategy, and rounds of a labelled "
                                f"count and a test accuracy in [0, 1])")  # fmt: skip
        results.append(result)
    return results


def _is_round(record: dict) -> bool:
    """A labelled count (an int > 0) and a test accuracy (a number in [0, 1], so not NaN)."""
    count, accuracy = record.get("labelled"), record.get("test_accuracy")
    return type(count) is int and count > 0 and type(accuracy) in (int, float) and 0 <= accuracy <= 1


def summarize(results: list[dict]) -> dict[str, list[dict]]:
    """Per strategy, per labelled count: mean test accuracy over the results (seeds), its
    sample standard deviation (0 for one result) and how many results it averages."""
    summary: dict[str, list[dict]] = {}
    for strategy in dict.fromkeys(r["strategy"] for r in results):
        by_count: dict[int, list[float]] = {}
        for result in (r for r in results if r["strategy"] == strategy):
            for record in result["rounds"]:
                by_count.setdefault(record["labelled"], []).append(record["test_accuracy"])
        summary[strategy] = [{"labelled": count, "mean": statistics.fmean(values), "n": len(values),
                              "std": statistics.stdev(values) if len(values) > 1 else 0.0}
                             for count, values in sorted(by_count.items())]  # fmt: skip
    return summary
