"""The teacher interface: (waves (B, L) 16 kHz, lengths (B,)) -> frames (B, T, D) + frame lengths.

Every teacher is a frozen nn.Module in eval mode. `Teacher.forward` checks the batch, zeroes the
samples past each clip's length (so whatever padding a caller used cannot leak in), runs the model
without gradients (bf16 autocast on CUDA when asked) and zeroes the frames past each clip's frame
length. Subclasses implement `_encode` and must make a clip's frames independent of the batch it
sits in (tests check: alone vs in a padded batch).
"""
from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch
from torch import nn

from spear_fast.sample_rate import SAMPLE_RATE


class TeacherOutput(NamedTuple):
    frames: torch.Tensor  # (B, T, D) float32, zero past frame_lengths
    frame_lengths: torch.Tensor  # (B,) int64
    frame_rate: float  # frames per second


def check_waves(waves: torch.Tensor, lengths: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate a (B, L) float batch and its (B,) lengths; returns float32 waves, int64 lengths."""
    if not isinstance(waves, torch.Tensor) or waves.dim() != 2:
        shape = tuple(waves.shape) if isinstance(waves, torch.Tensor) else type(waves).__name__
        raise ValueError(f"teacher input: waves must be a (B, L) tensor, got {shape}")
    if not waves.is_floating_point():
        raise ValueError(f"teacher input: waves must be floating point, got {waves.dtype}")
    batch, max_len = waves.shape
    if lengths is None:
        lengths = torch.full((batch,), max_len, dtype=torch.int64)
    if not isinstance(lengths, torch.Tensor) or lengths.shape != (batch,):
        shape = tuple(lengths.shape) if isinstance(lengths, torch.Tensor) else type(lengths).__name__
        raise ValueError(f"teacher input: lengths must have shape ({batch},) to match waves {tuple(waves.shape)}, got {shape}")
    if lengths.is_floating_point() or lengths.dtype == torch.bool:
        raise ValueError(f"teacher input: lengths must be integers, got {lengths.dtype}")
    lengths = lengths.to(device="cpu", dtype=torch.int64)
    if batch and (int(lengths.min()) < 1 or int(lengths.max()) > max_len):
        raise ValueError(f"teacher input: lengths must lie in [1, {max_len}], got min {int(lengths.min())} max {int(lengths.max())}")
    waves = waves.float()
    valid = torch.arange(max_len, device=waves.device)[None, :] < lengths.to(waves.device)[:, None]  # (B, L)
    if not bool(torch.isfinite(waves[valid]).all()):
        raise ValueError("teacher input: waves contain NaN or Inf inside the valid lengths")
    return waves.masked_fill(~valid, 0.0), lengths


def frame_mask(frame_lengths: torch.Tensor, num_frames: int, device: torch.device | str) -> torch.Tensor:
    """(B, T) bool, True on valid frames."""
    return torch.arange(num_frames, device=device)[None, :] < frame_lengths.to(device)[:, None]


class Teacher(nn.Module):
    """Base class of the frozen teachers. Attributes: name, dim, frame_rate, layer, min_samples
    (the shortest clip that yields at least one frame), device."""

    name: str
    dim: int
    frame_rate: float
    layer: int | str
    min_samples: int = 1

    def __init__(self, device: str | torch.device = "cpu", autocast_dtype: torch.dtype | None = None):
        super().__init__()
        self.device = torch.device(device)
        # bf16 autocast only makes sense (and is only used) on CUDA; CPU stays float32.
        self.autocast_dtype = autocast_dtype

    def _autocast(self):
        if self.autocast_dtype is not None and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=self.autocast_dtype)
        return contextlib.nullcontext()

    def _encode(self, waves: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """waves (B, L) float32 on self.device, zero past lengths; lengths (B,) int64 on CPU ->
        (frames (B, T, D), frame_lengths (B,) int64)."""
        raise NotImplementedError

    def train(self, mode: bool = True) -> "Teacher":
        # Teachers are frozen: dropout and batch-norm statistics never switch to training mode.
        return super().train(False)

    @torch.no_grad()
    def forward(self, waves: torch.Tensor, lengths: torch.Tensor | None = None) -> TeacherOutput:
        waves, lengths = check_waves(waves, lengths)
        short = lengths < self.min_samples
        if bool(short.any()):
            raise ValueError(
                f"{self.name}: clips shorter than {self.min_samples} samples give no frame; "
                f"got lengths {lengths[short].tolist()}")
        with self._autocast():
            frames, frame_lengths = self._encode(waves.to(self.device), lengths)
        frames = frames.float()  # (B, T, D)
        frame_lengths = frame_lengths.to(device="cpu", dtype=torch.int64)
        mask = frame_mask(frame_lengths, frames.shape[1], frames.device)  # (B, T)
        frames = frames.masked_fill(~mask[:, :, None], 0.0)
        return TeacherOutput(frames, frame_lengths, float(self.frame_rate))

    def extra_repr(self) -> str:
        return f"name={self.name!r}, dim={self.dim}, frame_rate={self.frame_rate}, layer={self.layer!r}"
