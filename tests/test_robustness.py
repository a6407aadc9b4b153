"""`cifarlab robustness`: the corruptions against the reference generator's formulas (hendrycks/
robustness, ImageNet-C/create_c/make_cifar_c.py, written out again here per image, with the
libraries it calls), their severities, determinism and cache, and the attacks on a trained net."""

from __future__ import annotations

import ctypes
import json
from io import BytesIO

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cifarlab.cli import main
from cifarlab.data import datasets
from cifarlab.robust import EXTRA, STANDARD, attacks, corruptions, suite
from helpers import write_run_checkpoint

# The reference's constants make these effects not grow with severity: glass blur's first
# three levels only change the blur (0.05 → 0.4 px) of the same shuffle, frost fades the photo
# as the frost grows, elastic_transform's affine part shrinks from severity 1, spatter switches
# from water to mud at 4, and saturate desaturates at 1-2 and saturates at 3-5.
NOT_MONOTONE = {"glass_blur", "frost", "elastic_transform", "spatter", "saturate"}


@pytest.fixture(scope="module")
def test_images(real_root) -> np.ndarray:
    """The first 16 real CIFAR-10 test images, uint8 (N, 32, 32, 3)."""
    return datasets.load_split("cifar10", "test", str(real_root), download=False).images[:16].permute(0, 2, 3, 1).numpy()


def severities(images, name, seed=0):
    return [suite.corrupt(images, name, s, seed) for s in range(1, 6)]


@pytest.mark.parametrize("name", STANDARD + EXTRA)
def test_corruption_keeps_shape_and_dtype_and_repeats_for_a_seed(name, test_images):
    images = test_images[:4]
    first = severities(images, name)
    for out in first:
        assert out.shape == images.shape and out.dtype == np.uint8
        assert (out != images).any()
    assert all(np.array_equal(a, b) for a, b in zip(first, severities(images, name)))
    if name not in {"brightness", "contrast", "saturate", "defocus_blur", "gaussian_blur", "zoom_blur", "pixelate",
                    "jpeg_compression"}:  # fmt: skip  # the random ones: another seed, other images
        assert not np.array_equal(first[4], suite.corrupt(images, name, 5, seed=1))


@pytest.mark.parametrize("name", [n for n in STANDARD + EXTRA if n not in NOT_MONOTONE])
def test_effect_grows_with_severity(name, test_images):
    """Mean absolute difference from the clean images, each severity from the same random
    draws (motion blur's severities 3 and 4 differ only by taps of weight e^-18, so with
    different angles either can come out stronger)."""
    outputs = [corruptions.CORRUPTIONS[name](test_images.copy(), s, np.random.default_rng(0)) for s in range(1, 6)]
    effect = [np.abs(out.astype(float) - test_images).mean() for out in outputs]
    assert effect == sorted(effect) and effect[0] > 0, effect


# ----------------------------------------------------------------------------- the reference's formulas
def assert_close(ours: np.ndarray, reference: np.ndarray, exact_share: float = 1.0) -> None:
    """Equal, or (float round-off before the reference's truncation to uint8) off by one level
    in at most 1 - exact_share of the values."""
    difference = np.abs(ours.astype(int) - np.asarray(reference).astype(int))
    assert difference.max() <= 1 and (difference == 0).mean() >= exact_share, (difference.max(), (difference == 0).mean())


def per_image(function, images, severity):
    return np.stack([np.uint8(function(Image.fromarray(image), severity)) for image in images])


def test_brightness_contrast_saturate_match_the_reference(test_images):
    color = pytest.importorskip("skimage.color")

    def brightness(x, severity):
        x = color.rgb2hsv(np.array(x) / 255.)
        x[:, :, 2] = np.clip(x[:, :, 2] + [.05, .1, .15, .2, .3][severity - 1], 0, 1)
        return np.clip(color.hsv2rgb(x), 0, 1) * 255

    def saturate(x, severity):
        c = [(0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)][severity - 1]
        x = color.rgb2hsv(np.array(x) / 255.)
        x[:, :, 1] = np.clip(x[:, :, 1] * c[0] + c[1], 0, 1)
        return np.clip(color.hsv2rgb(x), 0, 1) * 255

    def contrast(x, severity):
        x = np.array(x) / 255.
        means = np.mean(x, axis=(0, 1), keepdims=True)
        return np.clip((x - means) * [.75, .5, .4, .3, 0.15][severity - 1] + means, 0, 1) * 255

    for name, reference in (("brightness", brightness), ("saturate", saturate), ("contrast", contrast)):
        for severity in range(1, 6):
            assert_close(suite.corrupt(test_images, name, severity, 0), per_image(reference, test_images, severity), 0.999)


