"""Grad-CAM (Selvaraju et al. 2017) through captum: where in the image the evidence for a class is.

The map is the last spatial feature map weighted by the class score's average gradient per
channel, ReLU'd, upsampled to the input size and scaled to [0, 1] per image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from captum.attr import LayerAttribution, LayerGradCam
from torch import nn

from ..errors import CifarlabError
from .model_parts import cam_layer


@dataclass
class SaliencyMaps:
    maps: torch.Tensor  # (N, H, W) in [0, 1], on the CPU
    layer: str  # the module the maps were taken from: 'name (Type)'


def grad_cam(model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> SaliencyMaps:
    """Grad-CAM of `targets` (one class per image) for normalized `images` (N, 3, H, W).

    Raises CifarlabError, with the reason, for a model without a spatial feature map.
    """
    was_training = model.training
    model.eval()
    try:
        found = cam_layer(model, images)
        if found is None:
            raise CifarlabError(
                "Grad-CAM needs a convolutional feature map that the classifier reads; this model turns the "
                "image into tokens (a transformer?), so no saliency maps are drawn for it"
            )
        name, layer = found
        with torch.enable_grad():
            cam = LayerGradCam(model, layer).attribute(images, target=targets, relu_attributions=True)
        cam = LayerAttribution.interpolate(cam.detach().float(), tuple(images.shape[-2:]), interpolate_mode="bilinear")
    finally:
        model.train(was_training)
    cam = cam[:, 0].cpu()  # captum sums over channels: (N, 1, H, W), >= 0 after the ReLU
    peak = cam.flatten(1).amax(1).clamp(min=1e-12)
    return SaliencyMaps(cam / peak[:, None, None], f"{name or 'model'} ({type(layer).__name__})")
