"""Benchmarks: `pytest bench/ --benchmark-only`.

CUDA tensors when a GPU is present (the Triton kernels), CPU otherwise (the torch twins). Every
benchmark records the peak memory of one call of each contender in `benchmark.extra_info`, measured
by `benchlib.measure.measure_peak_memory`, and the machine it ran on (`machine_name`).
"""
from __future__ import annotations

from typing import Callable

import pytest
import torch

from benchlib.measure import measure_peak_memory
from spear_fast.machine import machine_name


@pytest.fixture(scope="session")
def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture
def peak_memory(device: torch.device) -> Callable[[Callable[[], object]], int | None]:
    return lambda fn: measure_peak_memory(fn, device)


@pytest.fixture
def machine(device: torch.device) -> str:
    return machine_name(device)
