"""Layer sizes that differ from what a builder makes: how a channel-pruned net is rebuilt.

A pruned run saves only `model.resized`, {module path: {size attribute: new value}}, e.g.
`blocks.0.conv1: {out_channels: 9}`; `create_model(..., resized=...)` builds the net as usual
and shrinks those layers, so a pruned checkpoint loads like any other, without pickled
modules or the pruning library. Only the sizes of convolutions, BatchNorm and linear layers
can change: channel pruning changes nothing else in the nets here.
"""

from __future__ import annotations

from torch import nn

from ..errors import CifarlabError

# module type → its size attributes, in the order the YAML shows them
SIZE_ATTRIBUTES: dict[type, tuple[str, ...]] = {
    nn.modules.conv._ConvNd: ("out_channels", "in_channels", "groups"),
    nn.modules.batchnorm._BatchNorm: ("num_features",),
    nn.Linear: ("out_features", "in_features"),
}


def _attributes(module: nn.Module) -> tuple[str, ...]:
    return next((names for kind, names in SIZE_ATTRIBUTES.items() if isinstance(module, kind)), ())


def layer_sizes(model: nn.Module) -> dict[str, dict[str, int]]:
    """The size attributes of every layer that has them, by module path."""
    return {path: {name: getattr(m, name) for name in names}
            for path, m in model.named_modules() if (names := _attributes(m))}  # fmt: skip


def _shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    """The tensor shapes a layer's size attributes imply."""
    if isinstance(module, nn.modules.conv._ConvNd):
        weight = (module.out_channels, module.in_channels // module.groups, *module.kernel_size)
        return {"weight": weight, "bias": (module.out_channels,)}
    if isinstance(module, nn.Linear):
        return {"weight": (module.out_features, module.in_features), "bias": (module.out_features,)}
    n = (module.num_features,)
    return {"weight": n, "bias": n, "running_mean": n, "running_var": n}


def resize_layers(model: nn.Module, resized: dict[str, dict[str, int]]) -> nn.Module:
    """Shrink the named layers of a freshly built `model` in place: each tensor keeps its
    leading part (the builder's initialization, e.g. a Dirac kernel, stays as it was)."""
    sizes = layer_sizes(model)
    for path, changes in resized.items():
        if path not in sizes or not isinstance(changes, dict) or not set(changes) <= set(sizes[path]):
            allowed = ", ".join(sizes.get(path, {})) or "none: it is not a conv, BatchNorm or linear layer of this model"
            raise CifarlabError(f"model.resized.{path}={changes!r} cannot be applied; its sizes are: {allowed}")
        module = model.get_submodule(path)
        for name, value in changes.items():
            if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= sizes[path][name]:
                raise CifarlabError(f"model.resized.{path}.{name}={value!r}: a size between 1 and {sizes[path][name]}")
            setattr(module, name, value)
        for name, shape in _shapes(module).items():
            tensor = getattr(module, name)
            if tensor is None:
                continue
            part = tensor.data[tuple(slice(0, n) for n in shape)].clone()
            if isinstance(tensor, nn.Parameter):
                setattr(module, name, nn.Parameter(part, requires_grad=tensor.requires_grad))
            else:
                setattr(module, name, part)
    return model


def changed_sizes(model: nn.Module, reference: nn.Module) -> dict[str, dict[str, int]]:
    """`model`'s layer sizes that differ from `reference` (the net as built): its `resized`."""
    built = layer_sizes(reference)
    return {path: changed for path, sizes in layer_sizes(model).items()
            if (changed := {k: v for k, v in sizes.items() if built[path][k] != v})}  # fmt: skip


def same_shapes(model: nn.Module, other: nn.Module) -> bool:
    """Whether two nets have the same state-dict keys and tensor shapes."""
    a, b = model.state_dict(), other.state_dict()
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)

