"""The 19 CIFAR-10-C corruptions (Hendrycks & Dietterich, ICLR 2019), on batches.

Each function maps uint8 images (N, 32, 32, 3) to corrupted uint8 images of the same shape,
with the CIFAR constants and the algorithms of the reference generator
(`ImageNet-C/create_c/make_cifar_c.py` in hendrycks/robustness), re-implemented for a
batch at a time and drawing from a `numpy.random.Generator` instead of the global stream.
Its last step, `np.uint8(...)` of a float in [0, 255], truncates; so does `_pixels`.

Where the reference calls a library, the same library does the work (scipy.ndimage for
Gaussian filters, zooms and coordinate maps; OpenCV for the defocus disk, frost textures,
spatter and the elastic warp; Pillow for JPEG and pixelate), batched where the call allows.
Two departures, both checked in tests/test_robustness.py:
- motion blur and the snow streaks: ImageMagick's motion blur re-implemented (motion.py);
- glass blur: the reference's pixel "swap" (`x[h, w], x[h', w'] = x[h', w'], x[h, w]` on
  numpy views) only copies the neighbour into (h, w); its scan runs bottom-right to top-left
  and the neighbour is never below or right of (h, w), so every pixel is read before it is
  written and one gather per iteration gives the same image.
Frost uses the reference's own texture photos, shipped by the `imagecorruptions` package.

Cost of all 5 severities of the 10,000 test images, alone on the 2-core development CPU
(AMD EPYC), from the `cifarlab robustness runs/fast --attack none` run kept in
benchmarks/results/robustness-fast.json (each run records its own figures there): 302 s for
all 19, besides 79-94 s to evaluate each corruption's 50,000 images with the `fast` net:

    gaussian_noise 9 s, shot_noise 16 s, impulse_noise 4 s, defocus_blur 3 s, glass_blur 9 s
    motion_blur 26 s, zoom_blur 49 s, snow 21 s, frost 5 s, fog 12 s
    brightness 31 s, contrast 5 s, elastic_transform 61 s, pixelate 3 s, jpeg_compression 9 s
    speckle_noise 10 s, gaussian_blur 3 s, spatter 6 s, saturate 23 s
"""

from __future__ import annotations

import importlib.util
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from ..errors import CifarlabError, import_extra
from .motion import motion_blur as _motion
from .settings import EXTRA, STANDARD

SIZE = 32  # the reference's constants are for 32×32 images


def _pixels(x: np.ndarray) -> np.ndarray:
    """The reference's `np.uint8(float image)`: clip to [0, 255] happened before; truncate."""
    return x.astype(np.uint8)


def _gaussian(x: np.ndarray, sigma: float, mode: str = "nearest", truncate: float = 4.0) -> np.ndarray:
    """skimage.filters.gaussian of each image of a batch (N, H, W[, C]): over H and W only."""
    sigmas = (0, sigma, sigma) + (0,) * (x.ndim - 3)
    return ndimage.gaussian_filter(x, sigmas, mode=mode, truncate=truncate)


def _clipped_zoom(x: np.ndarray, factor: float) -> np.ndarray:
    """Zoom the centre of each image (N, H, W[, C]) by `factor`, cropped back to H×W: the
    reference's scipy.ndimage.zoom(order=1) of each image, as the one interpolation matrix
    that zoom applies along each axis (scipy's own weights: it zooms an identity matrix)."""
    h = x.shape[1]
    crop = int(np.ceil(h / factor))
    top = (h - crop) // 2
    weights = ndimage.zoom(np.eye(crop), (factor, 1), order=1)
    trim = (len(weights) - h) // 2
    weights = weights[trim:trim + h].astype(x.dtype)
    centre = x[:, top:top + crop, top:top + crop]
    return np.einsum("ij,njk...,lk->nil...", weights, centre, weights, optimize=True)


# ----------------------------------------------------------------------------- noise
def gaussian_noise(x, severity, rng):
    c = [0.04, 0.06, .08, .09, .10][severity - 1]
    x = x / 255.0
    return _pixels(np.clip(x + rng.normal(size=x.shape, scale=c), 0, 1) * 255)


