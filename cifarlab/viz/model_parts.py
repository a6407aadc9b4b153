"""The layers worth looking at, found by structure rather than by name, so a newly registered
family works without a table to maintain: the first conv's filters and the last spatial
feature map (what Grad-CAM explains). The classifier layer is engine/metrics.py's: inference
reads its inputs (the penultimate features)."""

from __future__ import annotations

import torch
from torch import nn


def first_layer_filters(model: nn.Module) -> torch.Tensor | None:
    """The first Conv2d's weights that see RGB, as (out, 3, k, k) images in [0, 1] (each filter
    scaled by its own range, so its pattern shows whatever its norm); None if there is none."""
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d) and m.in_channels == 3), None)
    if conv is None:
        return None
    w = conv.weight.detach().float().cpu()
    low = w.amin((1, 2, 3), keepdim=True)
    high = w.amax((1, 2, 3), keepdim=True)
    return (w - low) / (high - low).clamp(min=1e-12)


def cam_layer(model: nn.Module, image: torch.Tensor) -> tuple[str, nn.Module] | None:
    """The module whose output is the last spatial feature map (4-D, more than 1×1) computed in
    a forward pass, i.e. the map that global pooling hands to the head; a model may name its
    own with a `cam_layer` attribute. None when token tensors (3-D) follow that map: a
    transformer's patch embedding is not a map the prediction is read from."""
    if isinstance(getattr(model, "cam_layer", None), nn.Module):
        name = next(n for n, m in model.named_modules() if m is model.cam_layer)
        return name, model.cam_layer
    finished: list[tuple[str, nn.Module, torch.Tensor]] = []  # in the order modules return

    def record(name):
        return lambda module, inputs, output: finished.append((name, module, output))

    hooks = [m.register_forward_hook(record(name)) for name, m in model.named_modules()]
    try:
        with torch.no_grad():
            model(image[:1])
    finally:
        for hook in hooks:
            hook.remove()
    outputs = [(n, m, o) for n, m, o in finished if isinstance(o, torch.Tensor)]
    spatial = [i for i, (_, _, o) in enumerate(outputs) if o.ndim == 4 and o.shape[-1] * o.shape[-2] > 1]
    if not spatial or any(o.ndim == 3 for _, _, o in outputs[spatial[-1] + 1 :]):
        return None
    name, module, _ = outputs[spatial[-1]]
    return name, module
