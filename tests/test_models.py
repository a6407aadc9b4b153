import inspect

import pytest
import torch
import torch.nn.functional as F

from cifarlab.cli import main
from cifarlab.errors import CifarlabError
from cifarlab.models import create_model, list_models, model_stats, registry
from cifarlab.models.measure import measure_throughput
from helpers import per_model

# Published parameter counts: model → (the figure as printed, the classes it was counted with,
# its source). ImageNet-published nets are counted with a 1000-class head; their CIFAR stem (a
# 3×3 first conv instead of 7×7, no max-pool) changes the count by under 0.1%.
PUBLISHED = {
    "lenet": ("62,006", 10, "tutorial layers: 456 + 2,416 + 48,120 + 10,164 + 850"),
    "simple_cnn": ("2,175,626", 10, "its layers: 1,792 + 73,856 + 2,097,408 + 2,570"),
    "resnet20": ("0.27M", 10, "He et al. 2016, Table 6"),
    "resnet32": ("0.46M", 10, "He et al. 2016, Table 6"),
    "resnet44": ("0.66M", 10, "He et al. 2016, Table 6"),
    "resnet56": ("0.85M", 10, "He et al. 2016, Table 6"),
    "resnet110": ("1.7M", 10, "He et al. 2016, Table 6 (1,727,962 exactly, as akamaster/pytorch_resnet_cifar10)"),
    "resnet18": ("11,173,962", 10, "kuangliu/pytorch-cifar ResNet18"),
    "resnet34": ("21,797,672", 1000, "torchvision resnet34 (ImageNet)"),
    "resnet50": ("25,557,032", 1000, "torchvision resnet50 (ImageNet)"),
    "resnet101": ("44,549,160", 1000, "torchvision resnet101 (ImageNet)"),
    "preact_resnet18": ("11,171,146", 10, "kuangliu/pytorch-cifar PreActResNet18 (ours adds the paper's final BN: +1,024)"),
    "preact_resnet34": ("21,279,306", 10, "kuangliu/pytorch-cifar-style PreActResNet34 (+1,024 likewise)"),
    "wrn16_4": ("2.7M", 10, "Zagoruyko & Komodakis 2016"),
    "wrn16_8": ("11.0M", 10, "Zagoruyko & Komodakis 2016"),
    "wrn28_10": ("36.5M", 10, "Zagoruyko & Komodakis 2016"),
    "densenet_bc100": ("769,162", 10, "osmr/imgclsmob DenseNet-BC-100 (k=12) CIFAR-10; Huang et al. 2017: 0.8M"),
    "densenet121": ("7,978,856", 1000, "torchvision densenet121 (ImageNet); Huang et al. 2017: 8.0M"),
    "mobilenet_v2": ("2.24M", 10, "chenyaofo/pytorch-cifar-models cifar10_mobilenetv2_x1_0"),
    "shufflenet_v2_x0_5": ("0.35M", 10, "chenyaofo/pytorch-cifar-models cifar10_shufflenetv2_x0_5"),
    "shufflenet_v2_x1_0": ("1.26M", 10, "chenyaofo/pytorch-cifar-models cifar10_shufflenetv2_x1_0"),
    "shufflenet_v2_x1_5": ("2.49M", 10, "chenyaofo/pytorch-cifar-models cifar10_shufflenetv2_x1_5"),
    "shufflenet_v2_x2_0": ("5.37M", 10, "chenyaofo/pytorch-cifar-models cifar10_shufflenetv2_x2_0"),
    "efficientnet_b0": ("5,288,548", 1000, "torchvision efficientnet_b0 (ImageNet); Tan & Le 2019: 5.3M"),
    "vgg11_bn": ("9.76M", 10, "chenyaofo/pytorch-cifar-models cifar10_vgg11_bn (its convs keep a bias BN makes useless)"),
    "vgg13_bn": ("9.94M", 10, "chenyaofo/pytorch-cifar-models cifar10_vgg13_bn"),
    "vgg16_bn": ("15.25M", 10, "chenyaofo/pytorch-cifar-models cifar10_vgg16_bn"),
    "vgg19_bn": ("20.57M", 10, "chenyaofo/pytorch-cifar-models cifar10_vgg19_bn"),
    "convmixer_256_8": ("0.60M", 10, "Borji & Lin 2022 (SplitMixer), CIFAR-10 table: ConvMixer-256/8, p=2, k=5"),
    "vit_lite_7_4": ("3.717M", 10, "Hassani et al. 2021, SHI-Labs/Compact-Transformers README: ViT-Lite-7/4"),
}
UNPUBLISHED = {"airbench"}  # airbench94's net: no parameter count is published for it