def shot_noise(x, severity, rng):
    c = [500, 250, 100, 75, 50][severity - 1]
    x = x / 255.0
    return _pixels(np.clip(rng.poisson(x * c) / c, 0, 1) * 255)


def impulse_noise(x, severity, rng):
    """skimage.util.random_noise(mode='s&p'): each value flipped with probability c, to 0 or 1 evenly."""
    c = [.01, .02, .03, .05, .07][severity - 1]
    x = x / 255.0
    flipped = rng.random(x.shape) <= c
    salted = rng.random(x.shape) <= 0.5
    x[flipped & salted] = 1.0
    x[flipped & ~salted] = 0.0
    return _pixels(x * 255)


def speckle_noise(x, severity, rng):
    c = [.06, .1, .12, .16, .2][severity - 1]
    x = x / 255.0
    return _pixels(np.clip(x + x * rng.normal(size=x.shape, scale=c), 0, 1) * 255)


# ----------------------------------------------------------------------------- blur
def gaussian_blur(x, severity, rng):
    c = [.4, .6, 0.7, .8, 1][severity - 1]
    return _pixels(np.clip(_gaussian(x / 255.0, c), 0, 1) * 255)


def glass_blur(x, severity, rng):
    sigma, delta, iterations = [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)][severity - 1]
    x = _pixels(_gaussian(x / 255.0, sigma) * 255)
    n = len(x)
    inner = np.arange(delta + 1, SIZE)  # the reference's range(32 - delta, delta, -1), in any order
    rows, cols = inner[None, :, None], inner[None, None, :]
    batch = np.arange(n)[:, None, None]
    for _ in range(iterations):
        dy, dx = rng.integers(-delta, delta, size=(2, n, len(inner), len(inner)))  # high excluded, as randint
        x[:, delta + 1:, delta + 1:] = x[batch, rows + dy, cols + dx]
    return _pixels(np.clip(_gaussian(x / 255.0, sigma), 0, 1) * 255)


def _disk(radius: float, alias_blur: float) -> np.ndarray:
    """The reference's anti-aliased disk kernel (17×17 for the CIFAR radii)."""
    cv2 = import_extra("cv2", "robust")
    size = np.arange(-8, 9) if radius <= 8 else np.arange(-radius, radius + 1)
    xs, ys = np.meshgrid(size, size)
    disk = np.array(xs**2 + ys**2 <= radius**2, dtype=np.float32)
    disk /= disk.sum()
    return cv2.GaussianBlur(disk, ksize=(3, 3) if radius <= 8 else (5, 5), sigmaX=alias_blur)


def defocus_blur(x, severity, rng):
    """cv2.filter2D with the disk, per channel: a correlation with reflect-101 borders
    (scipy's 'mirror'), done here for the whole batch at once."""
    radius, alias_blur = [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)][severity - 1]
    kernel = _disk(radius, alias_blur).astype(np.float64)
    rows, cols = np.nonzero(kernel)  # the 17×17 kernel is zero beyond a few pixels: same sums, far fewer
    kernel = kernel[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    x = ndimage.correlate(x / 255.0, kernel[None, :, :, None], mode="mirror")
    return _pixels(np.clip(x, 0, 1) * 255)


def motion_blur(x, severity, rng):
    radius, sigma = [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)][severity - 1]
    return _motion(x, radius, sigma, rng.uniform(-45, 45, size=len(x)))


def zoom_blur(x, severity, rng):
    factors = [np.arange(1, 1.06, 0.01), np.arange(1, 1.11, 0.01), np.arange(1, 1.16, 0.01),
               np.arange(1, 1.21, 0.01), np.arange(1, 1.26, 0.01)][severity - 1]  # fmt: skip
    x = (x / 255.0).astype(np.float32)
    out = np.zeros_like(x)
    for factor in factors:
        out += _clipped_zoom(x, factor)
    return _pixels(np.clip((x + out) / (len(factors) + 1), 0, 1) * 255)


