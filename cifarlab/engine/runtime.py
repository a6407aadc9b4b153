"""Device, precision, threads, seeding and RNG state: the process-wide settings of a run."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import platform
import random

import numpy as np
import torch

from ..config import TrainConfig
from ..errors import CifarlabError


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CifarlabError(f"device '{name}' requested but CUDA is not available here; use --device cpu or auto")
    return torch.device(name)


def native_bf16(device: torch.device) -> bool:
    """Whether `device` multiplies bf16 in hardware: CUDA, or a CPU with AMX tiles or AVX-512
    BF16. There bf16 autocast trains `fast` 1.9x (AVX-512 BF16, AMD EPYC) to 2.7x (AMX, Intel
    Xeon) faster than fp32 at the same accuracy; elsewhere each bf16 product is emulated and
    slower than oneDNN's fp32 path (benchmarks/cpu_precision.py, README: bf16 on the CPU)."""
    if device.type == "cuda":
        return True
    return device.type == "cpu" and (torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())


def resolved_precision(precision: str, device: torch.device) -> str:
    """`auto` made concrete for `device`: bf16 where it is native, fp32 elsewhere."""
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(device) else "fp32"


def autocast(device: torch.device, precision: str):
    """bf16 autocast (no loss scaling needed) or none (fp32), as `precision` resolves here."""
    if resolved_precision(precision, device) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def configure(train: TrainConfig) -> None:
    """Apply a run's process-wide settings: threads, determinism, memory reuse."""
    if train.threads:
        torch.set_num_threads(train.threads)
    torch.use_deterministic_algorithms(train.deterministic, warn_only=True)
    torch.backends.cudnn.benchmark = not train.deterministic
    if train.reuse_memory:
        keep_freed_memory()


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)


@functools.cache  # once per process: each evaluation of a saved run asks again (robustness: 95 times)
def keep_freed_memory() -> bool:
    """Make the C allocator keep the memory tensors free inside the process, for the next ones.

    glibc serves every block over 32 MiB with a fresh mmap and unmaps it when it is freed, so
    each training step on the CPU page-faults its large activations and gradients in anew (the
    kernel zeroes every page): fast90, 20 steps, 3.3M page faults and 10 s of system time, 27%
    of the step time. With mmap off and no trimming, the freed blocks stay in the heap and the
    next step reuses them; the process keeps its peak memory until it exits. Process-wide, like
    the thread count; numerics are unchanged. False (and nothing changed) where the C library
    has no mallopt (macOS, Windows).
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # TypeError: Windows has no "this process" library
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def hardware(device: torch.device | None = None) -> dict:
    """What a figure was measured on: CPU model and threads, GPU if used, library versions."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "cpu_bf16_native": native_bf16(torch.device("cpu"))}  # fmt: skip
    if device is not None and device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