def published(figure: str) -> tuple[float, float]:
    """'1.7M' → (1,700,000, tolerance): 1% of the figure, or half a unit of its last printed
    digit when it is rounded more coarsely than that (1.7M covers 1.65M–1.75M)."""
    millions = figure.endswith("M")
    digits = figure.rstrip("M").replace(",", "")
    scale = 1e6 if millions else 1.0
    half_unit = 0.5 * 10 ** -len(digits.partition(".")[2]) * scale if millions else 0.0
    value = float(digits) * scale
    return value, max(0.01 * value, half_unit)


def test_every_model_has_a_published_count():
    ours = {name for name in list_models() if registry._get_builder(name).__module__.startswith("cifarlab.")}
    assert ours - UNPUBLISHED == set(PUBLISHED)


@pytest.mark.parametrize("name", PUBLISHED)
def test_parameter_counts_match_published(name):
    figure, classes, source = PUBLISHED[name]
    with torch.device("meta"):
        params = sum(p.numel() for p in create_model(name, num_classes=classes).parameters())
    value, tolerance = published(figure)
    assert abs(params - value) <= tolerance, f"{name}: {params:,} vs {figure} ({source})"


REGULARIZERS = ("dropout", "attention_dropout", "drop_path")


def regularizers_off(name: str) -> dict:
    return {k: 0.0 for k in REGULARIZERS if k in inspect.signature(registry._get_builder(name)).parameters}


