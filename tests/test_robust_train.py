"""Training that holds up: AugMix's views and Jensen-Shannon loss, Gaussian noise, and FGSM /
PGD adversarial training; each checked on its own, then in short real-data runs that must
train, checkpoint and resume exactly."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

import cifarlab
from cifarlab.config import AugmentConfig, TrainConfig
from cifarlab.data import DeviceLoader, ImageSet, load_split
from cifarlab.data.image_ops import OPS
from cifarlab.data.policies import AugMix
from cifarlab.engine.metrics_log import read_metrics
from cifarlab.robust import EXTRA, STANDARD
from cifarlab.robust.adversarial import Adversary, held_out_check, training_attack
from cifarlab.robust.consistency import jensen_shannon

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
EPS = 8 / 255


@pytest.fixture(scope="module")
def real_images(real_root) -> ImageSet:
    """The first 64 real CIFAR-10 training images."""
    train = load_split("cifar10", "train", str(real_root), download=False)
    return train.subset(torch.arange(64))


def pixels(x: torch.Tensor) -> torch.Tensor:
    """Normalized loader output back to [0, 1] pixels."""
    return x * torch.tensor(STD).view(1, -1, 1, 1) + torch.tensor(MEAN).view(1, -1, 1, 1)


# ----------------------------------------------------------------------------- AugMix + JSD
def test_jensen_shannon_is_zero_for_equal_views_and_positive_otherwise():
    logits = torch.randn(1, 16, 10, generator=torch.Generator().manual_seed(0)) * 3
    assert jensen_shannon(logits.expand(3, -1, -1)).abs() < 1e-6
    other = logits + torch.randn(3, 16, 10, generator=torch.Generator().manual_seed(1))
    value = jensen_shannon(other)
    assert 0 < value < math.log(3)  # JS of three distributions is at most log 3
    # the reference's form (AugMix's cifar.py): the mean of KL(p_i ‖ M) with M clamped at 1e-7
    p = F.softmax(other, -1)
    log_m = p.mean(0).clamp(1e-7, 1).log()
    reference = sum(F.kl_div(log_m, p_i, reduction="batchmean") for p_i in p) / 3
    assert value == pytest.approx(reference.item(), rel=1e-5)
    assert jensen_shannon(other[[2, 0, 1]]) == pytest.approx(value.item(), rel=1e-6)  # symmetric in the views


def test_augmix_ops_leave_out_the_corruption_suite():
    policy = AugMix()
    names = {OPS[i] for i in policy.ops.tolist()}
    assert names == {"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Posterize", "Solarize",
                     "AutoContrast", "Equalize"}  # fmt: skip
    # nothing CIFAR-10-C measures (brightness, contrast, saturate ~ colour, blur ~ sharpness)
    assert not names & {"Brightness", "Color", "Contrast", "Sharpness"}
    assert not {name.lower() for name in names} & set(STANDARD + EXTRA)
    plan = AugMix(width=4, depth=2).draw(500, torch.Generator().manual_seed(0))
    drawn = set(plan[:, 5:].view(500, 4, 2, 2)[..., 0].long().unique().tolist())
    assert drawn <= set(policy.ops.tolist()) | {-1} and -1 in drawn  # depth 1 or 2: some chains end early


def augmix_loader(data: ImageSet, seed: int = 0, views: int = 3, **augment) -> DeviceLoader:
    augment = AugmentConfig(**{"translate": 2, "flip": "random", "policy": "augmix", "noise_sigma": 0.1, **augment})
    return DeviceLoader(data, 16, MEAN, STD, augment, shuffle=True, drop_last=True, seed=seed, channels_last=False,
                        views=views)  # fmt: skip


def test_augmix_views_keep_shape_dtype_range_and_repeat_for_a_seed(real_images):
    images = real_images.images[:16]
    mixed = AugMix().apply(images, AugMix().draw(16, torch.Generator().manual_seed(0)))
    assert mixed.shape == images.shape and mixed.dtype == torch.uint8 and not torch.equal(mixed, images)

    x, y = next(augmix_loader(real_images).epoch(0))
    assert x.shape == (48, 3, 32, 32) and x.dtype == torch.float32 and y.shape == (16,)
    assert pixels(x).min() >= -1e-5 and pixels(x).max() <= 1 + 1e-5
    again, _ = next(augmix_loader(real_images).epoch(0))
    other_seed, _ = next(augmix_loader(real_images, seed=1).epoch(0))
    assert torch.equal(x, again) and not torch.equal(x, other_seed)
    clean, first, second = x.split(16)
    # the clean view is the crop and flip alone: the same as a loader without AugMix and noise
    plain, _ = next(augmix_loader(real_images, views=1, policy="none", noise_sigma=0.0).epoch(0))
    assert torch.equal(clean, plain)
    assert not torch.equal(first, second) and not torch.equal(first, clean)


@pytest.mark.parametrize("policy", ["augmix", "randaugment"])
def test_policy_fraction_spares_images_whole_and_leaves_the_others_as_drawn(real_images, policy):
    def epoch(**augment) -> torch.Tensor:
        loader = augmix_loader(real_images, views=1, **{"policy": policy, "noise_sigma": 0.0, **augment})
        return torch.cat([x for x, _ in loader.epoch(0)])

    plain, everywhere, half = epoch(policy="none"), epoch(), epoch(policy_fraction=0.5)
    spared = (half == plain).flatten(1).all(1)
    as_drawn = (half == everywhere).flatten(1).all(1)
    assert 16 <= spared.sum() <= 48  # about half of the 64, each image whole
    assert (spared | as_drawn).all()  # the rest keep the plan a fraction of 1 draws for them
    assert (everywhere == plain).flatten(1).all(1).sum() < 8  # with a fraction of 1, nearly all change
    assert torch.equal(half, epoch(policy_fraction=0.5)) and torch.equal(everywhere, epoch(policy_fraction=1.0))


def test_noise_has_its_own_sigma_per_image_and_the_same_images_for_any_world_size(real_images):
    indexed = ImageSet(real_images.images, torch.arange(64), [str(i) for i in range(64)])  # labels: which image

    def first_batch(rank=0, world_size=1):
        augment = AugmentConfig(translate=0, flip="none", noise_sigma=0.2)
        loader = DeviceLoader(indexed, 16, MEAN, STD, augment, shuffle=True, drop_last=True, seed=3, rank=rank,
                              world_size=world_size, channels_last=False)  # fmt: skip
        return next(loader.epoch(1))

    x, y = first_batch()
    noise = pixels(x) - indexed.images[y].float() / 255
    assert pixels(x).min() >= -1e-5 and pixels(x).max() <= 1 + 1e-5
    spread = noise.flatten(1).std(1)
    assert spread.max() > 2 * spread.min() and 0.02 < spread.mean() < 0.2  # σ ~ U(0, 0.2), clipped at 0 and 1
    halves = [first_batch(rank, 2) for rank in (0, 1)]
    assert torch.equal(torch.cat([h[0] for h in halves]), x) and torch.equal(torch.cat([h[1] for h in halves]), y)


def test_impulse_noise_sets_a_share_per_image_to_black_or_white_keeps_the_rest_and_leaves_gaussian_draws(real_images):
    def first_batch(rank=0, world_size=1, **augment):
        augment = AugmentConfig(**{"translate": 0, "flip": "none", "policy": "augmix", **augment})
        loader = DeviceLoader(real_images, 16, MEAN, STD, augment, shuffle=True, drop_last=True, seed=3, rank=rank,
                              world_size=world_size, channels_last=False, views=3)  # fmt: skip
        return next(loader.epoch(1))[0]

    plain, salted = first_batch(), first_batch(impulse_amount=0.2)
    clean, *views = salted.split(16)
    assert torch.equal(clean, plain[:16])  # the clean view keeps no noise
    for before, after in zip(plain.split(16)[1:], views):
        changed = ~torch.isclose(before, after, atol=1e-5)
        values = pixels(after)[changed]
        assert torch.isclose(values, torch.tensor(0.0), atol=1e-5).logical_or(
            torch.isclose(values, torch.tensor(1.0), atol=1e-5)).all()  # only salt and pepper
        share = changed.flatten(1).float().mean(1)  # a share U(0, 0.2) per image, less the values already 0 or 1
        assert share.max() < 0.2 and share.max() > 2 * share.min() and 0.04 < share.mean() < 0.16
        salt = torch.isclose(values, torch.tensor(1.0), atol=1e-5).float().mean()
        assert 0.35 < salt < 0.65  # about half salt, half pepper
    # with Gaussian noise too: salt and pepper on top, the Gaussian draws as without it
    both, gaussian = first_batch(noise_sigma=0.1, impulse_amount=0.2), first_batch(noise_sigma=0.1)
    hit = ~torch.isclose(salted, plain, atol=1e-5)
    inside = (pixels(plain) > 1e-3) & (pixels(plain) < 1 - 1e-3)  # a hit on a value already 0 or 1 shows in neither
    assert torch.allclose(torch.where(hit, salted, gaussian)[inside], both[inside], atol=1e-5)
    halves = [first_batch(rank, 2, noise_sigma=0.1, impulse_amount=0.2).split(8) for rank in (0, 1)]
    assert torch.equal(torch.cat([half[view] for view in range(3) for half in halves]), both)


# ----------------------------------------------------------------------------- adversarial training
def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
                         nn.Flatten(), nn.Linear(128, 10))  # fmt: skip


@pytest.mark.parametrize("method, ball, alpha", [("fgsm", EPS, 1.25 * EPS), ("nfgsm", 3 * EPS, EPS),
                                                ("pgd", EPS, EPS / 4)])  # fmt: skip
def test_adversarial_examples_stay_in_the_ball_and_the_image_range(method, ball, alpha, real_images):
    attack = training_attack(TrainConfig(adversarial=method, adversarial_steps=3))
    assert (attack.eps, attack.alpha, attack.random_start) == (pytest.approx(ball), pytest.approx(alpha), True)
    assert training_attack(TrainConfig()) is None
    net = small_net().train()  # BatchNorm on batch statistics while crafting, as in the references
    adversary = Adversary(net, attack, MEAN, STD, seed=0)
    clean = real_images.images.float() / 255
    x = (clean - torch.tensor(MEAN).view(1, -1, 1, 1)) / torch.tensor(STD).view(1, -1, 1, 1)
    y = real_images.labels
    adversarial = adversary(x, y, step=5)
    delta = pixels(adversarial) - clean
    assert delta.abs().max() <= ball + 1e-5 and delta.abs().max() > ball - EPS / 2
    if method == "nfgsm":  # noise of 2ε plus a step of ε, never clipped back to ε
        assert (delta.abs() > 2 * EPS + 1e-5).float().mean() > 0.05
    assert pixels(adversarial).min() >= -1e-5 and pixels(adversarial).max() <= 1 + 1e-5
    assert all(p.grad is None for p in net.parameters())  # crafting leaves no gradient for the training step
    assert torch.equal(adversary(x, y, step=5), adversarial)  # the random start is keyed by the step
    assert not torch.equal(adversary(x, y, step=6), adversarial)
    with torch.no_grad():
        assert F.cross_entropy(net(adversarial), y) > F.cross_entropy(net(x), y)


def test_held_out_check_measures_pgd_in_eval_mode_and_leaves_the_model_as_it_was(real_images):
    net = small_net()
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    x = (real_images.images.float() / 255 - torch.tensor(MEAN).view(1, -1, 1, 1)) / torch.tensor(STD).view(1, -1, 1, 1)
    for _ in range(60):  # learn the 64 images by heart: clean accuracy near 100%
        optimizer.zero_grad()
        F.cross_entropy(net(x), real_images.labels).backward()
        optimizer.step()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        clean = (net.eval()(x).argmax(1) == real_images.labels).double().mean().item()
    net.train()
    check = lambda epoch, eps=EPS: held_out_check(net, real_images, TrainConfig(adversarial_check=48, adversarial_eps=eps),  # noqa: E731
                                                  MEAN, STD, epoch)  # fmt: skip
    robust, checked = check(0)
    assert checked == 48 and clean > 0.9 and robust < clean - 0.2  # an attack, on the first 48 images
    assert check(0) == (robust, 48)  # the random starts are keyed by the epoch
    assert check(0, eps=1e-7)[0] == pytest.approx((net.eval()(x[:48]).argmax(1) == real_images.labels[:48]).double().mean().item())
    assert net.train().training
    check(1)
    assert net.training and all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # eval mode: no BN update


# ----------------------------------------------------------------------------- short real-data runs
FEATURES = {
    "augmix-jsd": ["augment.policy=augmix", "optim.jsd_weight=12"],
    "noise": ["augment.noise_sigma=0.1"],
    "fgsm": ["train.adversarial=fgsm"],
    "nfgsm": ["train.adversarial=nfgsm"],
    "pgd": ["train.adversarial=pgd", "train.adversarial_steps=2"],
}


def tiny_config(root, out, *sets):
    """The fast recipe's parts on a small net, 200 cat and dog images, 4 steps an epoch."""
    return cifarlab.resolve_config("fast", sets=[
        f"data.data_dir={root}", "data.dataset=cifar10:cat,dog", "data.train_subset=200", "data.calib_size=0",
        "model.options.widths=[16, 32, 32]", "train.batch_size=50", "train.epochs=1", "train.log_every=1",
        "train.tta=none", "train.report=false", f"train.out={out}", *sets])  # fmt: skip


