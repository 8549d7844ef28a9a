"""What the offline passes share: picking a worker's clips, padding-aware duration batches, loading a
batch of clips (bad files skipped with their reason), running a teacher on it (a failure of the
teacher stops the pass, naming the clip), worker ids from `--shard i/n` or torchrun, and atomic JSON
files.
"""
from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from spear_fast.audio import AudioError, load_audio
from spear_fast.data.manifest import DOMAINS, ManifestEntry
from spear_fast.errors import UserError
from spear_fast.sample_rate import SAMPLE_RATE

# Longest clip a pass accepts (seconds). Longer files are refused with a reason in the skip report
# rather than cut into chunks: a global-attention teacher (WavLM, HuBERT) gives different frames for a
# chunked file than for the whole one, and a 2-hour file in one piece needs (T x T) attention memory.
# Long recordings belong in the manifest as segments (offset + segment_duration), which every pass reads
# without decoding the rest of the file.
DEFAULT_MAX_DURATION = 600.0
DOMAIN_CHOICES = ("speech", "audio", "all")


def parse_shard(text: str | None) -> tuple[int, int]:
    """'i/n' -> (i, n) with 0 <= i < n; None -> the torchrun worker (RANK/WORLD_SIZE) or (0, 1)."""
    if text is None:
        rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
        if rank is None or world is None:
            return 0, 1
        text = f"{rank}/{world}"
    index, sep, count = str(text).partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        raise UserError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if not sep or not 0 <= i < n or n > 9999:
        raise UserError(f"--shard must be i/n with 0 <= i < n <= 9999, got {text!r}")
    return i, n


def worker_tag(worker: tuple[int, int]) -> str:
    return f"w{worker[0]:04d}of{worker[1]:04d}"


def select_domain(entries: Sequence[ManifestEntry], domain: str) -> list[ManifestEntry]:
    if domain not in DOMAIN_CHOICES:
        raise UserError(f"domain must be one of {DOMAIN_CHOICES}, got {domain!r}")
    if domain == "all":
        return list(entries)
    assert domain in DOMAINS
    return [e for e in entries if e.domain == domain]


def shard_entries(entries: Sequence[ManifestEntry], worker: tuple[int, int]) -> list[ManifestEntry]:
    """Worker i of n takes every n-th entry starting at i (manifest order): equal shares of every part
    of the manifest, and the same split on every restart of an unchanged manifest."""
    index, count = worker
    return list(entries[index::count])


def duration_batches(entries: Sequence[ManifestEntry], batch_seconds: float,
                     max_clips: int | None = None) -> list[list[ManifestEntry]]:
    """Clips sorted by duration, cut into batches whose PADDED size (longest clip x clips) stays within
    batch_seconds (and at most max_clips clips when given); a clip longer than batch_seconds gets a
    batch of its own."""
    if not batch_seconds > 0:
        raise UserError(f"batch_seconds must be > 0, got {batch_seconds}")
    batches: list[list[ManifestEntry]] = []
    batch: list[ManifestEntry] = []
    for entry in sorted(entries, key=lambda e: (e.effective_duration, e.id)):
        # sorted ascending, so the newcomer is the longest clip of the batch
        full = max_clips is not None and len(batch) >= max_clips
        if batch and (full or entry.effective_duration * (len(batch) + 1) > batch_seconds):
            batches.append(batch)
            batch = []
        batch.append(entry)
    if batch:
        batches.append(batch)
    return batches


@dataclass
class Skip:
    """A clip left out of a pass, and why."""

    id: str
    path: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"id": self.id, "path": self.path, "reason": self.reason}


def load_clip(entry: ManifestEntry, max_duration: float | None, min_samples: int) -> torch.Tensor:
    """The entry's audio as a 16 kHz mono float32 wave (L,); AudioError naming the reason."""
    wave, _ = load_audio(
        entry.path,
        SAMPLE_RATE,
        offset=entry.offset,
        duration=entry.segment_duration,
        max_duration=max_duration,
        min_samples=min_samples,
    )
    return wave


