"""A sweep's search space: a YAML file of config keys and the distribution each is drawn
from, turned into Optuna distributions and checked in full before any trial runs.

    optim.lr: {loguniform: [0.01, 1.0]}          # low > 0; drawn evenly in log space
    optim.label_smoothing: {uniform: [0.0, 0.2]}
    augment.cutout: {int: [0, 16]}               # whole numbers, both ends included
    train.batch_size: {choice: [64, 128, 256]}

Any key a recipe or `--set` takes works, mapping settings included (`optim.groups.head.lr`).
Every bound and choice is resolved into a config once up front, so an unknown key, a value of
the wrong type or one out of a setting's range is refused before the first trial, not
discovered as failed trials one by one.
"""

from __future__ import annotations

import math
from typing import Callable

from ..config import Config, read_yaml
from ..errors import CifarlabError, import_extra

_optuna = import_extra("optuna.distributions", "tune")
BaseDistribution, CategoricalDistribution = _optuna.BaseDistribution, _optuna.CategoricalDistribution
FloatDistribution, IntDistribution = _optuna.FloatDistribution, _optuna.IntDistribution

KINDS = ("loguniform", "uniform", "int", "choice")
EXAMPLE = "e.g. optim.lr: {loguniform: [0.01, 1.0]}"


def read_space(path: str) -> tuple[dict, dict[str, BaseDistribution]]:
    """(the file's entries as written, the Optuna distribution of each key)."""
    raw = read_yaml(path, "search space file")
    if not isinstance(raw, dict) or not raw:
        raise CifarlabError(f"search space '{path}' holds no settings; give one config key per line, {EXAMPLE}")
    return raw, {str(key): _distribution(path, str(key), spec) for key, spec in raw.items()}


def check_space(path: str, space: dict[str, BaseDistribution], config_for: Callable[[dict], Config]) -> None:
    """Resolve a config with each bound and choice of each key (`config_for` builds one from
    {key: value}), so that the config's own checks name what it refuses."""
    for key, distribution in space.items():
        values = distribution.choices if isinstance(distribution, CategoricalDistribution) else (
            distribution.low, distribution.high)  # fmt: skip
        for value in values:
            try:
                config_for({key: value})
            except CifarlabError as e:
                raise CifarlabError(f"search space '{path}', {key}={value!r}: {e}") from None


def nested(settings: dict) -> dict:
    """{'optim.lr': 0.1, 'optim.groups.head.lr': 2.0} → {'optim': {'lr': 0.1, 'groups': {'head': {'lr': 2.0}}}}:
    one config layer, as `--set` lines would give."""
    layer: dict = {}
    for key, value in settings.items():
        *path, last = key.split(".")
        level = layer
        for part in path:
            level = level.setdefault(part, {})
        level[last] = value
    return layer


def contains(distribution: BaseDistribution, value) -> bool:
    """Whether `value` (e.g. the recipe's own setting) is one the distribution can draw."""
    if isinstance(distribution, CategoricalDistribution):
        return value in distribution.choices
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    whole = not isinstance(distribution, IntDistribution) or float(value).is_integer()
    return whole and distribution.low <= value <= distribution.high


def _distribution(path: str, key: str, spec) -> BaseDistribution:
    where = f"search space '{path}', {key}"
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in KINDS:
        given = ", ".join(map(str, spec)) if isinstance(spec, dict) else repr(spec)
        raise CifarlabError(f"{where}: {given!s} is not a distribution; give one of {', '.join(KINDS)}, {EXAMPLE}")
    (kind, values), = spec.items()
    if kind == "choice":
        if not isinstance(values, list) or len(values) < 2:
            raise CifarlabError(f"{where}: choice needs a list of two or more values, e.g. {{choice: [64, 128, 256]}}")
        if not all(v is None or isinstance(v, (bool, int, float, str)) for v in values) or len(set(map(repr, values))) < len(values):
            raise CifarlabError(f"{where}: choice values must be distinct numbers, strings or booleans (got {values!r})")
        return CategoricalDistribution(values)
    low, high = _bounds(where, kind, values)
    if kind == "int":
        return IntDistribution(int(low), int(high))
    return FloatDistribution(low, high, log=kind == "loguniform")


def _bounds(where: str, kind: str, values) -> tuple[float, float]:
    """[low, high], numbers (YAML reads `1e-5` without a dot as text: taken as the number it spells)."""
    if not isinstance(values, list) or len(values) != 2:
        raise CifarlabError(f"{where}: {kind} needs [low, high], got {values!r}")
    bounds = [_number(v) for v in values]
    if None in bounds or not all(map(math.isfinite, bounds)):
        raise CifarlabError(f"{where}: {kind} needs two finite numbers [low, high], got {values!r}")
    low, high = bounds
    if kind == "int" and not (low.is_integer() and high.is_integer()):
        raise CifarlabError(f"{where}: int needs two whole numbers [low, high], got {values!r}")
    if low >= high:
        raise CifarlabError(f"{where}: the range [{values[0]}, {values[1]}] is empty; give [low, high] with low < high")
    if kind == "loguniform" and low <= 0:
        raise CifarlabError(f"{where}: loguniform needs low > 0 (got {values[0]}); use uniform for a range that includes 0")
    return low, high


def _number(value) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(value) if isinstance(value, str) else None
    except ValueError:
        return None
