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


def frame_indices(lengths: Sequence[int], num_frames: int, device: torch.device | str) -> torch.Tensor:
    """(sum(lengths),) int64 on `device`: the flat indices b * num_frames + t of frames t < lengths[b] of
    a (B, num_frames) batch, clip by clip. What `valid.reshape(-1).nonzero()` gives, without reading
    the device: the output size is known on the host."""
    total = sum(lengths)
    counts = device_lengths(lengths, device)  # (B,)
    first = counts.cumsum(0) - counts  # (B,) where each clip's frames start in the output
    offset = torch.arange(len(lengths), device=device) * num_frames - first  # (B,) flat index - output position
    return torch.repeat_interleave(offset, counts, output_size=total) + torch.arange(total, device=device)
