"""Benchmarks: `pytest bench/ --benchmark-only`.

CUDA tensors when a GPU is present (the Triton kernels), CPU otherwise (the torch twins). Every
benchmark records the peak memory of one call of each contender in `benchmark.extra_info`, measured
by `measure_peak_memory` below, and the machine it ran on (`machine_name`).
"""
from __future__ import annotations

import ctypes
import gc
from typing import Callable

import pytest
import torch

from spear_fast.machine import machine_name


@pytest.fixture(scope="session")
def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _read_status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def measure_peak_memory(fn: Callable[[], object], device: torch.device) -> int | None:
    """Bytes of memory `fn()` needed above what was in use before it ran.

    CUDA: the caching allocator's peak. CPU (Linux): the process's resident-set high-water mark,
    reset through /proc/self/clear_refs ("5" resets VmHWM), minus the resident set before the call.
    Returns None where neither is available.
    """
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    try:
        # Hand freed heap pages back to the OS first, so memory the call reuses counts as new.
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        before = _read_status_kib("VmRSS")
        fn()
        return (_read_status_kib("VmHWM") - before) * 1024
    except (OSError, AttributeError):
        return None


@pytest.fixture
def peak_memory(device: torch.device) -> Callable[[Callable[[], object]], int | None]:
    return lambda fn: measure_peak_memory(fn, device)


@pytest.fixture
def machine(device: torch.device) -> str:
    return machine_name(device)
