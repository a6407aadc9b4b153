import pytest
import torch

from cifarlab.errors import CifarlabError
from cifarlab.models import create_model, list_models, model_stats

# Published parameter counts (10 classes).
PUBLISHED_PARAMS = {
    "lenet": 62_006,  # 456 + 2,416 + 48,120 + 10,164 + 850
    "simple_cnn": 2_175_626,
    "resnet18": 11_173_962,  # kuangliu/pytorch-cifar
    "resnet20": 269_722,  # He et al. 2016: 0.27M
}


@pytest.mark.parametrize("name", list_models())
def test_shapes_backward_and_head_size(name):
    model = create_model(name, num_classes=7)
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 7)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name, params", PUBLISHED_PARAMS.items())
def test_parameter_counts_match_published(name, params):
    assert model_stats(create_model(name)).params == params


def test_flops_counted():
    # resnet18 CIFAR: 0.56 GMACs = 1.11 GFLOPs; lenet: 0.65 MMACs
    assert model_stats(create_model("resnet18")).mflops == pytest.approx(1110.8, rel=0.01)
    assert model_stats(create_model("lenet")).mflops == pytest.approx(1.3, rel=0.05)


def test_unknown_model_and_bad_option():
    with pytest.raises(CifarlabError, match="unknown model 'resnet9000'.*lenet"):
        create_model("resnet9000")
    with pytest.raises(CifarlabError, match="bad options for model 'lenet'"):
        create_model("lenet", width=3)


def test_airbench_whitening_decorrelates_patches():
    torch.manual_seed(0)
    mixing = torch.randn(3, 3)
    images = torch.einsum("ij,njhw->nihw", mixing, torch.randn(200, 3, 32, 32))  # correlated channels
    images = images + torch.roll(images, 1, dims=-1)  # correlated neighbours
    model = create_model("airbench")
    model.init_from_data(images)
    half = model.whiten.weight[:12]
    out = torch.nn.functional.conv2d(images, half).permute(1, 0, 2, 3).reshape(12, -1)
    covariance = out @ out.T / out.shape[1]
    assert torch.allclose(covariance, torch.eye(12), atol=0.05)
    assert torch.equal(model.whiten.weight[12:], -half)