def first_loss(run_dir) -> float:
    return next(r for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "step")["train_loss"]


@pytest.fixture(scope="module")
def plain_run(real_root, tmp_path_factory):
    return cifarlab.train(tiny_config(real_root, tmp_path_factory.mktemp("plain") / "run"), verbose=False).dir


@pytest.mark.slow  # a short training run each
@pytest.mark.parametrize("feature", FEATURES)
def test_each_feature_trains_a_short_epoch_and_writes_a_checkpoint(feature, real_root, tmp_path, plain_run):
    run = cifarlab.train(tiny_config(real_root, tmp_path / "run", *FEATURES[feature]), verbose=False)
    assert (run.dir / "checkpoints" / "last" / "model.safetensors").is_file()
    steps = [r for r in read_metrics(run.dir / "metrics.jsonl") if r["kind"] == "step"]
    assert len(steps) == 4 and all(math.isfinite(r["train_loss"]) for r in steps)
    assert json.loads((run.dir / "eval.json").read_text())["num_images"] == 2000
    # the same first batch and weights as the plain run: only the feature changes the first loss
    if feature in ("fgsm", "nfgsm", "pgd"):
        assert first_loss(run.dir) > first_loss(plain_run)  # adversarial images are harder
    else:
        assert first_loss(run.dir) != first_loss(plain_run)


