"""`cifarlab lr-find`: the lr range test (engine/lr_range.py) on a recipe as it would train,
written as OUT/lr_find.png and OUT/lr_find.json, with the `--set` line that uses the
suggestion.

The lr on the axis is optim.lr. A recipe whose parameter groups have lrs of their own (`fast`:
the head, the Muon filters) has every group scaled by the same factor as optim.lr, and the
suggested `--set` line scales them all: the test measures one knob, the recipe's lrs as a whole.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ..config import Config, validate
from ..engine.lr_range import LrRange, range_test
from ..engine.runtime import select_device
from ..errors import CifarlabError
from ..fileio import write_json
from ..run import build_trainer


@dataclass
class LrFind:
    result: LrRange
    config: Config
    factor: float | None  # the suggestion as a multiple of the recipe's lrs (None without one)
    sets: list[str]  # the settings that use the suggestion ([] without one)
    folder: Path


def lr_find(config: Config, start: float = 1e-6, end: float = 10.0, steps: int = 100, out: str | None = None) -> LrFind:
    """Run the range test from `config`'s starting point (seeded model, the data-dependent
    init, the training batches with the recipe's augmentation) and write the plot and record
    into `out` (default runs/<recipe>-lr-find)."""
    from ..viz import plots  # matplotlib loads only when a figure is drawn

    config = validate(config)
    if not (math.isfinite(start) and math.isfinite(end) and 0 < start < end):
        raise CifarlabError(f"--start {start:g} and --end {end:g}: give finite lrs with 0 < start < end")
    if steps < 5:
        raise CifarlabError(f"--steps {steps}: the test needs at least 5 steps (100 is usual)")
    if config.optim.lr <= 0:
        raise CifarlabError("optim.lr is 0: the test scales every group's lr by its ratio to optim.lr; set optim.lr > 0")
    folder = Path(out) if out else Path("runs") / f"{config.recipe or 'custom'}-lr-find"
    if folder.exists() and not folder.is_dir():
        raise CifarlabError(f"--out '{folder}' is a file, not a folder; choose another --out")
    trainer = build_trainer(config, folder, select_device(config.train.device), verbose=False)
    trainer.init_from_data()
    result = range_test(trainer, start, end, steps, config.optim.lr)
    factor = result.suggestion / config.optim.lr if result.suggestion is not None else None
    sets = [f"{key}={yaml_number(lr * factor)}" for key, lr in recipe_lrs(config).items()] if factor is not None else []
    found = LrFind(result, config, factor, sets, folder)
    record = {"recipe": config.recipe, "model": config.model.name, "reference": "optim.lr", "start": start, "end": end,
              "steps": steps, "recipe_lrs": recipe_lrs(config), "factor": found.factor, "sets": found.sets,
              **result.to_dict()}  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    plots.save_png(plots.lr_range_curve(record), folder / "lr_find.png")
    write_json(folder / "lr_find.json", _json_safe(record))
    return found


def recipe_lrs(config: Config) -> dict[str, float]:
    """optim.lr and every group's own lr, by their config keys."""
    groups = {f"optim.groups.{role}.lr": options["lr"] for role, options in config.optim.groups.items() if "lr" in options}
    return {"optim.lr": config.optim.lr, **groups}


def yaml_number(value: float) -> str:
    """3 significant digits, spelled so that YAML (and so `--set`) reads a number: 1.0e-05, not 1e-05."""
    text = f"{value:.3g}"
    mantissa, e, exponent = text.partition("e")
    return f"{mantissa}.0e{exponent}" if e and "." not in mantissa else text


def _json_safe(record: dict) -> dict:
    """NaN and infinity (a diverged loss) as null: JSON has no spelling for them."""
    return {k: [_finite_or_none(x) for x in v] if isinstance(v, list) else _finite_or_none(v) for k, v in record.items()}


def _finite_or_none(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value
