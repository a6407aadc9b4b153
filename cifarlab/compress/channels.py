"""Structured channel pruning on Torch-Pruning's dependency graph (Fang et al. 2023, "DepGraph").

A channel can only go everywhere at once: from the conv that makes it, the BatchNorm that
normalizes it, every layer it feeds, and every other branch of a residual sum or a
concatenation it is part of. torch_pruning traces the net's autograd graph and returns these
couplings as groups. How many channels each group keeps is its allocation: `uniform`, the
same share of every group; or `global`, as many as score highest over the whole net on the
unpruned net's importance, each group's scores divided by their mean to compare across groups
(torch_pruning's global pruning): a layer with many weak channels gives more. Which ones go is
chosen by importance (Taylor: |weight × gradient| on training batches; or the weights' L2
norm), over a few steps, each step's importance scored anew on the net the earlier ones left.

What the tracer cannot map is left whole rather than guessed:
- a group that reaches the traced module's input or output (the image channels, the logits);
- a group that passes through an op not known to keep channel i at position i (the CIFAR
  ResNets' zero-padding "option A" shortcut, a transpose) or through a frozen layer (airbench's
  whitening conv: no training would repair it);
- a module the tracer fails on (ShuffleNetV2's channel shuffle: a view/transpose/view) is
  pruned through its children instead, each with its own input and output channels kept.
"""

from __future__ import annotations

import re
import warnings
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CifarlabError, first_line, import_extra

ROOT_TYPES = (nn.modules.conv._ConvNd, nn.Linear)
# autograd ops (their names without "Backward<n>") that keep channel i at position i; torch_pruning
# treats every op it does not know as one of these
_CHANNELWISE = {
    "Add", "Sub", "Mul", "Div", "Relu", "Gelu", "Silu", "Sigmoid", "Hardtanh", "Hardswish", "Hardsigmoid", "Tanh",
    "LeakyRelu", "Elu", "MaxPool2DWithIndices", "AvgPool2D", "AdaptiveAvgPool2D", "AdaptiveMaxPool2D", "Mean", "Clone",
}  # fmt: skip
_OF_WEIGHTS = {"T"}  # ops the graph shows on a weight (F.linear's transpose), harmless where they have no input


class _Marked(nn.Module):
    """`unit` between two no-op multiplications, whose autograd nodes mark its input and output
    in the traced graph."""

    def __init__(self, unit: nn.Module):
        super().__init__()
        self.unit = unit
        self.marks = ()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().requires_grad_() * 1.0
        y = self.unit(x) * 1.0
        self.marks = (x.grad_fn, y.grad_fn)
        return y


class _Unit:
    """One traced module and the groups of coupled channels that can be pruned in it."""

    def __init__(self, module: nn.Module, example: torch.Tensor):
        tp = import_extra("torch_pruning")
        marked = _Marked(module)
        with warnings.catch_warnings():  # e.g. "unknown op, handled as element-wise": judged below instead
            warnings.simplefilter("ignore")
            self.graph = tp.DependencyGraph().build_dependency(marked, example, verbose=False)
        marks = {node for node in self.graph.module2node.values() if node.grad_fn in marked.marks}
        self.kept: list[nn.Module] = []  # the layers of groups left whole
        self.channels: dict[nn.Module, int] = {}  # root layer of each prunable group → its channels at the start
        for group in self.graph.get_all_groups(root_module_types=ROOT_TYPES):
            if _is_prunable(group, marks, tp.ops.OPTYPE.ELEMENTWISE):
                self.channels[group[0].dep.target.module] = len(group[0].idxs)
            else:
                self.kept += [dep.target.module for dep, _ in group if self.graph.is_out_channel_pruning_fn(dep.handler)]

    def groups(self):
        """(root layer, group) of every prunable group, as the net is now."""
        for group in self.graph.get_all_groups(ignored_layers=self.kept, root_module_types=ROOT_TYPES):
            yield group[0].dep.target.module, group

    def prune(self, sizes: dict[nn.Module, int], importance: Callable) -> None:
        """Leave each group the channels `sizes` gives its root layer, dropping the least
        important. Every group is scored first: pruning one changes the index maps of others."""
        plan = []
        for root, group in self.groups():
            scores = importance(group)
            drop = len(group[0].idxs) - sizes[root]
            if scores is not None and drop > 0:
                plan.append((root, group[0].dep.handler, scores.argsort()[:drop].tolist()))
        for root, handler, idxs in plan:
            self.graph.get_pruning_group(root, handler, idxs).prune()


def _is_prunable(group, marks: set, elementwise) -> bool:
    for dep, _ in group:
        layer = dep.target.module
        if isinstance(layer, ROOT_TYPES) and not layer.weight.requires_grad:
            return False
        for node in (dep.source, dep.target):
            if node in marks or (node.type == elementwise and not _keeps_channels(node)):
                return False
    return True


def _keeps_channels(node) -> bool:
    name = _op_name(node.grad_fn)
    return name in _CHANNELWISE or (name in _OF_WEIGHTS and not node.inputs)


def _op_name(grad_fn) -> str:
    return re.sub(r"Backward\d*$", "", grad_fn.name()) if hasattr(grad_fn, "name") else ""


