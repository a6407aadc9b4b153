"""Images in and out of the web app: an upload's bytes become the model's uint8 pixels through
the reader `cifarlab predict` uses (so any size is resized the same way), or an UploadError
with the 4xx status and the one line that say why not; pixels go back out as PNG data URIs."""

from __future__ import annotations

import base64
import io

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..data.folder import decode_image
from ..errors import first_line

MAX_UPLOAD_BYTES = 10 * 1024 * 1024  # a large phone photo; more is refused before it is read whole
MAX_PIXELS = 50_000_000  # a 48-megapixel photo passes; a small file claiming billions of pixels does not
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP")  # what browsers show; Pillow's other readers stay shut


class UploadError(Exception):
    """A request the app refuses: an HTTP status (4xx) and one line for the user."""

    def __init__(self, status: int, message: str):
        super().__init__(" ".join(message.split()))
        self.status = status


def decode_upload(data: bytes, size: int) -> torch.Tensor:
    """The uploaded file as uint8 (3, size, size), or an UploadError: 400 empty, 413 too many
    pixels, 415 not an image, 422 an image that cannot be decoded (truncated, damaged)."""
    if not data:
        raise UploadError(400, "the file is empty")
    try:
        return decode_image(io.BytesIO(data), size, MAX_PIXELS, FORMATS)
    except Image.DecompressionBombError as e:
        raise UploadError(413, f"the image is too large: {first_line(e)}") from None
    except UnidentifiedImageError:
        raise UploadError(415, f"not an image in a format this app reads ({', '.join(FORMATS)})") from None
    except Exception as e:  # Pillow's readers raise many types for a damaged file (OSError, SyntaxError, struct.error)
        raise UploadError(422, f"the image cannot be decoded (truncated or damaged?): {first_line(e)}") from None


def png_data_uri(pixels: np.ndarray, scale: int = 1) -> str:
    """uint8 (H, W, 3) pixels as a PNG data URI, each pixel drawn as a scale×scale square (a
    32×32 image is too small to see, and smoothing would show detail the model never had)."""
    image = Image.fromarray(pixels)
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