# ----------------------------------------------------------------------------- weather
def _gray(x: np.ndarray) -> np.ndarray:
    """cv2.cvtColor(RGB2GRAY) of float images, with a trailing channel axis."""
    return (x[..., 0] * np.float32(0.299) + x[..., 1] * np.float32(0.587) + x[..., 2] * np.float32(0.114))[..., None]


def snow(x, severity, rng):
    c = [(0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
         (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)][severity - 1]  # fmt: skip
    x = x.astype(np.float32) / 255.0
    layer = rng.normal(size=x.shape[:3], loc=c[0], scale=c[1])
    layer = _clipped_zoom(layer[..., None], c[2])[..., 0]
    layer[layer < c[3]] = 0
    layer = (np.clip(layer, 0, 1) * 255).astype(np.uint8)  # the grey PNG the reference blurs
    layer = _motion(layer, c[4], c[5], rng.uniform(-135, -45, size=len(x)))[..., None] / 255.0
    x = c[6] * x + (1 - c[6]) * np.maximum(x, _gray(x) * 1.5 + 0.5)
    return _pixels(np.clip(x + layer + np.rot90(layer, k=2, axes=(1, 2)), 0, 1) * 255)


_FROST_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg")  # the reference's randint(5)
_frost_textures: list[np.ndarray] = []


def _frost() -> list[np.ndarray]:
    """The reference's frost photos (RGB), scaled by 0.2 as it does; loaded once."""
    if not _frost_textures:
        cv2 = import_extra("cv2", "robust")
        spec = importlib.util.find_spec("imagecorruptions")  # not imported: its __init__ needs pkg_resources
        if spec is None or not spec.submodule_search_locations:
            raise CifarlabError("frost needs the texture photos of the imagecorruptions package, which is not "
                                "installed: pip install 'cifarlab[robust]'")  # fmt: skip
        folder = Path(spec.submodule_search_locations[0]) / "frost"
        for name in _FROST_FILES:
            image = cv2.imread(str(folder / name))
            if image is None:
                raise CifarlabError(f"frost texture '{folder / name}' is missing or unreadable; reinstall imagecorruptions")
            _frost_textures.append(cv2.resize(image, (0, 0), fx=0.2, fy=0.2)[..., ::-1])
    return _frost_textures


def frost(x, severity, rng):
    c = [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)][severity - 1]
    textures = _frost()
    which = rng.integers(len(textures), size=len(x))
    layer = np.empty_like(x)
    for k, texture in enumerate(textures):
        index = np.flatnonzero(which == k)
        top = rng.integers(0, texture.shape[0] - SIZE, size=len(index))
        left = rng.integers(0, texture.shape[1] - SIZE, size=len(index))
        rows = top[:, None, None] + np.arange(SIZE)[None, :, None]
        cols = left[:, None, None] + np.arange(SIZE)[None, None, :]
        layer[index] = texture[rows, cols]
    return _pixels(np.clip(c[0] * x + c[1] * layer.astype(np.float64), 0, 255))


def plasma_fractal(n: int, rng: np.random.Generator, mapsize: int = SIZE, wibbledecay: float = 3) -> np.ndarray:
    """n diamond-square height maps (n, mapsize, mapsize) in [0, 1], as the reference's
    plasma_fractal (its modification of FLHerne/mapgen), one batch axis added."""
    maps = np.zeros((n, mapsize, mapsize))
    step, wibble = mapsize, 100.0

    def wibbled_mean(total):
        return total / 4 + wibble * rng.uniform(-wibble, wibble, total.shape)

    while step >= 2:
        half = step // 2
        corners = maps[:, 0:mapsize:step, 0:mapsize:step]
        squares = corners + np.roll(corners, -1, axis=1)
        squares += np.roll(squares, -1, axis=2)
        maps[:, half:mapsize:step, half:mapsize:step] = wibbled_mean(squares)
        centres = maps[:, half:mapsize:step, half:mapsize:step]
        corners = maps[:, 0:mapsize:step, 0:mapsize:step]
        left = (centres + np.roll(centres, 1, axis=1)) + (corners + np.roll(corners, -1, axis=2))
        maps[:, 0:mapsize:step, half:mapsize:step] = wibbled_mean(left)
        top = (centres + np.roll(centres, 1, axis=2)) + (corners + np.roll(corners, -1, axis=1))
        maps[:, half:mapsize:step, 0:mapsize:step] = wibbled_mean(top)
        step //= 2
        wibble /= wibbledecay
    maps -= maps.min(axis=(1, 2), keepdims=True)
    return maps / maps.max(axis=(1, 2), keepdims=True)