def _units(module: nn.Module, example: torch.Tensor) -> list[_Unit]:
    """`module` as one unit, or, where torch_pruning cannot trace it, the units of its children."""
    try:
        return [_Unit(module, example)]
    except CifarlabError:
        raise
    except Exception:  # noqa: BLE001 - the tracer fails in many ways on what it cannot follow
        pass
    inputs: dict[nn.Module, torch.Tensor] = {}

    def record(child: nn.Module, args: tuple) -> None:
        inputs.setdefault(child, args[0])

    hooks = [child.register_forward_pre_hook(record) for child in module.children()]
    try:
        with torch.no_grad():
            module(example)
    finally:
        for hook in hooks:
            hook.remove()
    return [unit for child, x in inputs.items() if next(child.parameters(), None) is not None for unit in _units(child, x)]


ALLOCATIONS = ("uniform", "global")  # uniform: prune_channels with a share; global: with kept_channels' counts


def channel_scores(model: nn.Module, example: torch.Tensor, batches: Iterable | None = None) -> dict[str, torch.Tensor]:
    """Each prunable group's channel importance, by its root layer's name, divided by its mean:
    Taylor's on the gradients of `batches` ((images, labels) pairs) when given, else the
    weights' L2 norm. `example` is one input batch, for tracing."""
    importance = _importance(batches is not None)
    names = {module: name for name, module in model.named_modules()}
    with _scoring(model):
        units = _prunable_units(model, example)
        if batches is not None:
            _accumulate_gradients(model, batches)
        scored = ((names[root], importance(group)) for unit in units for root, group in unit.groups())
        return {name: s.detach().cpu().nan_to_num(0.0) for name, s in scored if s is not None}  # 0/0: a group all 0


def kept_channels(scores: dict[str, torch.Tensor], amount: float) -> dict[str, int]:
    """How many channels each group keeps when the `amount` share of all of them with the lowest
    scores go (ties broken by position; at least one stays in each group)."""
    pooled = torch.cat(list(scores.values()))
    dropped = torch.zeros(len(pooled), dtype=torch.long)
    dropped[pooled.argsort(stable=True)[: int(len(pooled) * amount + 1e-9)]] = 1
    counts = dropped.split([len(s) for s in scores.values()])
    return {name: max(1, len(s) - int(c.sum())) for (name, s), c in zip(scores.items(), counts)}


def prune_channels(model: nn.Module, example: torch.Tensor, amount: float | dict[str, int], steps: int = 1,
                   batches: Callable[[int], Iterable] | None = None) -> None:  # fmt: skip
    """Prune `model` in place, in `steps` equal steps: `amount` of every group's channels (a
    share), or down to the channels `amount` gives each group by root layer name (as
    `kept_channels` gives; a group it does not name stays whole). With `batches` (step →
    (images, labels) batches) the importance is Taylor's, on gradients of those batches;
    without, the weights' L2 norm."""
    importance = _importance(batches is not None)
    with _scoring(model):
        units = _prunable_units(model, example)
        start = {root: n for unit in units for root, n in unit.channels.items()}
        final = None
        if isinstance(amount, dict):
            final = {root: amount.get(name, start[root]) for name, root in model.named_modules() if root in start}

        def size(root: nn.Module, n: int, step: int) -> int:
            if final is None:
                return _uniform(n, amount * step / steps)
            return n - round((n - final[root]) * step / steps)  # reaches final[root] at the last step

        for step in range(1, steps + 1):
            if batches:
                _accumulate_gradients(model, batches(step))
            sizes = {root: size(root, n, step) for root, n in start.items()}
            for unit in units:
                unit.prune(sizes, importance)


def _uniform(channels: int, amount: float) -> int:
    return max(1, int(channels * (1 - amount) + 1e-9))


def _prunable_units(model: nn.Module, example: torch.Tensor) -> list[_Unit]:
    """The units with channels to remove; traced in eval mode (see _scoring)."""
    units = [unit for unit in _units(model, example) if unit.channels]
    if not units:
        raise CifarlabError("channel pruning finds no group of channels it can remove in this net")
    return units


def _importance(taylor: bool):
    tp = import_extra("torch_pruning")
    kind = tp.importance.GroupTaylorImportance if taylor else tp.importance.GroupMagnitudeImportance
    return kind(normalizer="mean")  # each group's scores over their mean: kept_channels compares groups


@contextmanager
def _scoring(model: nn.Module) -> Iterator[None]:
    """Eval mode (tracing and gradients with BatchNorm's running statistics, which stay as they
    are), gradients cleared after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)


def _accumulate_gradients(model: nn.Module, batches: Iterable) -> None:
    model.zero_grad(set_to_none=True)
    for x, y in batches:
        F.cross_entropy(model(x), y).backward()


def check_forward(model: nn.Module, example: torch.Tensor, shape: torch.Size) -> None:
    """The pruned net must still map the example to outputs of the original shape."""
    try:
        with torch.no_grad():
            out = model(example)
    except Exception as e:  # noqa: BLE001 - what broke inside the net is for the message
        raise CifarlabError(f"the pruned net no longer runs ({type(e).__name__}: {first_line(e)})") from None
    if out.shape != shape:
        raise CifarlabError(f"the pruned net gives outputs of shape {tuple(out.shape)}, not {tuple(shape)}")
