"""Fine-tuning (transfer learning): adapt a pretrained net (a cifarlab run, torchvision or timm
weights, a weights file) to a new task. A fine-tuning run is an ordinary run whose config has
a `finetune` section: run.py builds its model with `pretrained_model`, and everything else
(training, exact resume, eval, predict) is the same code as for training from scratch.

    import cifarlab
    run = cifarlab.finetune("runs/fast90", "cifar100", "full", sets=["train.epochs=16"])
"""

from __future__ import annotations

import dataclasses

from torch import nn

from ..config import Config, DataConfig, FinetuneConfig, resolve, validate
from ..errors import CifarlabError
from ..models import create_model
from .sources import Source, open_source
from .surgery import apply_strategy, depth_groups, fresh_keys, keep_zeros, load_source

__all__ = ["Source", "depth_groups", "finetune_config", "open_source", "pretrained_model", "source_normalization",
           "with_source"]


def pretrained_model(config: Config, num_classes: int, source: Source) -> tuple[nn.Module, dict]:
    """The net a fine-tuning run trains: the source's weights in every layer but the fresh
    head (unless kept), the strategy's frozen parameters, and its per-parameter optimizer options."""
    ft = config.finetune
    model = create_model(config.model.name, num_classes, config.model.resized, **config.model.options)
    fresh = fresh_keys(model, num_classes, source.arch, source.options, source.resized, ft.keep_head)
    load_source(model, source.read_weights(), fresh, source.label)
    if ft.keep_zeros:
        keep_zeros(model)
    return model, apply_strategy(model, ft, fresh)


def with_source(config: Config, source: Source) -> Config:
    """`config` with the model set to the source's architecture (plus the input adaptation of
    the finetune section) and, unless set, the normalization the source was trained with: its
    features expect inputs on that scale, whatever the target images' own statistics."""
    ft = config.finetune
    adapt = {k: v for k, v in (("input_size", ft.input_size), ("cifar_stem", ft.cifar_stem)) if v}
    if adapt and ":" not in source.arch:
        raise CifarlabError(
            f"finetune.input_size and finetune.cifar_stem adapt torchvision/timm nets to small images; "
            f"'{source.arch}' is made for them already"
        )
    model = dataclasses.replace(config.model, name=source.arch, options={**source.options, **adapt},
                                resized=source.resized)  # fmt: skip
    data = config.data if source.mean is None else source_normalization(config.data, source.mean, source.std)
    return validate(dataclasses.replace(config, model=model, data=data))


def source_normalization(data: DataConfig, mean, std) -> DataConfig:
    """`data` with the source net's normalization where it gives none: the net's features expect
    inputs on that scale."""
    return dataclasses.replace(data, mean=data.mean or list(mean), std=data.std or list(std))


def default_recipe(source: Source) -> str:
    """airbench nets train with their own parametrization (a scaled-down head, lrs per 1024
    examples, Muon), so they get `finetune-fast`; every other net the conventional `finetune`."""
    return "finetune-fast" if source.arch == "airbench" else "finetune"


def finetune_config(flags: dict, recipe: str | None = None, config_file: str | None = None, sets=()) -> tuple[Config, Source]:
    """A fine-tuning run's config and its opened source: the source named by the flags
    (`finetune.source`, `finetune.arch`) is opened once; then the recipe (by default the one
    for the source's architecture), the file, the flags and --set lines, then `with_source`."""
    named = FinetuneConfig(**{k: v for k, v in flags.get("finetune", {}).items() if k in ("source", "arch")})
    if named.source is None:
        raise CifarlabError("fine-tuning needs a source (--from): a run, a checkpoint, torchvision:<model>, ...")
    source = open_source(named)
    config = resolve(recipe or default_recipe(source), config_file, flags, sets)
    if (config.finetune.source, config.finetune.arch) != (named.source, named.arch):
        raise CifarlabError("name the fine-tuning source with --from (and --arch), not in a config file or --set")
    return with_source(config, source), source