def load_batch(
    entries: Sequence[ManifestEntry], max_duration: float | None, min_samples: int
) -> tuple[list[tuple[ManifestEntry, torch.Tensor]], list[Skip]]:
    """Decode every clip of a batch; unusable ones come back as Skips."""
    loaded, skipped = [], []
    for entry in entries:
        try:
            loaded.append((entry, load_clip(entry, max_duration, min_samples)))
        except AudioError as error:
            skipped.append(Skip(entry.id, entry.path, error.reason))
        except ValueError as error:  # bad offset/duration in the manifest row
            skipped.append(Skip(entry.id, entry.path, str(error)))
    return loaded, skipped


def pad_waves(waves: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """[(L_i,)] -> (waves (B, max L) zero-padded, lengths (B,) int64)."""
    lengths = torch.tensor([w.numel() for w in waves], dtype=torch.int64)  # (B,)
    batch = torch.zeros(len(waves), int(lengths.max()), dtype=torch.float32)  # (B, L)
    for row, wave in enumerate(waves):
        batch[row, : wave.numel()] = wave
    return batch, lengths


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TeacherError(RuntimeError):
    """The teacher failed on a clip that was read fine: a failure of the machinery (the device, memory,
    the teacher's code), not of the audio. The pass stops; what it committed stays, and a rerun resumes."""


def run_teacher(
    teacher, loaded: Sequence[tuple[ManifestEntry, torch.Tensor]]
) -> tuple[list[tuple[ManifestEntry, torch.Tensor]], float]:
    """Teacher frames of each clip: ([(entry, frames (T_i, D) on the teacher's device)], seconds spent in
    the teacher). When the batch fails, each clip is run alone to name the one that fails; TeacherError
    names it (or the batch, when every clip works alone), with the teacher's error as its cause."""
    device = torch.device(getattr(teacher, "device", "cpu"))
    started = time.perf_counter()
    try:
        waves, lengths = pad_waves([wave for _, wave in loaded])
        out = teacher(waves, lengths)
        _sync(device)
    except Exception as error:
        name = getattr(teacher, "name", type(teacher).__name__)
        resume = "the work committed so far is kept: rerun the same command to resume"
        if len(loaded) == 1:
            entry = loaded[0][0]
            raise TeacherError(f"teacher {name} failed on clip {entry.id!r} ({entry.path}): "
                               f"{type(error).__name__}: {error}; {resume}") from error
        for item in loaded:  # find the clip the teacher fails on
            run_teacher(teacher, [item])
        ids = [entry.id for entry, _ in loaded]
        raise TeacherError(f"teacher {name} failed on a batch of {len(ids)} clips ({', '.join(ids[:5])}"
                           f"{', ...' if len(ids) > 5 else ''}) that each work alone: {type(error).__name__}: "
                           f"{error}; lower --batch-seconds ({resume})") from error
    results = [(entry, out.frames[row, : int(out.frame_lengths[row])]) for row, (entry, _) in enumerate(loaded)]
    return results, time.perf_counter() - started


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as stream:
        return json.load(stream)


@contextmanager
def exclusive_lock(path: Path) -> Iterator[bool]:
    """flock on `path` without waiting: yields True when this process holds the lock, False when
    another does. The kernel drops the lock if the holder dies, so no stale lock survives a crash."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


class Throughput:
    """tqdm bar over seconds of audio, showing audio-hours per wall-clock hour."""

    def __init__(self, total_seconds: float, desc: str, progress: bool = True):
        from tqdm import tqdm

        self.bar = tqdm(total=round(total_seconds, 1), desc=desc, unit="s audio", disable=not progress,
                        dynamic_ncols=True, bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s audio [{elapsed}<{remaining}{postfix}]")
        self.started = time.perf_counter()
        self.done = 0.0

    def update(self, seconds: float, **postfix: Any) -> None:
        self.done += seconds
        self.bar.update(round(seconds, 1))
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        self.bar.set_postfix(audio_h_per_h=f"{self.done / elapsed:.1f}", **postfix, refresh=False)

    def close(self) -> None:
        self.bar.close()
