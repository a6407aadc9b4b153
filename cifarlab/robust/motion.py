"""ImageMagick's motion blur (`MagickMotionBlurImage`), re-implemented for batches.

The reference CIFAR-10-C generator calls ImageMagick through `wand` for motion blur and
snow. That needs a system library (Debian's libmagickwand) that pip cannot install, and it
works one image at a time. ImageMagick's algorithm (MotionBlurImage in magick/effect.c) is
a one-sided line kernel, so it is written out here:

- width = 2·ceil(radius) + 1 taps (GetOptimalKernelWidth1D), weights exp(-i²/2σ²) for
  i = 0 … width-1, normalized to sum 1 (GetMotionBlurKernel);
- tap i reads the pixel at (x + ceil(i·cos θ - ½), y + ceil(i·sin θ - ½)), edge pixels
  repeated beyond the border (ImageMagick's default "edge" virtual pixels);
- the sum is rounded to ImageMagick's 16-bit quantum (value·257), and that is cut down to
  the 8-bit PNG the reference reads back (found by comparison: rounding at 8 bits instead
  differs in half the pixels).

tests/test_robustness.py compares this with ImageMagick 6.9 Q16 itself (through wand, when
installed): every pixel equal on real CIFAR-10 test images.
"""

from __future__ import annotations

import numpy as np


def motion_kernel(radius: int, sigma: float) -> np.ndarray:
    taps = np.arange(2 * int(np.ceil(radius)) + 1)
    weights = np.exp(-(taps**2) / (2.0 * sigma * sigma))
    return weights / weights.sum()


def motion_blur(images: np.ndarray, radius: int, sigma: float, angles: np.ndarray) -> np.ndarray:
    """Blur uint8 images (N, H, W) or (N, H, W, C), each along its own angle in degrees; uint8 out."""
    kernel = motion_kernel(radius, sigma)
    n, h, w = images.shape[:3]
    theta = np.deg2rad(angles)[:, None]  # (N, 1)
    taps = np.arange(len(kernel))[None, :]
    dx = np.ceil(taps * np.cos(theta) - 0.5).astype(np.int64)  # (N, taps)
    dy = np.ceil(taps * np.sin(theta) - 0.5).astype(np.int64)
    rows, cols = np.arange(h)[None, :, None], np.arange(w)[None, None, :]
    batch = np.arange(n)[:, None, None]
    out = np.zeros(images.shape, dtype=np.float64)
    for i, weight in enumerate(kernel):  # one gather per tap, over the whole batch
        y = np.clip(rows + dy[:, i, None, None], 0, h - 1)
        x = np.clip(cols + dx[:, i, None, None], 0, w - 1)
        out += weight * images[batch, y, x]
    quantum = np.floor(out * 257 + 0.5)
    return np.floor(quantum / 257).clip(0, 255).astype(np.uint8)
