"""`spear collect-frames`: teacher frames sampled from a manifest into a FrameStore, to fit MVQ on.

Which frames: the manifest's clips (after --domain) in a random order drawn from --seed, taken until
their expected frames (min(frames_per_clip, duration x frame rate) each) reach --max-frames; from
each clip, --frames-per-clip frames drawn at random without replacement (0 = all its frames), from a
generator seeded by (seed, clip id), so the frames do not depend on batching, sharding or restarts.

Resume: worker i of n writes its frames as small complete frame stores ("parts",
parts/w{i}of{n}-{seq}/) and after each part rewrites its done-list collect-w{i}of{n}.json atomically
(parts committed, clip ids done, finished flag). A restart deletes parts not in the done-list (an
interrupted write), skips the clips it lists, and a finished worker returns at once. When every worker
has finished, the parts are merged into the frame store in --out (index.json written last) and deleted.
Unusable clips are listed in skipped-w{i}of{n}.jsonl (merged into skipped.jsonl); an interrupted
worker retries them on restart, a finished one does not.
"""
from __future__ import annotations

import functools
import math
import shutil
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from spear_fast.atomic import atomic_write_json
from spear_fast.audio import MIN_SAMPLES
from spear_fast.data.manifest import ManifestEntry, read_manifest
from spear_fast.config import check, field
from spear_fast.errors import UserError
from spear_fast.sample_rate import SAMPLE_RATE

from .clips import DEFAULT_MAX_DURATION, Skip, select_domain
from .inference import run_teacher
from .job import ClipOutput, run_clip_job
from .locks import exclusive_lock
from .report import SkipReport, merge_reports
from .shard_sink import ShardSink
from .workers import all_finished, read_json, selection_hash, shard_entries, worker_tag

PARTS_DIR = "parts"
REPORT_NAME = "skipped.jsonl"
MERGE_BATCH = 65536  # frames per read while merging parts


@dataclass
class CollectConfig:
    manifest: Path = field(doc="JSON-lines manifest")
    teacher: str = field(doc="teacher spec (spear_fast.teachers.load_teacher)")
    out: Path = field(doc="frame store directory (spear_fast.mvq.FrameStore)")
    max_frames: int = field(200_000, "about this many frames in all (fewer when clips are skipped)", ge=1)
    frames_per_clip: int = field(100, "random frames per clip; 0 = every frame of the chosen clips", ge=0)
    domain: str = field("all", "speech | audio | all: which manifest clips to sample")
    seed: int = field(0, "seed of the clip subset and of the frames drawn per clip")
    batch_seconds: float = field(60.0, "padded audio per teacher call")
    worker: tuple[int, int] = field((0, 1), "(i, n): this process is worker i of n")
    max_duration: float | None = field(DEFAULT_MAX_DURATION, "longer clips are skipped with a reason (None: no cap)")
    device: str = field("cpu", "device of the teacher")
    part_frames: int = field(50_000, "commit a part after this many frames (or part_seconds, if sooner)", ge=1)
    part_seconds: float = field(300.0, "commit a part after this much wall time (or part_frames, if sooner)", gt=0.0)
    finalize: bool = field(True, "merge the parts once every worker has finished")
    progress: bool = field(True, "progress bar")

    def __post_init__(self) -> None:
        self.manifest, self.out = Path(self.manifest), Path(self.out)
        check(self)


@dataclass
class CollectSummary:
    worker: str
    clips: int = 0  # clips chosen for this worker
    already_done: int = 0
    collected_clips: int = 0  # clips sampled by this run
    frames: int = 0  # frames written by this run
    skipped: int = 0
    audio_seconds: float = 0.0
    teacher_seconds: float = 0.0
    load_seconds: float = 0.0
    wall_seconds: float = 0.0
    finalized: bool = False

    def describe(self) -> str:
        speed = self.audio_seconds / self.wall_seconds if self.wall_seconds else 0.0
        return (f"{self.worker}: {self.frames} frames from {self.collected_clips} clips ({self.audio_seconds / 3600:.3f} h), "
                f"{self.already_done} clips already done, {self.skipped} skipped; teacher {self.teacher_seconds:.1f} s, "
                f"decode {self.load_seconds:.1f} s, wall {self.wall_seconds:.1f} s ({speed:.1f} audio-h/h)")


