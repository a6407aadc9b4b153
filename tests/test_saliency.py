"""Grad-CAM: on a model whose evidence is known it points at that evidence; it runs for every
registered CNN and declines, with a reason, for models without a spatial feature map."""

import pytest
import torch
from torch import nn

from cifarlab.engine.metrics import classifier_layer
from cifarlab.errors import CifarlabError
from cifarlab.models import create_model, list_models
from cifarlab.viz.model_parts import cam_layer, first_layer_filters
from cifarlab.viz.saliency import grad_cam
from helpers import per_model


class RedDetector(nn.Module):
    """Class 1's score is the average 'redness' (R − G − B, rectified) over the image; class 0's
    is its negative. The evidence for class 1 is exactly where the image is red."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 1, 1), nn.ReLU())
        with torch.no_grad():
            self.features[0].weight.copy_(torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1))
            self.features[0].bias.zero_()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(1, 2)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[-1.0], [1.0]]))
            self.head.bias.zero_()

    def forward(self, x):
        return self.head(self.pool(self.features(x)).flatten(1))


def test_grad_cam_highlights_the_evidence():
    images = torch.full((2, 3, 32, 32), 0.2)
    images[0, 0, 2:10, 3:11] = 1.0  # a red square, top left
    images[1, 0, 20:28, 18:30] = 1.0  # a red bar, bottom right
    model = RedDetector()
    result = grad_cam(model, images, torch.tensor([1, 1]))
    assert result.layer == "features (Sequential)"
    maps = result.maps
    assert maps.shape == (2, 32, 32) and maps.amax((1, 2)).tolist() == [1.0, 1.0] and maps.min() == 0
    for heat, (rows, cols) in zip(maps, [(slice(2, 10), slice(3, 11)), (slice(20, 28), slice(18, 30))]):
        inside = torch.zeros(32, 32, dtype=torch.bool)
        inside[rows, cols] = True
        assert heat[inside].min() == 1.0 and heat[~inside].max() == 0.0  # 1×1 convs: the map is the square


CNN_FAMILIES = {"airbench", "lenet", "resnet18", "resnet20", "simple_cnn"}


def _has_spatial_features_only(model: nn.Module, x: torch.Tensor) -> bool:
    """A CNN in the sense Grad-CAM needs: convolutions, and no token tensors (3-D) anywhere."""
    shapes = []
    hooks = [m.register_forward_hook(lambda m, i, o: shapes.append(getattr(o, "ndim", 0))) for m in model.modules()]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    return any(isinstance(m, nn.Conv2d) for m in model.modules()) and 3 not in shapes


@pytest.mark.parametrize("name", per_model(list_models()))
def test_grad_cam_runs_for_every_registered_cnn(name):
    torch.manual_seed(0)
    model = create_model(name)
    images = torch.randn(3, 3, 32, 32)
    if not _has_spatial_features_only(model, images):
        assert name not in CNN_FAMILIES
        with pytest.raises(CifarlabError, match="Grad-CAM needs a convolutional feature map"):
            grad_cam(model, images, torch.tensor([0, 1, 2]))
        return
    before = {k: v.clone() for k, v in model.state_dict().items()}
    maps = grad_cam(model, images, torch.tensor([0, 1, 2])).maps
    assert maps.shape == (3, 32, 32) and torch.isfinite(maps).all()
    assert maps.min() >= 0 and maps.max() == 1.0  # at least one image has positive evidence somewhere
    assert model.training  # left in the mode it was found in, with BatchNorm statistics untouched
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert first_layer_filters(model).shape[1] == 3 and classifier_layer(model) is not None


def test_cam_layer_is_the_last_spatial_map():
    resnet = create_model("resnet20")
    name, module = cam_layer(resnet, torch.zeros(1, 3, 32, 32))
    assert name == "blocks" and module is resnet.blocks  # the last block's output, before global pooling
    lenet = create_model("lenet")
    assert cam_layer(lenet, torch.zeros(1, 3, 32, 32))[0] == "5"  # the second max-pool: 16 maps of 5×5
