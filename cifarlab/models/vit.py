"""A small vision transformer for 32×32 images: ViT-Lite-7/4 (Hassani et al. 2021, "Escaping
the Big Data Paradigm with Compact Transformers"): 4×4 patches (64 tokens and a class token),
7 pre-norm encoder layers of width 256 with 4 heads and an MLP of 512, learned position
embeddings — the same sizes as a CNN of a few million parameters, to compare attention with
convolution on the same data.

torchvision's VisionTransformer fits as it is: it takes any image and patch size (32 and 4
here), and has dropout and attention dropout. What it lacks is stochastic depth, which
small-data ViT recipes (CCT's, DeiT's) depend on; its encoder blocks are therefore swapped for
a subclass that drops the two residual branches per sample. The weights keep torchvision's
names and initialization. (CCT's own ViT-Lite differs in small details of its blocks: no
bias in the qkv projection and an extra LayerNorm after attention.)
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.models.vision_transformer import EncoderBlock, VisionTransformer
from torchvision.ops import StochasticDepth

from .blocks import drop_path_rates
from .registry import register_model


class _DropPathEncoderBlock(EncoderBlock):
    """torchvision's pre-norm encoder block with stochastic depth on both residual branches."""

    def __init__(self, num_heads: int, hidden_dim: int, mlp_dim: int, dropout: float, attention_dropout: float,
                 drop_path: float):  # fmt: skip
        super().__init__(num_heads, hidden_dim, mlp_dim, dropout, attention_dropout)
        self.drop_path = StochasticDepth(drop_path, "row")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        y, _ = self.self_attention(y, y, y, need_weights=False)
        x = x + self.drop_path(self.dropout(y))
        return x + self.drop_path(self.mlp(self.ln_2(x)))


def _vit(layers: int, heads: int, width: int, mlp_width: int, patch_size: int, num_classes: int, dropout: float,
         attention_dropout: float, drop_path: float) -> nn.Module:  # fmt: skip
    model = VisionTransformer(32, patch_size, layers, heads, width, mlp_width, dropout, attention_dropout, num_classes)
    blocks = [_DropPathEncoderBlock(heads, width, mlp_width, dropout, attention_dropout, rate)
              for rate in drop_path_rates(drop_path, layers)]  # fmt: skip
    model.encoder.layers = nn.Sequential(OrderedDict((f"encoder_layer_{i}", b) for i, b in enumerate(blocks)))
    return model


@register_model
def vit_lite_7_4(
    num_classes: int = 10, dropout: float = 0.0, attention_dropout: float = 0.1, drop_path: float = 0.1
) -> nn.Module:
    """ViT-Lite-7/4: 4×4 patches, 7 encoder layers, width 256, 4 heads, MLP 512 (3.72M)."""
    return _vit(7, 4, 256, 512, 4, num_classes, dropout, attention_dropout, drop_path)
