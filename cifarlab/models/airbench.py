"""The airbench net (Jordan 2024, "94% on CIFAR-10 in 3.29 seconds on a single GPU",
arXiv 2404.00498; code KellerJordan/cifar10-airbench), rebuilt as a registry model.

A VGG-like net: a frozen 2×2 patch-whitening conv, then three groups of
conv → max-pool → BatchNorm → GELU → conv → BatchNorm → GELU, a 3×3 max-pool and a linear
head. Each choice is there for speed of learning:
- whitening: the first conv's filters are the eigenvectors of 2×2 training patches, scaled
  to unit variance (±), so the net starts from decorrelated inputs; frozen, only its bias
  trains (and only early, see the `fast` recipe);
- identity (Dirac) init of the 3×3 convs: each starts as a pass-through of its first input
  channels, an implicit residual path that deep nets without skip connections lack;
- BatchNorm with frozen scale (γ = 1; only the bias learns, at a high rate) and a low
  statistics momentum, so running statistics track the fast-moving weights;
- logits scaled down (`head_scale`), which keeps the initial softmax near uniform; with
  `head_init_std` the head's weights are drawn at that scale instead (airbench94_muon's
  form: std 1, scale 1/256 — the same initial logits, but a different lr geometry).

`contrast_norm` (off by default) adds global contrast normalization in front (Goodfellow et
al. 2013 used it on CIFAR-10 before ZCA whitening): each image's deviations from its own
per-channel means are scaled to unit standard deviation, the means kept. A contrast change
about those means (CIFAR-10-C's contrast corruption is exactly that) then leaves the input
unchanged; brightness and colour stay visible.

`activation` is the conv groups' nonlinearity: GELU (airbench's), or SiLU (the later
hiverge/cifar10-speedrun record's); the GELU after the whitening conv stays either way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_model


class _FrozenScaleBatchNorm(nn.BatchNorm2d):
    def __init__(self, channels: int, stat_momentum: float = 0.6):
        super().__init__(channels, eps=1e-12, momentum=1 - stat_momentum)
        self.weight.requires_grad = False


class _DiracConv(nn.Conv2d):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, 3, padding="same", bias=False)
        nn.init.dirac_(self.weight.data[:in_channels])


ACTIVATIONS = {"gelu": F.gelu, "silu": F.silu}


class ConvGroup(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stat_momentum: float, activation: str):
        super().__init__()
        self.conv1 = _DiracConv(in_channels, out_channels)
        self.norm1 = _FrozenScaleBatchNorm(out_channels, stat_momentum)
        self.conv2 = _DiracConv(out_channels, out_channels)
        self.norm2 = _FrozenScaleBatchNorm(out_channels, stat_momentum)
        self.activation = ACTIVATIONS[activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.activation(self.norm1(F.max_pool2d(self.conv1(x), 2)))
        return self.activation(self.norm2(self.conv2(x)))


class AirbenchNet(nn.Module):
    param_roles = {"whiten.bias": "whiten_bias"}  # its own lr schedule in the `fast` recipe

    def __init__(
        self,
        num_classes: int = 10,
        widths: tuple[int, int, int] = (64, 256, 256),
        whiten_kernel: int = 2,
        stat_momentum: float = 0.6,
        head_scale: float = 1 / 9,
        head_init_std: float | None = None,
        whitening: bool = True,
        contrast_norm: bool = False,
        activation: str = "gelu",
    ):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation '{activation}'; choose one of: {', '.join(ACTIVATIONS)}")
        self.contrast_norm = contrast_norm
        whiten_width = 2 * 3 * whiten_kernel**2
        self.whiten = nn.Conv2d(3, whiten_width, whiten_kernel, bias=True)
        self.whiten.weight.requires_grad = not whitening  # without whitening: an ordinary trainable conv
        self.whitening = whitening
        nn.init.zeros_(self.whiten.bias)
        groups, in_channels = [], whiten_width
        for width in widths:
            groups.append(ConvGroup(in_channels, width, stat_momentum, activation))
            in_channels = width
        self.groups = nn.Sequential(*groups)
        self.head = nn.Linear(in_channels, num_classes, bias=False)
        if head_init_std is not None:
            with torch.no_grad():
                self.head.weight.mul_(head_init_std / self.head.weight.std())
        self.head_scale = head_scale

    def contrast_normalized(self, x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
        """The input as the whitening conv sees it: with contrast_norm, contrast-normalized."""
        if not self.contrast_norm:
            return x
        means = x.mean((2, 3), keepdim=True)
        deviations = x - means
        return deviations / (deviations.square().mean((1, 2, 3), keepdim=True) + eps).sqrt() + means

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.groups(F.gelu(self.whiten(self.contrast_normalized(x))))
        x = F.adaptive_max_pool2d(x, 1).flatten(1)  # the 3×3 map left after three pools
        return self.head(x) * self.head_scale

    @torch.no_grad()
    def init_from_data(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the whitening filters from normalized training images (N, 3, H, W):
        eigenvectors of the patch covariance, scaled by 1/sqrt(eigenvalue + eps), with their
        negatives (so GELU keeps both signs of every whitened direction)."""
        if not self.whitening:
            return
        c, (h, w) = images.shape[1], self.whiten.weight.shape[2:]
        inputs = self.contrast_normalized(images.float())
        patches = inputs.unfold(2, h, 1).unfold(3, w, 1).transpose(1, 3).reshape(-1, c * h * w)
        covariance = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        filters = (eigenvectors.T / torch.sqrt(eigenvalues + eps)[:, None]).reshape(-1, c, h, w)
        self.whiten.weight.copy_(torch.cat([filters, -filters]))


@register_model
def airbench(num_classes: int = 10, widths: list[int] = (64, 256, 256), **options) -> nn.Module:
    """airbench94's net: 2×2 whitening conv, 3 conv groups 64/256/256, frozen-scale BN (1.97M)."""
    return AirbenchNet(num_classes, tuple(widths), **options)
