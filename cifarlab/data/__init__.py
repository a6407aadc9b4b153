"""Datasets (find, download, verify, parse), splits and the device-resident loader."""

from .datasets import DATASETS, ImageSet, get_spec, load_classes, load_split, locate, verify
from .download import download
from .loader import DeviceLoader
from .splits import Splits, make_splits, stratified_indices

__all__ = [
    "DATASETS",
    "DeviceLoader",
    "ImageSet",
    "download",
    "get_spec",
    "load_classes",
    "load_split",
    "locate",
    "Splits",
    "make_splits",
    "stratified_indices",
    "verify",
]