def fog(x, severity, rng):
    c = [(.2, 3), (.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)][severity - 1]
    x = x / 255.0
    max_val = x.max(axis=(1, 2, 3), keepdims=True)
    x += c[0] * plasma_fractal(len(x), rng, wibbledecay=c[1])[..., None]
    return _pixels(np.clip(x * max_val / (max_val + c[0]), 0, 1) * 255)


def spatter(x, severity, rng):
    """Water drops (severities 1-3: OpenCV edges and distance transform, one image at a
    time) or mud (4-5: a batched Gaussian mask)."""
    c = [(0.62, 0.1, 0.7, 0.7, 0.5, 0), (0.65, 0.1, 0.8, 0.7, 0.5, 0), (0.65, 0.3, 1, 0.69, 0.5, 0),
         (0.65, 0.1, 0.7, 0.69, 0.6, 1), (0.65, 0.1, 0.5, 0.68, 0.6, 1)][severity - 1]  # fmt: skip
    x = x.astype(np.float32) / 255.0
    liquid = _gaussian(rng.normal(size=x.shape[:3], loc=c[0], scale=c[1]), c[2])
    liquid[liquid < c[3]] = 0
    if c[5] == 0:
        water = np.array([175, 238, 238], dtype=np.float32) / 255  # in the reference's channel order
        drops = np.stack([_water_drops(layer, c[4]) for layer in liquid])[..., None]
        return _pixels(np.clip(x + drops * water, 0, 1) * 255)
    mask = _gaussian(np.where(liquid > c[3], 1, 0).astype(np.float32), c[4])
    mask[mask < 0.8] = 0
    mud = np.array([63, 42, 20], dtype=np.float32) / 255 * mask[..., None]
    return _pixels(np.clip(x * (1 - mask[..., None]) + mud, 0, 1) * 255)


def _water_drops(liquid: np.ndarray, strength: float) -> np.ndarray:
    """The reference's drop mask for one liquid layer (H, W): edges → distance → emboss."""
    cv2 = import_extra("cv2", "robust")
    liquid = (liquid * 255).astype(np.uint8)
    dist = cv2.distanceTransform(255 - cv2.Canny(liquid, 50, 150), cv2.DIST_L2, 5)
    _, dist = cv2.threshold(dist, 20, 20, cv2.THRESH_TRUNC)
    dist = cv2.equalizeHist(cv2.blur(dist, (3, 3)).astype(np.uint8))
    dist = cv2.filter2D(dist, cv2.CV_8U, np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]]))
    mask = liquid * cv2.blur(dist, (3, 3)).astype(np.float32)
    peak = mask.max()
    return mask / peak * strength if peak > 0 else mask  # (the reference divides 0 by 0 here)


# ----------------------------------------------------------------------------- digital
def _hsv(x: np.ndarray) -> np.ndarray:
    """skimage.color.rgb2hsv of floats in [0, 1], (..., 3)."""
    v = x.max(-1)
    delta = v - x.min(-1)
    safe = np.where(delta == 0, 1, delta)
    r, g, b = np.moveaxis(x, -1, 0)
    h = np.where(x[..., 0] == v, (g - b) / safe, 0.0)
    h = np.where(x[..., 1] == v, 2.0 + (b - r) / safe, h)
    h = np.where(x[..., 2] == v, 4.0 + (r - g) / safe, h)
    h = np.where(delta == 0, 0.0, (h / 6.0) % 1.0)
    s = np.where(delta == 0, 0.0, delta / np.where(v == 0, 1, v))
    return np.stack([h, s, v], axis=-1)