def choose_clips(entries: list[ManifestEntry], frame_rate: float, max_frames: int, frames_per_clip: int,
                 seed: int) -> list[ManifestEntry]:
    """A seeded random subset whose expected frames reach max_frames (all clips if they do not)."""
    order = np.random.default_rng(seed).permutation(len(entries))
    chosen, expected = [], 0
    for index in order.tolist():
        if expected >= max_frames:
            break
        entry = entries[index]
        frames = math.ceil(entry.effective_duration * frame_rate)
        expected += min(frames, frames_per_clip) if frames_per_clip else frames
        chosen.append(entry)
    return chosen


def sample_rows(utt_id: str, num_frames: int, frames_per_clip: int, seed: int) -> torch.Tensor:
    """Sorted frame indexes drawn for one clip: (min(k, T),) int64, from a generator seeded by
    (seed, crc32 of the id)."""
    if frames_per_clip == 0 or num_frames <= frames_per_clip:
        return torch.arange(num_frames)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(utt_id.encode()))
    return torch.randperm(num_frames, generator=generator)[:frames_per_clip].sort().values


def _done_path(out: Path, worker: tuple[int, int]) -> Path:
    return out / f"collect-{worker_tag(worker)}.json"


class FramePartSink(ShardSink):
    """collect-frames' store side: the frames sampled from each clip, committed as one part (a small
    frame store, parts/<tag>-<seq>) and then the worker's done-list, rewritten atomically."""

    def __init__(self, config: CollectConfig, state: dict, dim: int, summary: CollectSummary):
        super().__init__(max_frames=config.part_frames)
        self.config, self.state, self.dim, self.summary = config, state, dim, summary
        self.tag = worker_tag(config.worker)
        self.done = set(state["done"])

    def keep(self, output: ClipOutput) -> tuple[torch.Tensor, int] | Skip:
        from spear_fast.mvq.frame_store import FLOAT16_MAX

        entry, samples, frames = output  # frames (T, D)
        rows = sample_rows(entry.id, frames.shape[0], self.config.frames_per_clip, self.config.seed)
        picked = frames[rows.to(frames.device)].float().cpu()  # (k, D)
        if picked.shape[0] == 0 or not bool(torch.isfinite(picked).all()) or bool((picked.abs() > FLOAT16_MAX).any()):
            return Skip(entry.id, entry.path, "the teacher gave no frame, or NaN/Inf/float16-overflowing frames")
        self.done.add(entry.id)
        self.summary.collected_clips += 1
        self.summary.frames += picked.shape[0]
        self.summary.audio_seconds += samples / SAMPLE_RATE
        return picked, picked.shape[0]

    def write_shard(self, ids: list[str], items: list[torch.Tensor], frames: list[int]) -> None:
        from spear_fast.mvq.frame_store import FrameStoreWriter

        name = f"{self.tag}-{len(self.state['parts']):06d}"
        writer = FrameStoreWriter(self.config.out / PARTS_DIR / name, self.dim)
        for picked in items:
            writer.add(picked)
        writer.close()
        self.state["parts"].append(name)
        self.state["done"] = sorted(self.done)
        atomic_write_json(_done_path(self.config.out, self.config.worker), self.state)


