"""fp32 against bf16 autocast on this CPU, side by side in one process: a recipe's training step
(forward, loss, backward, SGD step) on real CIFAR-10 images, its evaluation forward pass, and
square matmuls. Prints JSON.

    python benchmarks/cpu_precision.py --recipe fast --data-dir ../shared/data

bf16 can pay on a CPU only where the hardware multiplies bf16 natively (AMX tiles or AVX-512
BF16, both reported in the output); elsewhere it has to be converted. This is the
speed side only: whether a bf16 run still reaches the recipe's accuracy takes a full run
(`cifarlab train --recipe fast --set train.precision=bf16`). The two precisions take turns
in each round (--rounds), so a slow spell of the machine hits both; each figure is the median
over rounds. A timing means something only when nothing else ran beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time

import torch
import torch.nn.functional as F

import cifarlab
from cifarlab.data import get_spec, load_split
from cifarlab.data.augment import normalize
from cifarlab.engine.runtime import hardware
from time_to_accuracy import matmul_peak  # this folder is the script's first import path

PRECISIONS = {"fp32": contextlib.nullcontext, "bf16": lambda: torch.autocast("cpu", dtype=torch.bfloat16)}


def batch(args, config: cifarlab.Config) -> tuple[torch.Tensor, torch.Tensor]:
    """The first batch-size training images, normalized as the recipe's loader would."""
    images = load_split(config.data.dataset, "train", args.data_dir)
    spec = get_spec(config.data.dataset)
    x = normalize(images.images[: args.batch_size], torch.tensor(spec.mean), torch.tensor(spec.std))
    return x.contiguous(memory_format=torch.channels_last), images.labels[: args.batch_size]


def seconds(fn, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="fast")
    parser.add_argument("--data-dir")
    parser.add_argument("--batch-size", type=int, default=500, help="images per step (fast trains on 2,000)")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per precision and round")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    if min(args.batch_size, args.steps, args.rounds) < 1:
        parser.error("--batch-size, --steps and --rounds must be at least 1")

    config = cifarlab.resolve_config(args.recipe)
    x, y = batch(args, config)
    torch.manual_seed(0)
    model = cifarlab.create_model(config.model.name, **config.model.options).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def train_step(precision: str) -> None:
        with PRECISIONS[precision]():
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def eval_pass(precision: str) -> None:
        with torch.inference_mode(), PRECISIONS[precision]():
            model(x)

    times = {(task, p): [] for task in ("train", "eval") for p in PRECISIONS}
    for precision in PRECISIONS:  # warm-up: oneDNN builds its kernels for each shape and dtype once
        model.train(), train_step(precision), model.eval(), eval_pass(precision)
    for _ in range(args.rounds):
        for precision in PRECISIONS:
            model.train()
            times["train", precision].append(seconds(lambda: train_step(precision), args.steps))
            model.eval()
            times["eval", precision].append(seconds(lambda: eval_pass(precision), args.steps))

    result = {"recipe": args.recipe, "model": config.model.name, "batch_size": args.batch_size,
              "steps": args.steps, "rounds": args.rounds,
              "amx_tiles": torch.cpu._is_amx_tile_supported(), "avx512_bf16": torch.cpu._is_avx512_bf16_supported(),
              "hardware": hardware()}  # fmt: skip
    for task in ("train", "eval"):
        fp32, bf16 = (statistics.median(times[task, p]) for p in PRECISIONS)
        result[task] = {"fp32_images_per_s": round(args.batch_size / fp32, 1),
                        "bf16_images_per_s": round(args.batch_size / bf16, 1), "bf16_speedup": round(fp32 / bf16, 3)}  # fmt: skip
    fp32, bf16 = (matmul_peak(3.0, dtype=dtype) for dtype in (torch.float32, torch.bfloat16))
    result["matmul_2048"] = {"fp32_gflop_per_s": round(fp32, 1), "bf16_gflop_per_s": round(bf16, 1),
                             "bf16_speedup": round(bf16 / fp32, 3)}  # fmt: skip
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
