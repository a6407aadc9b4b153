"""Loader throughput: cifarlab's DeviceLoader vs torchvision DataLoader + transforms, doing the
same augmentation (random crop with 4-px reflect padding, random flip, normalize) on the same
CIFAR-10 training set, in one process. Prints JSON.

    python benchmarks/loader_throughput.py [--data-dir ../shared/data] [--batches 150]

Only the loader is timed (no model): images/s delivered as normalized float batches on the CPU.
"""

from __future__ import annotations

import argparse
import json
import time

import torchvision
from torch.utils.data import DataLoader
from torchvision import transforms

from cifarlab.config import AugmentConfig
from cifarlab.data import DeviceLoader, get_spec, load_split, locate
from cifarlab.engine.runtime import hardware


def time_batches(batches, count: int) -> float:
    """Images per second over `count` batches, after one warm-up batch."""
    iterator = iter(batches)
    next(iterator)
    start, images = time.perf_counter(), 0
    for _ in range(count):
        x, _ = next(iterator)
        images += len(x)
    return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=150)
    args = parser.parse_args()

    spec = get_spec("cifar10")
    train = load_split("cifar10", "train", args.data_dir)
    crop_flip = AugmentConfig(translate=4, padding_mode="reflect", flip="random")
    device_loader = DeviceLoader(train, args.batch_size, spec.mean, spec.std, crop_flip, shuffle=True, drop_last=True)
    results = {"cifarlab DeviceLoader": time_batches(device_loader.epoch(0), args.batches)}

    pipeline = transforms.Compose([
        transforms.RandomCrop(32, padding=4, padding_mode="reflect"), transforms.RandomHorizontalFlip(),
        transforms.ToTensor(), transforms.Normalize(spec.mean, spec.std),
    ])  # fmt: skip
    root = locate("cifar10", args.data_dir, download=False).parent
    dataset = torchvision.datasets.CIFAR10(root, train=True, transform=pipeline, download=False)
    for workers in (0, 2):
        loader = DataLoader(dataset, args.batch_size, shuffle=True, drop_last=True, num_workers=workers,
                            persistent_workers=workers > 0)  # fmt: skip
        results[f"torchvision DataLoader, {workers} workers"] = time_batches(loader, args.batches)

    baseline = max(v for k, v in results.items() if k.startswith("torchvision"))
    print(json.dumps({
        "benchmark": "loader_throughput",
        "augmentation": "random crop (pad 4, reflect) + random flip + normalize, per sample",
        "batch_size": args.batch_size,
        "batches_timed": args.batches,
        "images_per_s": {k: round(v) for k, v in results.items()},
        "speedup_vs_best_dataloader": round(results["cifarlab DeviceLoader"] / baseline, 1),
        "hardware": hardware(), "torchvision": torchvision.__version__,
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
