"""Augmentation cost: cifarlab's batched per-image policies (and Mixup/CutMix) vs torchvision's
policy transforms applied image by image (the only way to get a draw per image from them), on
CIFAR-10 training images on the CPU. Prints JSON.

    python benchmarks/augment_throughput.py [--data-dir ../shared/data] [--batches 20]

Images/s delivered as normalized float batches by the DeviceLoader (crop + flip + the named
augmentation); the torchvision figure times only the policy, on uint8 tensors, one call per image.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torchvision
from torchvision import transforms

from cifarlab.config import AugmentConfig
from cifarlab.data import DeviceLoader, get_spec, load_split
from cifarlab.engine.runtime import hardware

TORCHVISION_POLICIES = {
    "autoaugment": lambda: transforms.AutoAugment(transforms.AutoAugmentPolicy.CIFAR10),
    "randaugment": transforms.RandAugment,
    "trivialaugment": transforms.TrivialAugmentWide,
    "augmix": lambda: transforms.AugMix(all_ops=False),
}


def images_per_second(batches, count: int) -> float:
    """Over `count` batches, after one warm-up batch."""
    iterator = iter(batches)
    next(iterator)
    start, images = time.perf_counter(), 0
    for _ in range(count):
        images += len(next(iterator)[0])
    return images / (time.perf_counter() - start)


def per_image(policy, images: torch.Tensor, batch_size: int, count: int):
    """torchvision's policy called once per image: a fresh draw for each, as a Dataset would."""
    for b in range(count + 1):
        batch = images[b * batch_size : (b + 1) * batch_size]
        yield torch.stack([policy(image) for image in batch]), None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=20)
    args = parser.parse_args()

    spec = get_spec("cifar10")
    train = load_split("cifar10", "train", args.data_dir)
    settings = {"crop + flip only": {}, **{name: {"policy": name} for name in TORCHVISION_POLICIES},
                "mixup": {"mixup_alpha": 1.0}, "cutmix": {"cutmix_alpha": 1.0},
                "random_erasing": {"random_erasing": 0.5}}  # fmt: skip
    batched = {}
    for name, options in settings.items():
        augment = AugmentConfig(translate=4, padding_mode="reflect", flip="random", **options)
        loader = DeviceLoader(train, args.batch_size, spec.mean, spec.std, augment, shuffle=True, drop_last=True)
        batched[name] = images_per_second(loader.epoch(0), args.batches)
    torchvision_per_image = {
        name: images_per_second(per_image(build(), train.images, args.batch_size, args.batches), args.batches)
        for name, build in TORCHVISION_POLICIES.items()
    }
    print(json.dumps({
        "benchmark": "augment_throughput",
        "batch_size": args.batch_size,
        "batches_timed": args.batches,
        "cifarlab_loader_images_per_s": {k: round(v) for k, v in batched.items()},
        "torchvision_policy_per_image_images_per_s": {k: round(v) for k, v in torchvision_per_image.items()},
        "speedup_of_batched_policy": {k: round(batched[k] / v, 1) for k, v in torchvision_per_image.items()},
        "threads": torch.get_num_threads(), "hardware": hardware(), "torchvision": torchvision.__version__,
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
