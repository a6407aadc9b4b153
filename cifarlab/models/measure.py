"""CPU throughput of a model on this machine: images/s for a training step (forward,
cross-entropy, backward, SGD update) and for inference, on random 32×32 batches in
channels_last, fp32, as the trainer runs them on a CPU. A figure for this machine and its
thread count, not a property of the model."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Throughput:
    train: float  # images/s, training step
    infer: float  # images/s, eval mode, no autograd


def _images_per_second(step: Callable[[], None], batch_size: int, seconds: float) -> float:
    """Run `step` once to warm up (allocations, kernel selection), then until `seconds` pass."""
    step()
    steps, start = 0, time.perf_counter()
    while True:
        step()
        steps += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return steps * batch_size / elapsed


def measure_throughput(model: nn.Module, batch_size: int = 64, seconds: float = 2.0) -> Throughput:
    """Images/s of `model` on the CPU (the training steps change it: pass a fresh one)."""
    model = model.to(memory_format=torch.channels_last)
    x = torch.randn(batch_size, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.zeros(batch_size, dtype=torch.long)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def train_step() -> None:
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    @torch.inference_mode()
    def infer_step() -> None:
        model(x)

    model.train()
    train = _images_per_second(train_step, batch_size, seconds)
    model.eval()
    return Throughput(train, _images_per_second(infer_step, batch_size, seconds))
