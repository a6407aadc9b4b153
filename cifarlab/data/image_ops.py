"""The image operations of AutoAugment, RandAugment, TrivialAugmentWide and AugMix, batched with
one magnitude per image: `apply_ops(images, op, magnitude)` on a uint8 batch (B, 3, H, W), on
its own device.

torchvision's functional ops take one magnitude per call, so a batch would get a single draw.
Here the ops that take a magnitude are written with per-image tensors, following torchvision's
arithmetic step by step (tests/test_augment.py checks every op, image by image, against
torchvision's `_apply_op`, the function its policies call):
- colour ops blend each image with a degenerate version of itself (black, grey, its mean grey,
  its blurred self) by a per-image factor; the degenerate images are torchvision's own;
- geometric ops build one inverse affine matrix per image, in torchvision's pixel convention,
  and resample the whole batch in one `grid_sample`;
- posterize and solarize broadcast a per-image bit mask or threshold.
Ops without a magnitude (autocontrast, equalize, invert) are torchvision's, which work image by
image on a batch already. `apply_ops` groups the images of a batch by op, so a batch costs a
dozen tensor calls, with no Python loop over images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
import torchvision.transforms.v2.functional as TF2

# torchvision's op names; an op is an index into this tuple (-1: no op)
OPS = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast",
       "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize", "Invert")  # fmt: skip


def _inverse_affine(op: str, magnitude: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, 2, 3) matrices mapping output to input pixels, with the origin at the image centre
    (torchvision's convention). Shears pivot on the top-left corner, as torchvision's policies
    (and PIL's) do; rotation is counter-clockwise about the centre; shifts are whole pixels."""
    m = magnitude.double()
    one, zero = torch.ones_like(m), torch.zeros_like(m)
    slope = torch.tan(torch.deg2rad(torch.rad2deg(torch.atan(m))))  # torchvision's round trip through degrees
    shift, angle = -m.trunc(), torch.deg2rad(m)
    rows = {
        "ShearX": [[one, slope, slope * height / 2], [zero, one, zero]],
        "ShearY": [[one, zero, zero], [slope, one, slope * width / 2]],
        "TranslateX": [[one, zero, shift], [zero, one, zero]],
        "TranslateY": [[one, zero, zero], [zero, one, shift]],
        "Rotate": [[angle.cos(), -angle.sin(), zero], [angle.sin(), angle.cos(), zero]],
    }[op]
    return torch.stack([torch.stack(row, -1) for row in rows], 1).float()


def _affine(images: torch.Tensor, inverse: torch.Tensor, mode: str) -> torch.Tensor:
    """Resample each image through its own inverse affine matrix; outside pixels are black."""
    b, _, h, w = images.shape
    xs = torch.linspace(-w * 0.5 + 0.5, w * 0.5 - 0.5, w, device=images.device)
    ys = torch.linspace(-h * 0.5 + 0.5, h * 0.5 - 0.5, h, device=images.device)
    base = torch.stack([xs.expand(h, w), ys[:, None].expand(h, w), torch.ones(h, w, device=images.device)], -1)
    scale = torch.tensor([0.5 * w, 0.5 * h], device=images.device)
    grid = base.view(1, h * w, 3).expand(b, -1, -1).bmm(inverse.transpose(1, 2) / scale).view(b, h, w, 2)
    out = F.grid_sample(images.float(), grid, mode=mode, padding_mode="zeros", align_corners=False)
    return out.round().to(torch.uint8)


def _blend(images: torch.Tensor, degenerate: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """factor·image + (1 − factor)·degenerate, clamped and truncated to uint8 as torchvision does."""
    ratio = factor.double().view(-1, 1, 1, 1)
    return (ratio.float() * images + (1.0 - ratio).float() * degenerate).clamp(0, 255).to(torch.uint8)


def _degenerate(op: str, images: torch.Tensor) -> torch.Tensor:
    if op == "Brightness":
        return torch.zeros_like(images)
    if op == "Color":
        return TF.rgb_to_grayscale(images)
    if op == "Contrast":
        return TF.rgb_to_grayscale(images).float().mean(dim=(-3, -2, -1), keepdim=True)
    return TF.adjust_sharpness(images, 0.0)  # Sharpness: torchvision's blurred image


_GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
_BLENDS = ("Brightness", "Color", "Contrast", "Sharpness")


def _apply_op(op: str, images: torch.Tensor, magnitude: torch.Tensor, interpolation: str) -> torch.Tensor:
    if op in _GEOMETRIC:
        return _affine(images, _inverse_affine(op, magnitude, *images.shape[-2:]), interpolation)
    if op in _BLENDS:
        return _blend(images, _degenerate(op, images), 1.0 + magnitude.double())
    if op == "Posterize":
        keep = (256 - 2 ** (8 - magnitude.long())).to(torch.uint8)
        return images & keep.view(-1, 1, 1, 1)
    if op == "Solarize":
        return torch.where(images >= magnitude.view(-1, 1, 1, 1), 255 - images, images)
    if op == "AutoContrast":
        return TF.autocontrast(images)
    if op == "Equalize":
        return TF2.equalize(images)  # batched; the same result as torchvision's per-image v1 equalize
    if op == "Invert":
        return TF.invert(images)
    return images  # Identity


def apply_ops(
    images: torch.Tensor, op: torch.Tensor, magnitude: torch.Tensor, interpolation: str = "nearest"
) -> torch.Tensor:
    """Apply OPS[op[i]] with magnitude[i] to image i of a uint8 batch (op −1: leave it)."""
    out = images.clone()
    for index in op.unique().tolist():
        if index > 0:  # -1 and 0 (Identity) leave the image as it is
            chosen = (op == index).nonzero().squeeze(1)
            out[chosen] = _apply_op(OPS[index], images[chosen], magnitude[chosen], interpolation)
    return out

