"""Fine-tuning (transfer learning): adapt a pretrained net (a cifarlab run, torchvision or timm weights, a weights
file) to a new task. A fine-tuning run is an ordinary run whose config has a `finetune`
section; the Trainer builds its model with `build_model`, and everything else (training,
exact resume, eval, predict) is the same code as for training from scratch.

    import cifarlab
    run = cifarlab.finetune("runs/fast90", "cifar100", "full", sets=["train.epochs=16"])
"""

from __future__ import annotations

import dataclasses

from torch import nn

from ..config import Config, FinetuneConfig, resolve, validate
from ..errors import CifarlabError
from ..models import create_model
from .sources import Source, open_source
from .surgery import apply_strategy, depth_groups, fresh_keys, load_source

__all__ = ["Source", "build_model", "depth_groups", "finetune", "finetune_config", "open_source", "with_source"]


def build_model(config: Config, num_classes: int) -> nn.Module:
    """The net a run trains: `create_model` as configured; when fine-tuning, with the source's
    weights in every layer but the fresh head, and the strategy's frozen parameters and
    per-layer optimizer options."""
    model = create_model(config.model.name, num_classes=num_classes, **config.model.options)
    if config.finetune.source is None:
        return model
    source = open_source(config.finetune)
    fresh = fresh_keys(model, num_classes, source.arch, source.options)
    load_source(model, source.read_weights(), fresh, source.label)
    apply_strategy(model, config.finetune, fresh)
    return model


def with_source(config: Config) -> Config:
    """`config` with the model set to the source's architecture (plus the input adaptation of
    the finetune section) and, unless set, the normalization the source was trained with: its
    features expect inputs on that scale, whatever the target images' own statistics."""
    ft = config.finetune
    source = open_source(ft)
    adapt = {k: v for k, v in (("input_size", ft.input_size), ("cifar_stem", ft.cifar_stem)) if v}
    if adapt and ":" not in source.arch:
        raise CifarlabError(
            f"finetune.input_size and finetune.cifar_stem adapt torchvision/timm nets to small images; "
            f"'{source.arch}' is made for them already"
        )
    model = dataclasses.replace(config.model, name=source.arch, options={**source.options, **adapt})
    data = config.data
    if source.mean is not None:
        data = dataclasses.replace(data, mean=data.mean or list(source.mean), std=data.std or list(source.std))
    return validate(dataclasses.replace(config, model=model, data=data))


def default_recipe(source: FinetuneConfig) -> str:
    """airbench nets train with their own parametrization (a scaled-down head, lrs per 1024
    examples, Muon), so they get `finetune-fast`; every other net the conventional `finetune`."""
    return "finetune-fast" if open_source(source).arch == "airbench" else "finetune"


def finetune_config(flags: dict, recipe: str | None = None, config_file: str | None = None, sets=()) -> Config:
    """Resolve a fine-tuning run's config: the recipe (by default the one for the source's
    architecture), then the file, the flags (which name `finetune.source` and `data.dataset`)
    and --set lines, then `with_source`."""
    layered = resolve("finetune", config_file, flags, sets)  # only to read the source settings
    if layered.finetune.source is None:
        raise CifarlabError("fine-tuning needs a source (--from): a run, a checkpoint, torchvision:<model>, ...")
    return with_source(resolve(recipe or default_recipe(layered.finetune), config_file, flags, sets))


def finetune(source: str, target: str, strategy: str | None = None, *, arch: str | None = None,
             labels_per_class: int | None = None, recipe: str | None = None, sets=(), resume: bool = False,
             verbose: bool = True, callbacks=()):  # fmt: skip
    """Fine-tune `source` on `target` (see `cifarlab finetune --help` for both) and test once;
    returns the same `Run` as `cifarlab.train`. `sets` are `key=value` settings, applied last."""
    from ..engine import train

    flags = {"finetune": {"source": str(source), "strategy": strategy, "arch": arch},
             "data": {"dataset": target, "labels_per_class": labels_per_class}}  # fmt: skip
    flags = {section: {k: v for k, v in values.items() if v is not None} for section, values in flags.items()}
    return train(finetune_config(flags, recipe, sets=sets), resume=resume, verbose=verbose, callbacks=callbacks)