@pytest.mark.parametrize("name", per_model(list_models()))
def test_output_shape_backward_and_memorizing_a_small_batch(name):
    """4 noise images with 4 different labels and a 7-class head: the first step checks the
    output shape and that every trainable parameter gets a gradient; then every model (regularizers off)
    fits the batch to a cross-entropy under 0.05, i.e. 100% train accuracy. Adam at 1e-3 needs
    only a few steps; 4 images keep each step of the biggest nets (WRN-28-10, ResNet-101) small."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, **regularizers_off(name))
    x, y = torch.randn(4, 3, 32, 32), torch.arange(4)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for step in range(100):
        logits = model(x)
        assert logits.shape == (4, 7)
        loss = F.cross_entropy(logits, y)
        if loss < 0.05:
            break
        loss.backward()
        if step == 0:
            assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
        optimizer.step()
        optimizer.zero_grad()
    assert loss < 0.05 and (logits.argmax(1) == y).all(), f"loss {loss.item():.3f} after {step} steps"


def without_zero_weights(model: torch.nn.Module) -> torch.nn.Module:
    """A zero-initialized head (ViT's) outputs zeros whatever happens before it, which would
    hide the randomness under test: such weights get small random values."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1 and not p.any():
                p.normal_(std=0.02)
    return model


@pytest.mark.parametrize(
    "name, option",
    per_model([("resnet20", "drop_path"), ("resnet50", "drop_path"), ("preact_resnet18", "drop_path"), ("wrn16_4", "dropout"),
     ("wrn16_4", "drop_path"), ("densenet_bc100", "dropout"), ("vgg11_bn", "dropout"), ("mobilenet_v2", "dropout"),
     ("efficientnet_b0", "drop_path"), ("vit_lite_7_4", "drop_path"), ("vit_lite_7_4", "attention_dropout")]),
)  # fmt: skip
def test_dropout_and_stochastic_depth_act_in_training_only(name, option):
    torch.manual_seed(0)
    x = torch.randn(4, 3, 32, 32)
    model = without_zero_weights(create_model(name, **{**regularizers_off(name), option: 0.5}))
    assert not torch.equal(model(x), model(x))  # train mode: a new random draw each pass
    model.eval()
    assert torch.equal(model(x), model(x))
    plain = without_zero_weights(create_model(name, **regularizers_off(name)))
    assert torch.equal(plain(x), plain(x))  # and nothing random is left when the option is 0


def test_flops_counted():
    # resnet18 CIFAR: 0.56 GMACs = 1.11 GFLOPs; lenet: 0.65 MMACs; the others: published MACs × 2
    # (chenyaofo/pytorch-cifar-models' table; osmr/imgclsmob for WRN-28-10)
    expected = {"resnet18": 1110.8, "lenet": 1.3, "resnet20": 2 * 40.81, "vgg16_bn": 2 * 313.73,
                "shufflenet_v2_x1_0": 2 * 45.00, "mobilenet_v2": 2 * 87.98, "wrn28_10": 2 * 5246.98}  # fmt: skip
    for name, mflops in expected.items():
        assert model_stats(name).mflops == pytest.approx(mflops, rel=0.01), name


def test_stats_on_the_meta_device_equal_a_real_model():
    assert model_stats("densenet_bc100") == model_stats(create_model("densenet_bc100"))


def test_unknown_model_and_bad_option():
    with pytest.raises(CifarlabError, match="unknown model 'resnet9000'.*lenet"):
        create_model("resnet9000")
    with pytest.raises(CifarlabError, match="bad options for model 'lenet'"):
        create_model("lenet", width=3)
    with pytest.raises(CifarlabError, match="bad options for model 'resnet20'.*drop_pth"):
        create_model("resnet20", drop_pth=0.1)
    with pytest.raises(CifarlabError, match="bad options for model 'wrn16_4'.*between 0 and 1"):
        create_model("wrn16_4", dropout=1.5)


def test_throughput_is_measured_and_the_cli_prints_it(capsys):
    model = create_model("lenet")
    before = [p.clone() for p in model.parameters()]
    speed = measure_throughput(model, batch_size=8, seconds=0.05)
    assert speed.train > 0 and speed.infer > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))  # real training steps ran
    assert main(["models", "lenet", "resnet20"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:3] == ["lenet", "62,006", "1.3"] and lines[2].split()[:2] == ["resnet20", "269,722"]
    assert main(["models", "resnet9000", "--measure"]) == 2
    assert "unknown model 'resnet9000'" in capsys.readouterr().err


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


def test_airbench_contrast_norm_undoes_cifar10c_contrast_and_keeps_colour(real_root):
    from cifarlab.data import load_split
    from cifarlab.robust.suite import corrupt

    images = load_split("cifar10", "test", str(real_root), download=False).images[:32]
    low = torch.from_numpy(corrupt(images.permute(0, 2, 3, 1).numpy(), "contrast", 3, seed=0)).permute(0, 3, 1, 2)
    clean, low = images.float() / 255, low.float() / 255
    torch.manual_seed(0)
    plain = create_model("airbench").eval()
    torch.manual_seed(0)
    normed = create_model("airbench", contrast_norm=True).eval()  # the same weights
    difference = (normed.contrast_normalized(low) - normed.contrast_normalized(clean)).abs().mean()
    assert difference < 0.02  # the uint8 truncation of the corrupted images is all that is left (≈ 0.013)
    out = normed.contrast_normalized(clean)
    assert torch.allclose(out.mean((2, 3)), clean.mean((2, 3)), atol=1e-6)  # per-channel means (colour) kept
    deviations = out - out.mean((2, 3), keepdim=True)
    assert torch.allclose(deviations.square().mean((1, 2, 3)), torch.ones(32), atol=0.02)
    with torch.no_grad():  # the forward pass applies it: the logits barely move, the plain net's do (0.009 vs 0.59)
        shifts = [(net(low) - net(clean)).abs().mean() / net(clean).abs().mean() for net in (plain, normed)]
    assert shifts[1] < shifts[0] / 10, shifts


def test_airbench_activation_is_the_conv_groups_and_an_unknown_one_is_refused():
    x = torch.randn(4, 3, 32, 32)
    torch.manual_seed(0)
    gelu = create_model("airbench").eval()
    torch.manual_seed(0)
    silu = create_model("airbench", activation="silu").eval()  # the same weights
    assert all(torch.equal(a, b) for a, b in zip(gelu.state_dict().values(), silu.state_dict().values()))
    group = silu.groups[0]
    inside = torch.randn(2, 64, 8, 8)
    assert torch.equal(group.activation(inside), F.silu(inside))
    assert not torch.allclose(gelu(x), silu(x))
    with pytest.raises(CifarlabError, match="bad options for model 'airbench'.*unknown activation 'relu6'.*gelu, silu"):
        create_model("airbench", activation="relu6")
