"""Running a frozen model (a teacher, or the upstream of `spear extract`) on a batch of decoded clips.

A failure of the model is a failure of the machinery (the device, memory, the model's code), not of
the audio: it stops the pass with a TeacherError that names the clip, and never turns into a skip.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from spear_fast.data.manifest import ManifestEntry

from .clips import pad_waves

LoadedClips = Sequence[tuple[ManifestEntry, torch.Tensor]]  # [(entry, wave (L_i,))]


class TeacherError(RuntimeError):
    """The model failed on a clip that was read fine. The pass stops; what it committed stays, and a
    rerun resumes."""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_model(model: Callable[[torch.Tensor, torch.Tensor], Any], loaded: LoadedClips,
              split: Callable[[Any], Sequence[torch.Tensor]], name: str) -> list[tuple[ManifestEntry, torch.Tensor]]:
    """[(entry, the model's output for that clip)]: the clips padded into one batch (waves (B, L),
    lengths (B,)), `model(waves, lengths)`, and `split` cutting its output into one tensor per clip.
    When the batch fails, each clip is run alone to name the one that fails; TeacherError names it (or
    the batch, when every clip works alone), with the model's error as its cause."""
    device = torch.device(getattr(model, "device", "cpu"))
    try:
        waves, lengths = pad_waves([wave for _, wave in loaded])
        out = model(waves, lengths)
        _sync(device)
    except Exception as error:
        resume = "the work committed so far is kept: rerun the same command to resume"
        if len(loaded) == 1:
            entry = loaded[0][0]
            raise TeacherError(f"{name} failed on clip {entry.id!r} ({entry.path}): "
                               f"{type(error).__name__}: {error}; {resume}") from error
        for item in loaded:  # find the clip the model fails on
            run_model(model, [item], split, name)
        ids = [entry.id for entry, _ in loaded]
        raise TeacherError(f"{name} failed on a batch of {len(ids)} clips ({', '.join(ids[:5])}"
                           f"{', ...' if len(ids) > 5 else ''}) that each work alone: {type(error).__name__}: "
                           f"{error}; lower --batch-seconds ({resume})") from error
    return [(entry, output) for (entry, _), output in zip(loaded, split(out), strict=True)]


def teacher_frames(out) -> list[torch.Tensor]:
    """A TeacherOutput cut per clip: [frames (T_i, D)], on the teacher's device."""
    return [out.frames[row, : int(out.frame_lengths[row])] for row in range(out.frames.shape[0])]


def run_teacher(teacher, loaded: LoadedClips) -> list[tuple[ManifestEntry, torch.Tensor]]:
    """Teacher frames of each clip: [(entry, frames (T_i, D) on the teacher's device)]."""
    return run_model(teacher, loaded, teacher_frames, f"teacher {getattr(teacher, 'name', type(teacher).__name__)}")
