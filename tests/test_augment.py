"""Batched augmentation with a random draw per image: the ops equal torchvision's image by
image, the policies follow torchvision's tables, every augmentation is deterministic under a
seed and independent per sample, and Mixup/CutMix targets match what was mixed."""

import functools

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode, autoaugment

import cifarlab
from cifarlab.config import AugmentConfig
from cifarlab.data import DeviceLoader, ImageSet, load_split
from cifarlab.data.augment import shrink
from cifarlab.data.image_ops import OPS, apply_ops
from cifarlab.data.policies import AugMix, AutoAugment, RandAugment, TrivialAugmentWide, make_policy
from cifarlab.engine.metrics_log import read_metrics

from helpers import real_data_root

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
POLICIES = {"autoaugment": AutoAugment, "randaugment": RandAugment, "trivialaugment": TrivialAugmentWide, "augmix": AugMix}
# every augmentation as augment settings (crop/flip/cutout have their own tests in test_loader.py)
AUGMENTATIONS = {
    **{name: {"policy": name} for name in POLICIES},
    "random_erasing": {"random_erasing": 1.0},
    "mixup": {"mixup_alpha": 1.0},
    "cutmix": {"cutmix_alpha": 1.0},
    "cutout": {"cutout": 8},
}


@functools.cache
def _photos() -> torch.Tensor:
    root = real_data_root()
    if root is not None:
        return load_split("cifar10", "test", root).images[:128].clone()
    return torch.randint(0, 256, (128, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def photos(n: int) -> torch.Tensor:
    """Real CIFAR-10 test images when present (ops such as equalize need real histograms), else noise."""
    return _photos()[:n]


def reference(image: torch.Tensor, op: int, magnitude: float, interpolation: str = "nearest") -> torch.Tensor:
    """torchvision's own op on one image: what its AutoAugment/RandAugment/... call."""
    if op < 0:
        return image
    return autoaugment._apply_op(image, OPS[op], magnitude, InterpolationMode(interpolation), None)


SPREAD = {"ShearX": 0.99, "ShearY": 0.99, "TranslateX": 32, "TranslateY": 32, "Rotate": 135, "Brightness": 0.99,
          "Color": 0.99, "Contrast": 0.99, "Sharpness": 0.99, "Posterize": 8, "Solarize": 255}  # fmt: skip


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
@pytest.mark.parametrize("op", OPS)
def test_every_op_equals_torchvision_image_by_image(op, interpolation):
    images = photos(24)
    g = torch.Generator().manual_seed(OPS.index(op))
    if op in ("Posterize", "Solarize"):  # torchvision's ranges: bits 0..8, threshold 0..255
        magnitude = torch.randint(0, SPREAD[op] + 1, (24,), generator=g).float()
    else:  # a different magnitude and sign for every image, up to TrivialAugmentWide's widest
        magnitude = (torch.rand(24, generator=g) * 2 - 1) * SPREAD.get(op, 0)
    out = apply_ops(images, torch.full((24,), OPS.index(op)), magnitude, interpolation)
    expected = torch.stack([reference(images[i], OPS.index(op), magnitude[i].item(), interpolation) for i in range(24)])
    assert out.dtype == torch.uint8 and torch.equal(out, expected)
    if op not in ("Identity", "AutoContrast", "Equalize", "Invert"):
        assert len({tuple(img.flatten()[::37].tolist()) for img in out}) > 12  # the magnitudes really differ


@pytest.mark.parametrize("name", ["autoaugment", "randaugment", "trivialaugment"])
def test_policy_applies_its_plan_as_torchvision_would_image_by_image(name):
    policy = make_policy(AugmentConfig(policy=name))
    images = photos(24)
    plan = policy.draw(24, torch.Generator().manual_seed(1))
    out = policy.apply(images, plan)
    for i in range(24):
        expected = images[i]
        for op, magnitude in plan[i].view(-1, 2).tolist():
            expected = reference(expected, int(op), magnitude)
        assert torch.equal(out[i], expected), i


def test_augmix_mixes_its_chains_as_torchvision_does():
    policy = AugMix()
    images = photos(12)
    plan = policy.draw(12, torch.Generator().manual_seed(2))
    out = policy.apply(images, plan)
    weights = plan[:, :4]
    assert torch.allclose(weights.sum(1), torch.ones(12)) and (weights >= 0).all()
    for i in range(12):
        mixed = weights[i, 0] * images[i]
        for chain, steps in enumerate(plan[i, 4:].view(3, 3, 2).tolist()):
            augmented = images[i]
            for op, magnitude in steps:
                augmented = reference(augmented, int(op), magnitude, "bilinear")
            mixed = mixed + weights[i, 1 + chain] * augmented
        assert (out[i].int() - mixed.to(torch.uint8).int()).abs().max() <= 1, i  # float summation order


def test_autoaugment_draws_the_cifar10_sub_policies():
    policy = AutoAugment()
    table = autoaugment.AutoAugment(autoaugment.AutoAugmentPolicy.CIFAR10).policies
    plan = policy.draw(4000, torch.Generator().manual_seed(3)).view(4000, 2, 2)
    ops = plan[..., 0].long()
    allowed = {(OPS.index(a[0]), OPS.index(b[0])) for a, b in table}
    for first, second in ops.tolist():
        assert any((first in (a, -1)) and (second in (b, -1)) for a, b in allowed)
    applied = (ops >= 0).float().mean().item()
    mean_p = sum(p for sub in table for _, p, _ in sub) / 50
    assert abs(applied - mean_p) < 0.03  # each op is applied with its sub-policy's probability
    assert (plan[..., 1] < 0).any() and (plan[..., 1] > 0).any()  # signed magnitudes take both signs


def test_randaugment_and_trivialaugment_use_torchvision_magnitudes():
    ra_space = autoaugment.RandAugment()._augmentation_space(31, (32, 32))
    plan = RandAugment(num_ops=2, magnitude=9).draw(3000, torch.Generator().manual_seed(4)).view(-1, 2)
    assert {OPS[i] for i in plan[:, 0].long().tolist()} == set(ra_space)  # all 14 ops, identity included
    for op, magnitude in plan.tolist():
        values, _ = ra_space[OPS[int(op)]]
        assert abs(magnitude) == (values[9].item() if values.ndim else 0.0)
    ta_space = autoaugment.TrivialAugmentWide()._augmentation_space(31)
    plan = TrivialAugmentWide().draw(6000, torch.Generator().manual_seed(5))
    angles = {abs(magnitude) for op, magnitude in plan.tolist() if OPS[int(op)] == "Rotate"}
    assert angles == set(ta_space["Rotate"][0].tolist())  # every one of the 31 magnitude bins, drawn per image


def loader_for(data: ImageSet, seed: int = 0, **augment) -> DeviceLoader:
    augment = AugmentConfig(translate=0, flip="none", **augment)
    return DeviceLoader(data, 64, MEAN, STD, augment, shuffle=True, drop_last=True, seed=seed)


def identical_images(n: int) -> ImageSet:
    return ImageSet(photos(1).repeat(n, 1, 1, 1), torch.arange(n) % 10, [str(i) for i in range(10)])


@pytest.mark.parametrize("name", AUGMENTATIONS)
def test_deterministic_under_a_seed_and_independent_per_sample(name):
    data = ImageSet(photos(128), torch.arange(128) % 10, [str(i) for i in range(10)])
    first = next(loader_for(data, **AUGMENTATIONS[name]).epoch(0))
    again = next(loader_for(data, **AUGMENTATIONS[name]).epoch(0))
    other = next(loader_for(data, seed=1, **AUGMENTATIONS[name]).epoch(0))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    plain = next(loader_for(data, seed=1).epoch(0))[0]
    assert not torch.equal(other[0], plain)  # it changed the images
    # 64 copies of one image come out in many different ways (one draw for the whole batch, as
    # torchvision's transforms make, would give 1); mixing copies of one image shows in the targets
    x, y = next(loader_for(identical_images(64), **AUGMENTATIONS[name]).epoch(0))
    outcomes = y if name in ("mixup", "cutmix") else x.flatten(1)[:, ::7]
    distinct = len({tuple(row.tolist()) for row in outcomes})
    assert distinct > MIN_DISTINCT.get(name, 52), distinct


# AutoAugment has 25 sub-policies with fixed magnitudes and leaves about a fifth of the images
# untouched; TrivialAugment's identity, autocontrast, equalize and zero-magnitude bins give
# shared outcomes too
MIN_DISTINCT = {"autoaugment": 20, "trivialaugment": 32}


@pytest.mark.parametrize("name", AUGMENTATIONS)
def test_dtype_and_value_range_are_kept(name):
    data = ImageSet(photos(128), torch.arange(128) % 10, [str(i) for i in range(10)])
    x, y = next(loader_for(data, **AUGMENTATIONS[name]).epoch(0))
    assert x.dtype == torch.float32 and x.shape == (64, 3, 32, 32)
    pixels = x * STD[0] + MEAN[0]  # back to [0, 1]
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6
    assert x.is_contiguous(memory_format=torch.channels_last)
    if name in POLICIES:  # the policy itself works on uint8 images and returns them
        policy = make_policy(AugmentConfig(policy=name))
        plan = policy.draw(8, torch.Generator().manual_seed(0))
        out = policy.apply(photos(8), plan)
        assert out.dtype == torch.uint8 and out.shape == (8, 3, 32, 32)


def flat_colours(n: int) -> ImageSet:
    """Image i is one flat grey level and has class i, so a mixed image shows who is in it."""
    levels = torch.arange(n, dtype=torch.uint8) * (255 // n)
    return ImageSet(levels.view(n, 1, 1, 1).expand(n, 3, 32, 32).clone(), torch.arange(n), [str(i) for i in range(n)])


def test_cutmix_targets_equal_the_pasted_area():
    data = flat_colours(64)
    loader = loader_for(data, cutmix_alpha=1.0)
    own = loader.epoch_plan(0)[0][:64]
    x, y = next(loader.epoch(0))
    level = ((x[:, 0] * STD[0] + MEAN[0]) * 255).round()  # (B, H, W) grey levels
    assert y.shape == (64, 64) and torch.allclose(y.sum(1), torch.ones(64))
    for i in range(64):
        for c in (y[i] > 0).nonzero().flatten().tolist():  # each class's weight = its share of the pixels
            assert y[i, c].item() == pytest.approx((level[i] == c * (255 // 64)).float().mean().item(), abs=1e-6)
    pasted = 1 - y[torch.arange(64), own]
    assert 0.1 < pasted.mean() < 0.6 and (pasted > 0).float().mean() > 0.8  # a box per image, about (1 - λ) of it


def test_mixup_blends_pixels_by_the_target_weight():
    data = flat_colours(64)
    x, y = next(loader_for(data, mixup_alpha=0.4).epoch(0))
    level = (x[:, 0] * STD[0] + MEAN[0]) * 255
    assert torch.allclose(y.sum(1), torch.ones(64), atol=1e-6)
    for i in range(64):
        classes = (y[i] > 0).nonzero().flatten().tolist()
        expected = sum(y[i, c].item() * c * (255 // 64) for c in classes)
        assert torch.allclose(level[i], torch.full((32, 32), expected), atol=1e-3)  # the same blend everywhere
    assert len({round(y[i].max().item(), 4) for i in range(64)}) > 50  # a λ per image


def test_resume_and_rank_shards_see_the_same_augmentation():
    data = ImageSet(photos(128), torch.arange(128) % 10, [str(i) for i in range(10)])
    everything = AugmentConfig(translate=4, flip="random", cutout=8, policy="randaugment", random_erasing=0.5,
                               mixup_alpha=0.5, cutmix_alpha=1.0)  # fmt: skip
    whole = list(DeviceLoader(data, 32, MEAN, STD, everything, shuffle=True, drop_last=True, seed=3).epoch(2))
    resumed = list(DeviceLoader(data, 32, MEAN, STD, everything, shuffle=True, drop_last=True, seed=3).epoch(2, 2))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(whole[2:], resumed))
    shards = [list(DeviceLoader(data, 32, MEAN, STD, everything, shuffle=True, drop_last=True, seed=3, rank=r,
                                world_size=2).epoch(2)) for r in range(2)]  # fmt: skip
    for b, (x, y) in enumerate(whole):
        assert torch.equal(torch.cat([s[b][0] for s in shards]), x) and torch.equal(torch.cat([s[b][1] for s in shards]), y)


@pytest.mark.slow
def test_training_with_policy_mixing_and_erasing(synthetic_root, tmp_path):
    config = cifarlab.resolve_config(
        "resnet20",
        sets=[f"data.data_dir={synthetic_root}", f"train.out={tmp_path / 'run'}", "train.epochs=1", "train.batch_size=50",
              "train.log_every=3", "augment.policy=trivialaugment", "augment.mixup_alpha=0.2", "augment.cutmix_alpha=1.0",
              "augment.random_erasing=0.25", "optim.label_smoothing=0.1", "model.options.drop_path=0.1"],
    )  # fmt: skip
    run = cifarlab.train(config, verbose=False)
    steps = [r for r in read_metrics(run.dir / "metrics.jsonl") if "train_acc" in r and "val_acc" not in r]
    assert len(steps) == 3 and all(0 <= r["train_acc"] <= 1 and r["train_loss"] > 0 for r in steps)
    assert 0 <= run.test["accuracy"] <= 1


@pytest.mark.parametrize("side", [16, 24])
def test_shrink_resizes_as_pillow_does_and_keeps_the_layout(side):
    """Antialiased bilinear shrinking, checked channel by channel against Pillow's float resize
    (its own implementation of the same filter: a triangle widened by the scale)."""
    x = (photos(4).float() / 255 - 0.5) / 0.25
    small = shrink(x.contiguous(memory_format=torch.channels_last), side)
    assert small.shape == (4, 3, side, side) and small.is_contiguous(memory_format=torch.channels_last)
    expected = torch.stack([
        torch.stack([torch.from_numpy(np.array(Image.fromarray(channel.numpy()).resize(
            (side, side), Image.Resampling.BILINEAR))) for channel in image]) for image in x
    ])  # fmt: skip
    torch.testing.assert_close(small, expected, atol=1e-4, rtol=0)