def collect_frames(config: CollectConfig) -> CollectSummary:
    """Run (or finish) worker config.worker's part of the collection; merge when all are done."""
    from spear_fast.mvq.frame_store import INDEX_FILE
    from spear_fast.teachers import load_teacher

    started = time.perf_counter()
    tag = worker_tag(config.worker)
    out = config.out
    done_path = _done_path(out, config.worker)
    state = read_json(done_path) if done_path.is_file() else None
    if (out / INDEX_FILE).is_file():
        if state is None:
            raise UserError(f"collect-frames: {out} already holds a frame store that this worker ({tag}) did not "
                            f"write; choose another --out")
        print(f"collect-frames: {out} is complete already")
        summary = CollectSummary(**state["summary"])
        summary.finalized = True
        return summary

    entries = select_domain(read_manifest(config.manifest), config.domain)  # bad input fails before the teacher loads
    teacher = load_teacher(config.teacher, device=config.device)
    chosen = choose_clips(entries, teacher.frame_rate, config.max_frames, config.frames_per_clip, config.seed)
    mine = shard_entries(chosen, config.worker)
    selection = selection_hash(mine, (config.teacher, config.frames_per_clip, config.seed))
    if state is not None and (state["selection"] != selection or state["dim"] != teacher.dim):
        raise UserError(f"collect-frames: {done_path} was written for other settings (manifest, teacher, seed, "
                        f"frames per clip or shard); choose another --out or delete it")
    if state is None:
        state = {"selection": selection, "dim": teacher.dim, "teacher": teacher.name, "parts": [], "done": [],
                 "finished": False, "summary": asdict(CollectSummary(worker=tag))}
    summary = CollectSummary(worker=tag, clips=len(mine))
    parts_dir = out / PARTS_DIR
    parts_dir.mkdir(parents=True, exist_ok=True)
    for part in parts_dir.glob(f"{tag}-*"):  # interrupted part writes
        if part.name not in state["parts"]:
            shutil.rmtree(part)
    report = SkipReport(out / f"skipped-{tag}.jsonl")
    done = set(state["done"])
    todo = [e for e in mine if e.id not in done]
    summary.already_done = len(mine) - len(todo)
    if state["finished"]:  # skipped clips are not retried once a worker has finished
        print(f"collect-frames {tag}: already finished ({done_path})")
        summary = CollectSummary(**state["summary"])
        summary.finalized = _maybe_merge(config) if config.finalize else False
        return summary

    parts = FramePartSink(config, state, teacher.dim, summary)
    min_samples = max(MIN_SAMPLES, int(getattr(teacher, "min_samples", 1)))
    times = run_clip_job(todo, functools.partial(run_teacher, teacher), parts, report,
                         batch_seconds=config.batch_seconds, max_duration=config.max_duration,
                         min_samples=min_samples, desc=f"collect {tag}", progress=config.progress,
                         commit_seconds=config.part_seconds)
    summary.load_seconds, summary.teacher_seconds = times.load_seconds, times.model_seconds
    summary.skipped = len(report)
    summary.wall_seconds = time.perf_counter() - started
    state["finished"] = True
    state["summary"] = asdict(summary)
    atomic_write_json(done_path, state)
    print(summary.describe())
    if config.finalize:
        summary.finalized = _maybe_merge(config)
    return summary


def _finished(done_path: Path) -> bool:
    return done_path.is_file() and read_json(done_path)["finished"]


def _maybe_merge(config: CollectConfig) -> bool:
    count = config.worker[1]
    records = [_done_path(config.out, (i, count)) for i in range(count)]
    if not all_finished("collect-frames", records, _finished, "merges the frame store"):
        return False
    return merge_parts(config.out, count)


def merge_parts(out: Path, count: int) -> bool:
    """Merge every worker's committed parts into the frame store at `out` (worker order, then part
    order), then delete the parts. False when another process is merging."""
    from spear_fast.mvq.frame_store import INDEX_FILE, FrameStore, FrameStoreWriter

    out = Path(out)
    paths = [_done_path(out, (i, count)) for i in range(count)]
    missing = [p.name for p in paths if not _finished(p)]
    if missing:
        raise UserError(f"collect-frames --finalize {out}: workers not finished: {missing}")
    with exclusive_lock(out / ".finalize.lock") as mine:
        if not mine:
            print(f"collect-frames: another process is merging {out}")
            return False
        if (out / INDEX_FILE).is_file():
            return True
        states = [read_json(p) for p in paths]
        dims = {s["dim"] for s in states}
        if len(dims) != 1:
            raise UserError(f"collect-frames: workers of {out} saw different frame dims {sorted(dims)}")
        parts = [out / PARTS_DIR / name for s in states for name in s["parts"]]
        if not parts:
            raise UserError(f"collect-frames: no frames were collected in {out} (every clip skipped? see its "
                            f"skipped-*.jsonl)")
        writer = FrameStoreWriter(out, dims.pop())
        for part in parts:
            for frames in FrameStore(part).iter_batches(MERGE_BATCH):
                writer.add(frames)
        store = writer.close()  # index.json last: the store is complete from here on
        shutil.rmtree(out / PARTS_DIR, ignore_errors=True)
        merged = merge_reports(out.glob("skipped-w*.jsonl"), out / REPORT_NAME)
        print(f"frame store {out}: {len(store)} frames of dim {store.dim}; {merged} clip(s) skipped "
              f"(see {out / REPORT_NAME})")
        return True
