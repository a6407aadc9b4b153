"""Test-time augmentation: the views and their weights, and TTA for only the least sure images."""

import math

import pytest
import torch
import torch.nn.functional as F

from cifarlab.data import load_split
from cifarlab.engine.metrics import tta_logits
from cifarlab.models import create_model


@pytest.fixture(scope="module")
def net_and_images(real_root):
    torch.manual_seed(0)
    net = create_model("simple_cnn", num_classes=10).eval()
    images = load_split("cifar10", "test", real_root).images[:64].float() / 255
    return net, (images - 0.5) / 0.25


def six_views(net, x):
    """flip-translate written out: the image and its mirror (weight 1/4 each), and the
    1-px up-left and down-right reflect-padded shifts, each with its mirror (1/8 each)."""
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    shifts = [padded[..., :32, :32], padded[..., 2:, 2:]]
    views = [(x, 1 / 4), (x.flip(-1), 1 / 4)] + [(v, 1 / 8) for s in shifts for v in (s, s.flip(-1))]
    return sum(weight * net(view) for view, weight in views)


@torch.no_grad()
def test_flip_translate_averages_the_six_views(net_and_images):
    net, x = net_and_images
    torch.testing.assert_close(tta_logits(net, x, "flip-translate"), six_views(net, x))
    torch.testing.assert_close(tta_logits(net, x, "flip"), (net(x) + net(x.flip(-1))) / 2)


@torch.no_grad()
@pytest.mark.parametrize("share", [0.25, 0.5])
def test_a_share_gets_tta_for_its_least_sure_images_only(net_and_images, share):
    net, x = net_and_images
    plain, full = net(x), six_views(net, x)
    logits = tta_logits(net, x, "flip-translate", share)
    top = plain.topk(2, dim=1).values
    unsure = set((top[:, 0] - top[:, 1]).argsort()[: math.ceil(share * len(x))].tolist())
    changed = {i for i in range(len(x)) if not torch.equal(logits[i], plain[i])}
    assert changed == unsure and len(unsure) == math.ceil(share * len(x))
    rows = sorted(unsure)
    torch.testing.assert_close(logits[rows], full[rows])
