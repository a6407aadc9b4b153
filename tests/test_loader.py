import pytest
import torch
import torch.nn.functional as F

from cifarlab.config import AugmentConfig
from cifarlab.data import DeviceLoader, ImageSet
from cifarlab.data.augment import AugmentParams, crop_flip, cutout, normalize

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def random_images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def params(dx, dy, flip) -> AugmentParams:
    n = len(dx)
    return AugmentParams(torch.tensor(dx), torch.tensor(dy), torch.tensor(flip), torch.zeros(n, dtype=torch.long),
                         torch.zeros(n, dtype=torch.long))  # fmt: skip


def indexed_set(n: int) -> ImageSet:
    """Labels are the sample ids, so a batch's labels say which images it holds."""
    return ImageSet(random_images(n), torch.arange(n), [str(i) for i in range(n)])


@pytest.mark.parametrize("mode, torch_mode", [("zeros", "constant"), ("reflect", "reflect")])
def test_crop_flip_equals_pad_then_crop_then_flip(mode, torch_mode):
    images = random_images(6)
    dx, dy, flip = [-4, 4, 0, 3, -2, 1], [4, -4, 0, -1, 2, 0], [False, True, False, True, False, True]
    out = crop_flip(images, params(dx, dy, flip), mode)
    padded = F.pad(images.float(), (4, 4, 4, 4), mode=torch_mode).to(torch.uint8)
    for i in range(6):
        expected = padded[i, :, 4 + dy[i] : 36 + dy[i], 4 + dx[i] : 36 + dx[i]]
        if flip[i]:
            expected = expected.flip(-1)
        assert torch.equal(out[i], expected), i
    assert out.dtype == torch.uint8 and out.is_contiguous(memory_format=torch.channels_last)


def test_cutout_zeroes_exactly_the_clipped_square():
    x = torch.ones(2, 3, 32, 32)
    p = params([0, 0], [0, 0], [False, False])
    p.cut_x, p.cut_y = torch.tensor([10, 0]), torch.tensor([20, 31])
    out = cutout(x, p, 8)
    expected = torch.ones(2, 3, 32, 32)
    expected[0, :, 16:24, 6:14] = 0
    expected[1, :, 27:32, 0:4] = 0  # clipped at the bottom-left corner
    assert torch.equal(out, expected)


def test_normalize_values():
    images = torch.tensor([0, 255, 128], dtype=torch.uint8).view(1, 3, 1, 1)
    out = normalize(images, torch.tensor(MEAN), torch.tensor(STD))
    assert torch.allclose(out.flatten(), torch.tensor([-2.0, 2.0, (128 / 255 - 0.5) / 0.25]))


def make_loader(data, seed: int = 0, rank: int = 0, world_size: int = 1, **augment) -> DeviceLoader:
    augment = AugmentConfig(**{"translate": 4, "flip": "random", "cutout": 8, **augment})
    return DeviceLoader(data, 32, MEAN, STD, augment, shuffle=True, drop_last=True, seed=seed, rank=rank,
                        world_size=world_size)  # fmt: skip


def test_loader_is_deterministic_under_a_seed_and_differs_across_seeds():
    data = indexed_set(256)
    a = list(make_loader(data).epoch(1))
    b = list(make_loader(data).epoch(1))
    c = list(make_loader(data, seed=1).epoch(1))
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    assert not torch.equal(a[0][1], c[0][1])
    assert not torch.equal(a[0][1], next(make_loader(data).epoch(2))[1])  # a new order each epoch


def test_augmentation_is_independent_per_sample():
    same = ImageSet(random_images(1).repeat(512, 1, 1, 1), torch.arange(512), ["x"] * 512)
    loader = make_loader(same, cutout=0)
    order, p = loader.epoch_plan(0)
    assert set(p.dx.tolist()) == set(range(-4, 5)) and set(p.dy.tolist()) == set(range(-4, 5))
    assert 0.4 < p.flip.float().mean() < 0.6
    x, _ = next(loader.epoch(0))
    distinct = {tuple(img.flatten()[::97].tolist()) for img in x}
    assert len(distinct) > 25  # 32 copies of one image, nearly all augmented differently


def test_alternating_flip_mirrors_each_image_every_other_epoch():
    loader = make_loader(indexed_set(64), flip="alternating")
    flips = []
    for epoch in range(3):
        order, p = loader.epoch_plan(epoch)
        per_sample = torch.empty(64, dtype=torch.bool)
        per_sample[order] = p.flip
        flips.append(per_sample)
    assert torch.equal(flips[0], ~flips[1]) and torch.equal(flips[0], flips[2])
    assert 0.3 < flips[0].float().mean() < 0.7