def test_pixelate_and_jpeg_match_the_reference(test_images):
    def pixelate(x, severity):
        c = [0.95, 0.9, 0.85, 0.75, 0.65][severity - 1]
        return x.resize((int(32 * c), int(32 * c)), Image.BOX).resize((32, 32), Image.BOX)

    def jpeg(x, severity):
        output = BytesIO()
        x.save(output, "JPEG", quality=[80, 65, 58, 50, 40][severity - 1])
        return Image.open(output)

    for severity in range(1, 6):
        assert_close(suite.corrupt(test_images, "pixelate", severity, 0), per_image(pixelate, test_images, severity))
        assert_close(suite.corrupt(test_images, "jpeg_compression", severity, 0), per_image(jpeg, test_images, severity))


def test_blurs_match_the_reference(test_images):
    filters = pytest.importorskip("skimage.filters")
    cv2 = pytest.importorskip("cv2")
    from scipy.ndimage import zoom as scizoom

    def gaussian_blur(x, severity):
        x = filters.gaussian(np.array(x) / 255., sigma=[.4, .6, 0.7, .8, 1][severity - 1], channel_axis=-1)
        return np.clip(x, 0, 1) * 255

    def disk(radius, alias_blur):
        grid = np.arange(-8, 8 + 1)
        xs, ys = np.meshgrid(grid, grid)
        aliased = np.array((xs ** 2 + ys ** 2) <= radius ** 2, dtype=np.float32)
        aliased /= np.sum(aliased)
        return cv2.GaussianBlur(aliased, ksize=(3, 3), sigmaX=alias_blur)

    def defocus_blur(x, severity):
        c = [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)][severity - 1]
        x = np.array(x) / 255.
        kernel = disk(radius=c[0], alias_blur=c[1])
        channels = np.array([cv2.filter2D(x[:, :, d], -1, kernel) for d in range(3)]).transpose((1, 2, 0))
        return np.clip(channels, 0, 1) * 255

    def clipped_zoom(img, factor):
        h = img.shape[0]
        ch = int(np.ceil(h / factor))
        top = (h - ch) // 2
        img = scizoom(img[top:top + ch, top:top + ch], (factor, factor, 1), order=1)
        trim = (img.shape[0] - h) // 2
        return img[trim:trim + h, trim:trim + h]

    def zoom_blur(x, severity):
        c = [np.arange(1, 1.06, 0.01), np.arange(1, 1.11, 0.01), np.arange(1, 1.16, 0.01),
             np.arange(1, 1.21, 0.01), np.arange(1, 1.26, 0.01)][severity - 1]  # fmt: skip
        x = (np.array(x) / 255.).astype(np.float32)
        out = np.zeros_like(x)
        for factor in c:
            out += clipped_zoom(x, factor)
        return np.clip((x + out) / (len(c) + 1), 0, 1) * 255

    for severity in range(1, 6):
        for name, reference, exact in (("gaussian_blur", gaussian_blur, 0.999), ("defocus_blur", defocus_blur, 0.999),
                                       ("zoom_blur", zoom_blur, 0.999)):  # fmt: skip
            assert_close(suite.corrupt(test_images, name, severity, 0), per_image(reference, test_images, severity), exact)