def _rgb(hsv: np.ndarray) -> np.ndarray:
    """skimage.color.hsv2rgb."""
    h, s, v = np.moveaxis(hsv, -1, 0)
    sector = np.floor(h * 6)
    f = h * 6 - sector
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    sector = sector.astype(np.int64) % 6
    choices = [np.stack(rgb, -1) for rgb in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))]
    return np.choose(sector[..., None], choices)


def brightness(x, severity, rng):
    c = [.05, .1, .15, .2, .3][severity - 1]
    hsv = _hsv(x / 255.0)
    hsv[..., 2] = np.clip(hsv[..., 2] + c, 0, 1)
    return _pixels(np.clip(_rgb(hsv), 0, 1) * 255)


def saturate(x, severity, rng):
    c = [(0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)][severity - 1]
    hsv = _hsv(x / 255.0)
    hsv[..., 1] = np.clip(hsv[..., 1] * c[0] + c[1], 0, 1)
    return _pixels(np.clip(_rgb(hsv), 0, 1) * 255)


def contrast(x, severity, rng):
    c = [.75, .5, .4, .3, 0.15][severity - 1]
    x = x / 255.0
    means = x.mean(axis=(1, 2), keepdims=True)
    return _pixels(np.clip((x - means) * c + means, 0, 1) * 255)


def jpeg_compression(x, severity, rng):
    """Pillow's encoder and decoder, one image at a time (there is no batched JPEG)."""
    quality = [80, 65, 58, 50, 40][severity - 1]

    def roundtrip(image):
        buffer = BytesIO()
        Image.fromarray(image).save(buffer, "JPEG", quality=quality)
        return np.asarray(Image.open(buffer))

    return np.stack([roundtrip(image) for image in x])


def pixelate(x, severity, rng):
    c = [0.95, 0.9, 0.85, 0.75, 0.65][severity - 1]
    small = (int(SIZE * c), int(SIZE * c))
    return np.stack([np.asarray(Image.fromarray(image).resize(small, Image.BOX).resize((SIZE, SIZE), Image.BOX))
                     for image in x])  # fmt: skip


def elastic_transform(x, severity, rng):
    """A random affine warp (OpenCV, one image at a time), then a smooth random
    displacement field (batched)."""
    cv2 = import_extra("cv2", "robust")
    scale, sigma, shift = np.array([(0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05),
                                    (0.1, 0.03, 0.03)][severity - 1]) * SIZE  # fmt: skip
    x = x.astype(np.float32) / 255.0
    n = len(x)
    centre, half = np.float32([SIZE, SIZE]) // 2, SIZE // 3
    source = np.float32([centre + half, [centre[0] + half, centre[1] - half], centre - half])
    moved = source + rng.uniform(-shift, shift, size=(n, *source.shape)).astype(np.float32)
    x = np.stack([cv2.warpAffine(image, cv2.getAffineTransform(source, target), (SIZE, SIZE),
                                 borderMode=cv2.BORDER_REFLECT_101) for image, target in zip(x, moved)])  # fmt: skip
    dx = (_gaussian(rng.uniform(-1, 1, size=(n, SIZE, SIZE)), sigma, "reflect", 3) * scale).astype(np.float32)
    dy = (_gaussian(rng.uniform(-1, 1, size=(n, SIZE, SIZE)), sigma, "reflect", 3) * scale).astype(np.float32)
    b, y, c, z = np.meshgrid(np.arange(n), np.arange(SIZE), np.arange(SIZE), np.arange(3), indexing="ij")
    coordinates = [b, y + dy[..., None], c + dx[..., None], z]
    return _pixels(np.clip(ndimage.map_coordinates(x, coordinates, order=1, mode="reflect"), 0, 1) * 255)


CORRUPTIONS = {name: globals()[name] for name in STANDARD + EXTRA}
