"""Where a kernel runs: Triton on CUDA tensors, the torch twin everywhere else.

`kernels` must import on a machine without triton (macOS, a CPU-only box): every Triton import in
the op files is guarded by `HAS_TRITON`. Under `TRITON_INTERPRET=1` (set before triton is imported)
the Triton launchers also accept CPU tensors; the tests use that to run the real kernels on a CPU.
"""
from __future__ import annotations

import functools
import os
from typing import Any, Callable, TypeVar

import torch

T = TypeVar("T")

try:  # triton is optional: without it every op runs its torch twin
    import triton  # noqa: F401

    HAS_TRITON = True
except ImportError:
    HAS_TRITON = False


def interpreting() -> bool:
    """True when Triton kernels run in the Python interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_usable(*tensors: torch.Tensor) -> bool:
    """Whether the Triton path can take these tensors: all on CUDA, or all anywhere when interpreting."""
    if not HAS_TRITON:
        return False
    if interpreting():
        return True
    return all(t.is_cuda for t in tensors)


def prefer_triton(*tensors: torch.Tensor) -> bool:
    """The dispatch rule of every op: CUDA tensors -> Triton (when installed), otherwise the torch twin."""
    return HAS_TRITON and len(tensors) > 0 and all(t.is_cuda for t in tensors)


def require_triton(op: str) -> None:
    if not HAS_TRITON:
        raise RuntimeError(f"{op}: the Triton path needs `triton` (pip install 'spear-fast[triton]')")


def check_same_device(op: str, **tensors: torch.Tensor | None) -> torch.device:
    """All given tensors on one device; ValueError naming each tensor's device otherwise."""
    present = {name: t for name, t in tensors.items() if t is not None}
    devices = {t.device for t in present.values()}
    if len(devices) > 1:
        found = ", ".join(f"{name} on {t.device}" for name, t in present.items())
        raise ValueError(f"{op}: tensors must share one device, found {found}")
    return next(iter(devices))


def without_autocast(fn: Callable[..., T]) -> Callable[..., T]:
    """Run `fn` with autocast off on its first tensor argument's device.

    The ops promise fp32 accumulation and fp32 results whatever the caller's autocast region says;
    without this, an autocast-eligible GEMM inside a twin (torch.mm, baddbmm) would silently run in
    bf16/fp16.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        first = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
        device_type = first.device.type if first is not None else "cpu"
        with torch.autocast(device_type, enabled=False):
            return fn(*args, **kwargs)

    return wrapper
