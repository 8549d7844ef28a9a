"""Peak memory of one call and the median time of repeated calls, on CUDA or the CPU."""
from __future__ import annotations

import ctypes
import gc
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


@dataclass
class Timing:
    median_s: float  # median over the timed repetitions
    min_s: float
    reps: int


def time_call(fn: Callable[[], object], device: torch.device, *, warmup: int = 1, min_reps: int = 3,
              max_reps: int = 20, max_seconds: float = 2.0) -> Timing:
    """Median wall time of `fn()` after `warmup` untimed calls: at least `min_reps` timed calls, then
    more until `max_reps` or until the timed calls have taken `max_seconds`. CUDA calls are timed
    with events around each call (the device's time, launch gaps included); CPU calls with the
    host clock."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times: list[float] = []
    spent = 0.0
    while len(times) < min_reps or (len(times) < max_reps and spent < max_seconds):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            seconds = start.elapsed_time(end) / 1e3
        else:
            began = time.perf_counter()
            fn()
            seconds = time.perf_counter() - began
        times.append(seconds)
        spent += seconds
    return Timing(statistics.median(times), min(times), len(times))
