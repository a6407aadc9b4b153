"""Several processes, one run: torchrun + PyTorch's DistributedDataParallel.

torchrun starts one process per device and sets RANK, WORLD_SIZE and LOCAL_RANK; `session()`
joins the process group from them (nccl on CUDA with device cuda:LOCAL_RANK, gloo on CPU) and
leaves it at the end. Started any other way, every helper here is a no-op for one process,
so the trainer has a single code path.

Scaling rule: `train.batch_size` is the global batch. Each rank trains on batch_size /
world_size images of every global batch (the loader's slice of one global order), DDP
averages the gradients, and the learning rate is left as configured: N processes train the
same run as one process with the same batch. To use more devices for a larger batch, raise
--batch-size yourself, and the lr with it (recipes with optim.per_1024 scale lr and weight
decay with the batch automatically).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..data import ImageSet
from ..errors import CifarlabError
from .runtime import select_device


def launched() -> bool:
    """Whether torchrun (or another launcher that sets its variables) started this process."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_writer() -> bool:
    """Whether this process writes a run's shared outputs: the only process, or rank 0."""
    return rank() == 0


def _device(name: str) -> torch.device:
    """The device of this rank: its own GPU (cuda:LOCAL_RANK) or the CPU."""
    device = select_device(name)
    if device.type != "cuda":
        return device
    if device.index is not None and int(os.environ["WORLD_SIZE"]) > 1:
        raise CifarlabError(
            f"train.device={name!r} names one GPU, but torchrun gives each process its own (cuda:LOCAL_RANK); "
            f"use --device cuda, and CUDA_VISIBLE_DEVICES to choose the GPUs"
        )
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    torch.cuda.set_device(device)
    return device


@contextmanager
def session(device_name: str) -> Iterator[torch.device]:
    """Join the process group if torchrun launched us (and no one joined it yet); yield this
    process's device; leave the group at the end, also on error."""
    if not launched() or active():
        yield _device(device_name) if active() else select_device(device_name)
        return
    device = _device(device_name)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield device
    finally:
        dist.destroy_process_group()


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """BatchNorm statistics over the global batch instead of each rank's slice (train.sync_bn)."""
    if world_size() == 1:
        return model  # one process: plain BatchNorm is the same thing
    if device.type != "cuda":
        raise CifarlabError("train.sync_bn needs CUDA (PyTorch's SyncBatchNorm does not run on CPU); drop it on CPU")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """The module to call for training steps: DDP averages gradients across ranks in backward
    and broadcasts rank 0's buffers (BatchNorm running statistics) before each forward."""
    if world_size() == 1:
        return model
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def summed(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of `tensor` over all ranks (a new tensor; the argument is unchanged)."""
    total = tensor.clone()
    if world_size() > 1:
        dist.all_reduce(total)
    return total


@torch.no_grad()
def broadcast_state(module: nn.Module, buffers_only: bool = False) -> None:
    """Give every rank rank 0's parameters (unless `buffers_only`) and buffers."""
    if world_size() == 1:
        return
    tensors = list(module.buffers()) + ([] if buffers_only else list(module.parameters()))
    for tensor in tensors:
        dist.broadcast(tensor.data, 0)


def barrier() -> None:
    """Wait for all ranks (e.g. until rank 0 has written a file the others read)."""
    if world_size() > 1:
        dist.barrier()


def shard(data: ImageSet) -> ImageSet:
    """This rank's contiguous part of an evaluation set (sizes differ by at most one)."""
    n, w, r = len(data), world_size(), rank()
    if n < w:
        raise CifarlabError(f"an evaluation split of {n} images cannot be shared by {w} processes; use a larger one")
    start, stop = r * n // w, (r + 1) * n // w
    return data.subset(torch.arange(start, stop))


def gather_shards(tensor: torch.Tensor, total: int) -> torch.Tensor:
    """Concatenate every rank's `shard()` result, in rank order, on every rank (on the CPU)."""
    w = world_size()
    if w == 1:
        return tensor
    sizes = [(r + 1) * total // w - r * total // w for r in range(w)]
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    padded = tensor.new_zeros((max(sizes), *tensor.shape[1:]), device=device)
    padded[: len(tensor)] = tensor
    parts = [torch.empty_like(padded) for _ in range(w)]
    dist.all_gather(parts, padded)
    return torch.cat([part[:size] for part, size in zip(parts, sizes)]).cpu()
