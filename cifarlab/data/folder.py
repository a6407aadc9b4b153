"""The user's own images as ImageSets: torchvision's ImageFolder layout (one subfolder per
class), any size and any format Pillow reads, each resized to a square once at load time.

    PATH/<class>/<image>                   one labelled pool: test and val are carved out of it
    PATH/train/<class>/<image>             or given splits; val/ and test/ are optional
    PATH/val/<class>/<image>
    PATH/test/<class>/<image>

A file that cannot be decoded is reported and skipped; only a folder with nothing readable
is an error.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from ..errors import CifarlabError
from .datasets import ImageSet

SPLITS = ("train", "val", "test")
_UNREADABLE = (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError)


def decode_image(file: str | Path | BinaryIO, size: int, max_pixels: int | None = None,
                 formats: tuple[str, ...] | None = None) -> torch.Tensor:  # fmt: skip
    """An image file (a path or an open binary file) as uint8 (3, size, size): RGB, squashed to
    a square with antialiasing. Raises Pillow's errors for a file it cannot decode, among them
    DecompressionBombError for one of more than `max_pixels` pixels (read from its header,
    before anything is decoded: Pillow itself only refuses twice its own limit and warns
    below that). `formats`: the only Pillow formats tried (an upload from strangers should
    not reach, say, the EPS reader, which runs Ghostscript)."""
    with Image.open(file, formats=formats) as image:
        if max_pixels is not None and image.width * image.height > max_pixels:
            raise Image.DecompressionBombError(
                f"{image.width}×{image.height} = {image.width * image.height:,} pixels is more than the "
                f"{max_pixels:,} allowed"
            )
        image.draft("RGB", (size, size))  # JPEG: let the decoder shrink large photos first
        image = image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)


def read_image(path: str | Path, size: int = 32) -> torch.Tensor:
    """`decode_image`, with a CifarlabError for a missing or unreadable file."""
    try:
        return decode_image(path, size)
    except FileNotFoundError:
        raise CifarlabError(f"image '{path}' does not exist") from None
    except _UNREADABLE as e:
        raise CifarlabError(f"cannot read image '{path}': {e}") from None


def read_image_folder(root: str | Path, size: int) -> dict[str, ImageSet]:
    """The splits the folder has ('train', and 'val'/'test' if given), images size×size."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise CifarlabError(f"image folder '{root}' does not exist")
    folders = {split: root / split for split in SPLITS if (root / split).is_dir()}
    if not folders:
        folders = {"train": root}
    elif "train" not in folders:
        raise CifarlabError(f"'{root}' has {' and '.join(f'{s}/' for s in folders)} but no train/ folder")
    classes = _classes(folders["train"])
    for split, folder in folders.items():
        if split != "train" and _classes(folder) != classes:
            raise CifarlabError(f"the class folders of '{folder}' differ from those of '{folders['train']}'")
    class_to_index = {name: i for i, name in enumerate(classes)}
    samples = {split: make_dataset(folder, class_to_index, IMG_EXTENSIONS, allow_empty=True)
               for split, folder in folders.items()}  # fmt: skip
    total = sum(map(len, samples.values()))
    if total == 0:
        raise CifarlabError(f"'{root}' holds no image files (looked for {', '.join(IMG_EXTENSIONS)})")
    sets, unreadable = {}, []
    for split, pairs in samples.items():
        images, labels = [], []
        for path, label in pairs:
            try:
                images.append(decode_image(path, size))
                labels.append(label)
            except _UNREADABLE as e:
                unreadable.append(f"{Path(path).relative_to(root)} ({type(e).__name__}: {e})")
        if not images:
            raise CifarlabError(f"no readable image in the {split} images of '{root}'; e.g. {'; '.join(unreadable[:3])}")
        empty = sorted(set(range(len(classes))) - set(labels)) if split == "train" else []
        if empty:
            raise CifarlabError(
                f"class folder(s) {', '.join(str(folders['train'] / classes[i]) for i in empty)} hold no readable image; "
                f"add images or remove the folder (a class without images cannot be learned)"
            )
        sets[split] = ImageSet(torch.stack(images), torch.tensor(labels), classes)
    if unreadable:
        shown = "\n  ".join(unreadable[:10]) + (f"\n  … and {len(unreadable) - 10} more" if len(unreadable) > 10 else "")
        print(f"warning: skipped {len(unreadable)} of {total} image files in '{root}' that cannot be read:\n  {shown}",
              file=sys.stderr)  # fmt: skip
    return sets


def _classes(folder: Path) -> list[str]:
    try:
        classes, _ = find_classes(folder)
    except FileNotFoundError:
        raise CifarlabError(f"'{folder}' has no class folders (expected {folder}/<class>/<image>)") from None
    if len(classes) < 2:
        raise CifarlabError(f"'{folder}' has {len(classes)} class folder; a classifier needs two or more")
    return classes