def test_every_sample_once_per_epoch_and_resume_mid_epoch():
    loader = make_loader(indexed_set(100), cutout=4)
    batches = list(loader.epoch(3))
    assert len(batches) == len(loader) == 3  # drop_last: 100 // 32
    seen = torch.cat([y for _, y in batches])
    assert len(set(seen.tolist())) == 96
    resumed = list(loader.epoch(3, start_batch=1))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches[1:], resumed))


def test_kept_images_are_the_only_ones_an_epoch_draws():
    data = indexed_set(100)
    loader = make_loader(data)
    kept = torch.tensor([3, 10, 11, 40, 41, 42, 77, 90, 91, 92, 93, 94, 95, 96, 97, 98, 99, 0, 1, 2, 5, 6, 7, 8, 9, 12,
                         13, 14, 15, 16, 17, 18, 19, 20, 21])  # fmt: skip
    flips = loader.flip_base[kept]
    loader.keep(kept)
    batches = list(loader.epoch(2))
    assert len(batches) == len(loader) == loader.batches(35) == 1  # drop_last: 35 // 32
    seen = torch.cat([y for _, y in batches])
    assert set(seen.tolist()) <= set(kept.tolist()) and len(set(seen.tolist())) == 32
    assert torch.equal(loader.images, data.images[kept]) and torch.equal(loader.flip_base, flips)
    loader.keep(kept[:33])  # positions in the whole set, whatever was kept before
    assert torch.equal(loader.images, data.images[kept[:33]])
    loader.keep(None)
    assert torch.equal(loader.images, data.images) and len(loader) == 3


def test_shards_of_ranks_compose_the_single_process_batch():
    data = indexed_set(128)
    whole = list(make_loader(data).epoch(5))
    shards = [list(make_loader(data, rank=r, world_size=4).epoch(5)) for r in range(4)]
    for b, (x, y) in enumerate(whole):
        assert torch.equal(torch.cat([s[b][1] for s in shards]), y)
        assert torch.equal(torch.cat([s[b][0] for s in shards]), x)


def test_output_format_and_eval_loader_keeps_order():
    data = indexed_set(70)
    x, y = next(make_loader(data).epoch(0))
    assert x.dtype == torch.float32 and x.shape == (32, 3, 32, 32)
    assert x.is_contiguous(memory_format=torch.channels_last)
    eval_loader = DeviceLoader(data, 32, MEAN, STD)
    ys = [y for _, y in eval_loader.epoch(0)]
    assert [len(y) for y in ys] == [32, 32, 6] and torch.equal(torch.cat(ys), torch.arange(70))
    x0 = next(eval_loader.epoch(0))[0]
    assert torch.allclose(x0, normalize(data.images[:32], torch.tensor(MEAN), torch.tensor(STD)))


def test_brightness_and_contrast_jitter_shift_and_scale_each_image_by_its_own_draw():
    data = indexed_set(64)

    def first_batch(seed=0, rank=0, world_size=1, **augment):
        loader = DeviceLoader(data, 32, MEAN, STD, AugmentConfig(translate=0, flip="none", **augment), shuffle=True,
                              drop_last=True, seed=seed, rank=rank, world_size=world_size, channels_last=False)  # fmt: skip
        return next(loader.epoch(1))

    plain, y = first_batch()
    brighter, _ = first_batch(brightness=0.2)
    shift = (brighter - plain) * STD[0]  # in pixels of [0, 1] images: one value per image
    per_image = shift.flatten(1)
    assert torch.allclose(per_image, per_image[:, :1].expand_as(per_image), atol=1e-5)
    assert per_image[:, 0].abs().max() <= 0.2 and per_image[:, 0].min() < -0.05 and per_image[:, 0].max() > 0.05
    scaled, _ = first_batch(contrast=0.3)
    scale = (scaled * plain).flatten(1).sum(1) / plain.square().flatten(1).sum(1)  # least squares, per image
    assert torch.allclose(scaled, plain * scale.view(-1, 1, 1, 1), atol=1e-5)  # about the dataset mean (normalized 0)
    assert (scale - 1).abs().max() <= 0.3 and scale.std() > 0.05
    both, _ = first_batch(brightness=0.2, contrast=0.3)
    assert torch.allclose(both, (plain + shift / STD[0]) * scale.view(-1, 1, 1, 1), atol=1e-5)
    assert torch.equal(both, first_batch(brightness=0.2, contrast=0.3)[0])  # a function of the seed
    assert not torch.equal(both, first_batch(seed=1, brightness=0.2, contrast=0.3)[0])
    halves = [first_batch(rank=rank, world_size=2, brightness=0.2, contrast=0.3) for rank in (0, 1)]
    assert torch.equal(torch.cat([h[0] for h in halves]), both) and torch.equal(torch.cat([h[1] for h in halves]), y)
