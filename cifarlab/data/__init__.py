"""Datasets (find, download, verify, parse), splits and the device-resident loader."""

from .datasets import DATASETS, ImageSet, channel_stats, get_spec, load_classes, load_split, locate, verify
from .download import download
from .loader import DeviceLoader
from .folder import read_image, read_image_folder
from .labelled import label_differences, write_labelled_indices
from .splits import Splits, make_splits, per_class_indices, stratified_indices, training_file
from .unlabelled import SemiLoader

__all__ = [
    "DATASETS",
    "DeviceLoader",
    "channel_stats",
    "ImageSet",
    "download",
    "get_spec",
    "label_differences",
    "load_classes",
    "load_split",
    "locate",
    "Splits",
    "make_splits",
    "per_class_indices",
    "read_image",
    "read_image_folder",
    "SemiLoader",
    "stratified_indices",
    "training_file",
    "verify",
    "write_labelled_indices",
]
