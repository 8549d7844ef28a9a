"""The loop of every resumable pass over clips (collect-frames, tokenize, extract):

    duration batches -> decode (clips that cannot be used become Skips) -> the model (its failure stops
    the pass, naming the clip) -> the pass's sink (holds each clip's output until a commit)
    -> skip log -> progress bar

The sink commits when it says a commit is due, when `commit_seconds` of wall time have passed since the
last commit (this bounds the work a crash loses), at the end, and also when the loop stops early (a
model failure, Ctrl-C): what finished before the failure is kept, and a rerun resumes after it.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import torch

from spear_fast.data.manifest import ManifestEntry

from .clips import Skip, duration_batches, load_batch
from .inference import LoadedClips
from .progress import Throughput


class ClipOutput(NamedTuple):
    entry: ManifestEntry
    samples: int  # decoded 16 kHz samples of the clip
    frames: torch.Tensor  # the model's output for the clip alone, e.g. teacher frames (T, D)


class ClipSink(Protocol):
    """Where a pass puts its clips' outputs."""

    def put(self, outputs: list[ClipOutput]) -> list[Skip]:
        """Take one batch's outputs; the clips it cannot use come back as Skips."""

    def commit_due(self) -> bool:
        """Whether what it holds should be committed now."""

    def commit(self) -> None:
        """Make what it holds durable (a no-op when it holds nothing)."""


class SkipLog(Protocol):
    """The clips a pass left out: `forget` the ones a later attempt processed, `add` new ones."""

    def __len__(self) -> int: ...

    def forget(self, ids: Iterable[str]) -> None: ...

    def add(self, skips: Iterable[Skip]) -> None: ...


@dataclass
class JobTimes:
    load_seconds: float = 0.0  # decoding + resampling
    model_seconds: float = 0.0  # the teacher (or upstream), device work included


Forward = Callable[[LoadedClips], list[tuple[ManifestEntry, torch.Tensor]]]  # [(entry, the model's output)]


def run_clip_job(todo: Sequence[ManifestEntry], forward: Forward, sink: ClipSink, skips: SkipLog, *,
                 batch_seconds: float, max_duration: float | None, min_samples: int, desc: str,
                 progress: bool = True, max_clips: int | None = None, commit_seconds: float | None = None) -> JobTimes:
    """Run `forward` (e.g. inference.run_teacher) over the clips of `todo` in duration batches of at most
    `batch_seconds` of padded audio (and `max_clips` clips) and hand each batch's outputs to `sink`;
    returns the time spent decoding and in the model."""
    times = JobTimes()
    bar = Throughput(sum(e.effective_duration for e in todo), desc, progress)
    last_commit = time.perf_counter()
    try:
        for batch in duration_batches(todo, batch_seconds, max_clips):
            clock = time.perf_counter()
            loaded, skipped = load_batch(batch, max_duration, min_samples)
            times.load_seconds += time.perf_counter() - clock
            clock = time.perf_counter()
            results = forward(loaded) if loaded else []
            times.model_seconds += time.perf_counter() - clock
            samples = {entry.id: wave.numel() for entry, wave in loaded}
            outputs = [ClipOutput(entry, samples[entry.id], frames) for entry, frames in results]
            skipped += sink.put(outputs)
            skips.forget(output.entry.id for output in outputs)
            skips.add(skipped)
            bar.update(sum(e.effective_duration for e in batch), skipped=len(skips))
            overdue = commit_seconds is not None and time.perf_counter() - last_commit > commit_seconds
            if sink.commit_due() or overdue:
                sink.commit()
                last_commit = time.perf_counter()
    except BaseException:  # a model failure or an interruption: keep the finished clips
        sink.commit()
        raise
    sink.commit()
    bar.close()
    return times
