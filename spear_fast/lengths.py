"""Per-clip lengths of a padded batch, on the host and on the device.

The functions of the training step (fbank, masking, augmentation, student, objective) take (B,)
lengths either as a tensor or as Python ints. Python ints are the host copies that collation keeps
(spear_fast.data.dataset.Batch): reading them costs nothing. A tensor's values are read with one
`.tolist()`, which on a GPU waits for the device (a sync); the training step never passes one.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import torch

Lengths = Union[torch.Tensor, Sequence[int]]


def host_lengths(lengths: Lengths) -> list[int]:
    """The lengths as Python ints."""
    return lengths.tolist() if isinstance(lengths, torch.Tensor) else [int(n) for n in lengths]


def device_lengths(lengths: Lengths, device: torch.device | str) -> torch.Tensor:
    """(B,) int64 on `device`; Python ints go over in one non-blocking host-to-device copy."""
    if isinstance(lengths, torch.Tensor):
        return lengths.to(device=device, dtype=torch.int64)
    return torch.tensor(list(lengths), dtype=torch.int64).to(device, non_blocking=True)