def test_fog_matches_the_reference_for_the_same_random_stream(test_images):
    """The reference's plasma_fractal with np.random replaced by a Generator: one image at a
    time, our batched version draws the same numbers in the same order."""

    def plasma_fractal(rng, mapsize=32, wibbledecay=3):
        maparray = np.empty((mapsize, mapsize), dtype=np.float64)
        maparray[0, 0] = 0
        stepsize, wibble = mapsize, 100

        def wibbledmean(array):
            return array / 4 + wibble * rng.uniform(-wibble, wibble, array.shape)

        while stepsize >= 2:
            cornerref = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
            squareaccum = cornerref + np.roll(cornerref, shift=-1, axis=0)
            squareaccum += np.roll(squareaccum, shift=-1, axis=1)
            maparray[stepsize // 2:mapsize:stepsize, stepsize // 2:mapsize:stepsize] = wibbledmean(squareaccum)
            drgrid = maparray[stepsize // 2:mapsize:stepsize, stepsize // 2:mapsize:stepsize]
            ulgrid = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
            ltsum = drgrid + np.roll(drgrid, 1, axis=0) + (ulgrid + np.roll(ulgrid, -1, axis=1))
            maparray[0:mapsize:stepsize, stepsize // 2:mapsize:stepsize] = wibbledmean(ltsum)
            ttsum = drgrid + np.roll(drgrid, 1, axis=1) + (ulgrid + np.roll(ulgrid, -1, axis=0))
            maparray[stepsize // 2:mapsize:stepsize, 0:mapsize:stepsize] = wibbledmean(ttsum)
            stepsize //= 2
            wibble /= wibbledecay
        maparray -= maparray.min()
        return maparray / maparray.max()

    def fog(x, severity, rng):
        c = [(.2, 3), (.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)][severity - 1]
        x = np.array(x) / 255.
        max_val = x.max()
        x += c[0] * plasma_fractal(rng, wibbledecay=c[1])[:32, :32][..., np.newaxis]
        return np.clip(x * max_val / (max_val + c[0]), 0, 1) * 255

    for i, image in enumerate(test_images[:6]):
        severity = i % 5 + 1
        ours = corruptions.fog(image[None], severity, np.random.default_rng(i))[0]
        assert_close(ours, np.uint8(fog(image, severity, np.random.default_rng(i))))


def test_motion_blur_matches_imagemagick(test_images):
    """The line kernel against ImageMagick itself, called as the reference calls it."""
    wand_image = pytest.importorskip("wand.image")  # needs Debian's libmagickwand too
    from wand.api import library

    cv2 = pytest.importorskip("cv2")
    library.MagickMotionBlurImage.argtypes = (ctypes.c_void_p, ctypes.c_double, ctypes.c_double, ctypes.c_double)

    def imagemagick(image, radius, sigma, angle):
        png = BytesIO()
        Image.fromarray(image).save(png, format="PNG")
        with wand_image.Image(blob=png.getvalue()) as blurred:
            library.MagickMotionBlurImage(blurred.wand, radius, sigma, angle)
            decoded = cv2.imdecode(np.frombuffer(blurred.make_blob(), np.uint8), cv2.IMREAD_UNCHANGED)
        return decoded[..., [2, 1, 0]] if decoded.ndim == 3 else np.stack([decoded] * 3, -1)

    angles = np.random.default_rng(0).uniform(-135, 45, len(test_images))
    for radius, sigma in ((6, 1), (9, 2.5), (14, 12)):
        ours = corruptions._motion(test_images, radius, sigma, angles)
        reference = np.stack([imagemagick(x, radius, sigma, a) for x, a in zip(test_images, angles)])
        np.testing.assert_array_equal(ours, reference)


# ----------------------------------------------------------------------------- the cache
def test_cache_is_reused_and_a_tampered_file_is_generated_again(test_images, tmp_path):
    images = test_images[:8]
    made = suite.corrupted(images, "gaussian_noise", 0, tmp_path)
    assert not made.cached and made.images.shape == (5, *images.shape)
    (path,) = tmp_path.glob("gaussian_noise-*.npy")
    stamp = path.stat().st_mtime_ns
    again = suite.corrupted(images, "gaussian_noise", 0, tmp_path)
    assert again.cached and path.stat().st_mtime_ns == stamp and np.array_equal(again.images, made.images)

    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # one pixel changed, the file still a valid .npy
    path.write_bytes(bytes(data))
    notes = []
    fixed = suite.corrupted(images, "gaussian_noise", 0, tmp_path, log=notes.append)
    assert not fixed.cached and np.array_equal(fixed.images, made.images)
    assert len(notes) == 1 and "does not match its recorded md5" in notes[0]
    assert suite.corrupted(images, "gaussian_noise", 0, tmp_path).cached


# ----------------------------------------------------------------------------- attacks
@pytest.fixture(scope="module")
def trained_net(real_root):
    """A tiny conv net trained for a few seconds on 2,000 real images (well above chance)."""
    train = datasets.load_split("cifar10", "train", str(real_root), download=False)
    x, y = train.images[:2000].float() / 255, train.labels[:2000]
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4), nn.Flatten(), nn.Linear(1024, 10))
    model = attacks.Normalized(net, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
    optimizer = torch.optim.Adam(model.parameters(), 3e-3)
    for epoch in range(4):
        for i in range(0, 2000, 100):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[i:i + 100]), y[i:i + 100]).backward()
            optimizer.step()
    return model.eval()


def test_pgd_stays_in_the_ball_and_beats_fgsm(trained_net, real_root):
    test = datasets.load_split("cifar10", "test", str(real_root), download=False)
    x, y = test.images[:500].float() / 255, test.labels[:500]

    def accuracy(images):
        with torch.no_grad():
            return (trained_net(images).argmax(1) == y).double().mean().item()

    clean = accuracy(x)
    assert clean > 0.3
    fgsm, pgd, pgd_l2 = attacks.standard_attacks(["fgsm", "pgd", "pgd-l2"], 8 / 255, 0.5)
    generator = torch.Generator().manual_seed(0)
    adversarial = {a.name: attacks.perturb(trained_net, x, y, a, generator) for a in (fgsm, pgd, pgd_l2)}
    for name, images in adversarial.items():
        assert images.min() >= 0 and images.max() <= 1
    assert (adversarial["pgd"] - x).abs().max() <= 8 / 255 + 1e-6
    assert (adversarial["fgsm"] - x).abs().max() <= 8 / 255 + 1e-6
    assert (adversarial["pgd-l2"] - x).flatten(1).norm(dim=1).max() <= 0.5 + 1e-5
    assert accuracy(adversarial["pgd"]) <= accuracy(adversarial["fgsm"]) < clean
    assert accuracy(adversarial["pgd-l2"]) < clean
    # the batched count the command and the training check use: the same images for the same draws
    correct, _ = attacks.robust_accuracy(trained_net, test.images[:500], y, pgd, torch.Generator().manual_seed(1), 500)
    again = attacks.perturb(trained_net, x, y, pgd, torch.Generator().manual_seed(1))
    assert correct == round(accuracy(again) * 500)


# ----------------------------------------------------------------------------- the command
def test_command_writes_json_heatmap_and_report_section(real_root, tmp_path, monkeypatch, capsys):
    from cifarlab.viz.report import _Figures, _read_robustness, _robustness

    monkeypatch.setenv("CIFARLAB_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    write_run_checkpoint(run / "checkpoints" / "best", real_root)
    args = ["robustness", str(run), "--limit", "40", "--corruptions", "contrast,saturate", "--severities", "2-3",
            "--attack", "fgsm"]  # fmt: skip
    assert main(args) == 0
    result = json.loads((run / "robustness.json").read_text())
    assert set(result["corruptions"]) == {"contrast", "saturate"} and list(result["corruptions"]["contrast"]) == ["2", "3"]
    assert result["num_images"] == 40 and set(result["attacks"]) == {"fgsm"}
    summary = result["summary"]
    assert summary["splits"] == 2 and not summary["complete"] and summary["extra_splits"] == 2
    assert summary["mce"] == pytest.approx(1 - summary["mean_corrupted_accuracy"])
    assert (run / "robustness.png").stat().st_size > 0
    assert main(args) == 0 and capsys.readouterr().out.count("(cached)") == 2
    html = _robustness(run, _read_robustness(run), _Figures(tmp_path / "figures"))
    assert 'data-key="robustness/attacks/fgsm"' in html and "robustness.png" in html