class _Stop(Exception):
    pass


class _StopAtStep:
    """Ends the run at `step`, mid-epoch, after `last` was saved at the step before (as a kill would)."""

    def __init__(self, step: int):
        self.step = step

    def on_log(self, trainer, record):
        if record.get("step") == self.step:
            raise _Stop


@pytest.mark.slow
@pytest.mark.parametrize("feature", ["pgd-noise", "augmix-jsd"])
def test_resume_mid_epoch_is_bit_identical(feature, real_root, tmp_path):
    sets = [*FEATURES["pgd"], *FEATURES["noise"], "data.calib_size=40", "train.adversarial_check=20"] \
        if feature == "pgd-noise" else FEATURES[feature]  # fmt: skip
    sets = [*sets, "train.epochs=2", "train.checkpoint_every=2"]
    whole = cifarlab.train(tiny_config(real_root, tmp_path / "whole", *sets), verbose=False)
    config = tiny_config(real_root, tmp_path / "stopped", *sets)
    with pytest.raises(_Stop):
        cifarlab.train(config, verbose=False, callbacks=[_StopAtStep(7)])  # `last` holds step 6, mid epoch 2
    resumed = cifarlab.train(config, resume=True, verbose=False)
    a, b = (load_file(r.dir / "checkpoints" / "last" / "model.safetensors") for r in (whole, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    timeless = lambda d: [{k: v for k, v in r.items() if k not in ("elapsed", "images_per_s")}  # noqa: E731
                          for r in read_metrics(d / "metrics.jsonl")]  # fmt: skip
    assert timeless(whole.dir) == timeless(resumed.dir)
    if feature == "pgd-noise":  # the held-out PGD check ran after each epoch (and repeated on resume, above)
        checks = [r["held_out_pgd_acc"] for r in read_metrics(whole.dir / "metrics.jsonl") if r["kind"] == "epoch"]
        assert len(checks) == 2 and all(0 <= c <= 1 for c in checks)
