"""`spear tokenize`: teacher -> MVQ quantiser -> token store, over a manifest, resumable and sharded.

Worker i of n (`--shard i/n`, or torchrun's RANK/WORLD_SIZE) takes every n-th clip of the manifest
(after the --domain filter), groups its clips by duration into padding-aware batches of at most
--batch-seconds of padded audio, runs the teacher, encodes every valid frame with the quantiser and
appends the tokens to the store through TokenStoreWriter (worker-named shards, written atomically).

Identity: the teacher spec (weights, layer, options such as context and dtype), the quantiser's
hash and the refine passes are recorded in every shard and in meta.json; resuming or extending a
store with other settings is refused, naming the difference.
Restart: ids already in a complete shard (any worker's) are not processed again; a worker whose
marker `workers/w{i}of{n}.json` says it finished the same clip list with the same settings returns
at once, unless some of its clips are in no shard and no skip report (a lost or
removed shard): those are tokenized again, so a rerun repairs a store. Unusable clips go to
`skipped-w{i}of{n}.jsonl` (id, path, reason) and are tried again on the next run. When all n markers
exist, the worker that sees it (under a file lock) checks that every clip of the manifest is in a
shard or in a skip report (else it removes the markers of the workers owning the missing clips and
names them), runs `finalize_token_store` and merges the skip reports into `skipped.jsonl`;
`--finalize` does the same by hand. Timings (audio decoding, teacher, MVQ, writing) are printed at the end, kept in the
worker's marker and summed over workers in summary.json at finalize.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from spear_fast.atomic import atomic_write_json
from spear_fast.audio import MIN_SAMPLES
from spear_fast.data.manifest import ManifestEntry, read_manifest
from spear_fast.data.token_store import (
    DEFAULT_SHARD_FRAMES,
    TokenStore,
    TokenStoreMeta,
    TokenStoreWriter,
    finalize_token_store,
    stored_ids,
)
from spear_fast.config import check, field
from spear_fast.errors import UserError
from spear_fast.sample_rate import SAMPLE_RATE
from spear_fast.teachers.spec import TeacherSpec

from .clips import DEFAULT_MAX_DURATION, Skip, select_domain
from .inference import run_teacher
from .job import ClipOutput, run_clip_job
from .locks import exclusive_lock
from .report import SkipReport, merge_reports, read_report
from .workers import all_finished, read_json, selection_hash, shard_entries, worker_tag

MARKER_DIR = "workers"
REPORT_NAME = "skipped.jsonl"
SUMMARY_NAME = "summary.json"  # written at finalize: timings (teacher vs MVQ ...) of every worker and totals


@dataclass
class TokenizeConfig:
    manifest: Path = field(doc="JSON-lines manifest")
    teacher: str = field(doc="teacher spec (spear_fast.teachers.load_teacher)")
    quantizer: Path = field(doc=".safetensors written by fit-mvq / Quantizer.save")
    out: Path = field(doc="token store directory")
    domain: str = field("all", "speech | audio | all: which manifest clips to tokenise")
    worker: tuple[int, int] = field((0, 1), "(i, n): this process is worker i of n")
    batch_seconds: float = field(60.0, "padded audio per teacher call (longest clip x clips)", gt=0.0)
    max_duration: float | None = field(DEFAULT_MAX_DURATION, "longer clips are skipped with a reason (None: no cap)",
                                       gt=0.0)
    device: str = field("cpu", "device of the teacher and the quantiser")
    shard_frames: int = field(DEFAULT_SHARD_FRAMES, "token frames per shard file")
    flush_seconds: float = field(600.0, "also close a shard after this much wall time (bounds the work a crash "
                                        "loses)", gt=0.0)
    refine_iters: int = field(5, "MVQ refine passes (SPEAR / multi-quantization default)", ge=0)
    finalize: bool = field(True, "finalize the store once every worker's marker exists")
    progress: bool = field(True, "progress bar")

    def __post_init__(self) -> None:
        self.manifest, self.quantizer, self.out = Path(self.manifest), Path(self.quantizer), Path(self.out)
        check(self)


@dataclass
class TokenizeSummary:
    worker: str
    clips: int = 0  # clips of this worker's list
    already_done: int = 0  # stored before this run
    tokenized: int = 0  # stored by this run
    skipped: int = 0
    audio_seconds: float = 0.0  # audio tokenised by this run
    frames: int = 0
    load_seconds: float = 0.0  # decoding + resampling
    teacher_seconds: float = 0.0
    mvq_seconds: float = 0.0
    write_seconds: float = 0.0
    wall_seconds: float = 0.0
    finalized: bool = False
    skipped_ids: list[str] = dataclasses.field(default_factory=list)

    def describe(self) -> str:
        speed = self.audio_seconds / self.wall_seconds if self.wall_seconds else 0.0
        return (f"{self.worker}: {self.tokenized} clips tokenised ({self.audio_seconds / 3600:.3f} h, {self.frames} frames), "
                f"{self.already_done} already done, {self.skipped} skipped; teacher {self.teacher_seconds:.1f} s vs "
                f"MVQ {self.mvq_seconds:.1f} s (decode {self.load_seconds:.1f} s, write {self.write_seconds:.1f} s, "
                f"wall {self.wall_seconds:.1f} s, {speed:.1f} audio-h/h)")


def teacher_store_name(teacher) -> tuple[str, int | None]:
    """(teacher field, layer field) of the token store meta: an integer layer goes in `layer`, a named
    one (CREPE's "conv5") into the name, so two layers of one teacher never share a store."""
    layer = getattr(teacher, "layer", None)
    if isinstance(layer, int) and not isinstance(layer, bool):
        return teacher.name, layer
    if layer in (None, "last"):
        return teacher.name, None
    return f"{teacher.name}@{layer}", None


def _marker_path(out: Path, worker: tuple[int, int]) -> Path:
    return out / MARKER_DIR / f"{worker_tag(worker)}.json"


def _report_path(out: Path, worker: tuple[int, int]) -> Path:
    return out / f"skipped-{worker_tag(worker)}.jsonl"


class TokenSink:
    """tokenize's store side (a job.ClipSink): a batch's frames are encoded in one quantiser call and
    handed to the TokenStoreWriter, which writes a shard every `shard_frames` frames; a commit writes
    the rest as a shard of its own."""

    def __init__(self, writer: TokenStoreWriter, quantizer, refine_iters: int, summary: TokenizeSummary):
        self.writer, self.quantizer, self.refine_iters, self.summary = writer, quantizer, refine_iters, summary

    def put(self, outputs: list[ClipOutput]) -> list[Skip]:
        kept = [output for output in outputs if output.frames.shape[0]]
        skips = [Skip(o.entry.id, o.entry.path, "the teacher gave no frame for this clip")
                 for o in outputs if not o.frames.shape[0]]
        if kept:
            clock = time.perf_counter()
            frames = torch.cat([output.frames for output in kept])  # (sum T_i, D)
            tokens = self.quantizer.encode(frames, self.refine_iters).cpu()  # (sum T_i, N) uint8
            self.summary.mvq_seconds += time.perf_counter() - clock
            clock = time.perf_counter()
            for output, part in zip(kept, tokens.split([output.frames.shape[0] for output in kept])):
                self.writer.add(output.entry.id, part.numpy())
                self.summary.frames += part.shape[0]
                self.summary.audio_seconds += output.samples / SAMPLE_RATE
            self.summary.write_seconds += time.perf_counter() - clock
        self.summary.tokenized += len(kept)
        return skips

    def commit_due(self) -> bool:
        return False  # the writer closes a shard every shard_frames frames by itself

    def commit(self) -> None:
        clock = time.perf_counter()
        self.writer.flush()
        self.summary.write_seconds += time.perf_counter() - clock


def tokenize(config: TokenizeConfig) -> TokenizeSummary:
    """Run (or finish) worker config.worker's part; finalize when every worker is done."""
    from spear_fast.mvq.quantizer import Quantizer
    from spear_fast.teachers import load_teacher

    started = time.perf_counter()
    tag = worker_tag(config.worker)
    entries = shard_entries(select_domain(read_manifest(config.manifest), config.domain), config.worker)
    summary = TokenizeSummary(worker=tag, clips=len(entries))
    quantizer = Quantizer.load(config.quantizer, device=config.device)
    selection = selection_hash(entries)
    teacher_spec = TeacherSpec.parse(config.teacher).identity()
    marker_path = _marker_path(config.out, config.worker)
    report = SkipReport(_report_path(config.out, config.worker))
    if marker_path.is_file():
        marker = read_json(marker_path)
        if (marker.get("selection") == selection and marker.get("quantizer_hash") == quantizer.fingerprint()
                and marker.get("teacher_spec") == teacher_spec and marker.get("refine_iters") == config.refine_iters):
            stored = stored_ids(config.out)
            uncovered = [e.id for e in entries if e.id not in stored and e.id not in report]
            if not uncovered:
                summary = TokenizeSummary(**{**marker["summary"], "already_done": marker["summary"]["clips"],
                                             "tokenized": 0, "finalized": False})
                print(f"tokenize {tag}: already finished ({marker_path}); nothing to do")
                summary.finalized = _maybe_finalize(config) if config.finalize else False
                return summary
            print(f"tokenize {tag}: {len(uncovered)} clip(s) are in no shard and no skip report "
                  f"(e.g. {uncovered[:3]}), a lost or removed shard; tokenizing them again")

    teacher = load_teacher(config.teacher, device=config.device)
    if teacher.dim != quantizer.dim:
        raise UserError(f"tokenize: teacher {teacher.name} gives {teacher.dim}-d frames but quantizer "
                        f"{config.quantizer} expects dim {quantizer.dim}")
    name, layer = teacher_store_name(teacher)
    meta = TokenStoreMeta(teacher=name, layer=layer, frame_rate=float(teacher.frame_rate),
                          num_codebooks=quantizer.num_codebooks, quantizer_hash=quantizer.fingerprint(),
                          codebook_size=quantizer.codebook_size, teacher_spec=teacher_spec,
                          refine_iters=config.refine_iters)
    min_samples = max(MIN_SAMPLES, int(getattr(teacher, "min_samples", 1)))
    with TokenStoreWriter(config.out, meta, config.shard_frames, worker=config.worker) as writer:
        todo = [e for e in entries if e.id not in writer]
        summary.already_done = len(entries) - len(todo)
        report.forget(e.id for e in entries if e.id in writer)
        sink = TokenSink(writer, quantizer, config.refine_iters, summary)
        times = run_clip_job(todo, functools.partial(run_teacher, teacher), sink, report,
                             batch_seconds=config.batch_seconds, max_duration=config.max_duration,
                             min_samples=min_samples, desc=f"tokenize {tag}", progress=config.progress,
                             commit_seconds=config.flush_seconds)
    summary.load_seconds, summary.teacher_seconds = times.load_seconds, times.model_seconds
    summary.skipped = len(report)
    summary.skipped_ids = [r.id for r in report.records]
    summary.wall_seconds = time.perf_counter() - started
    atomic_write_json(marker_path, {"selection": selection, "quantizer_hash": quantizer.fingerprint(),
                                    "teacher_spec": teacher_spec, "refine_iters": config.refine_iters,
                                    "summary": asdict(summary)})
    print(summary.describe())
    if config.finalize:
        summary.finalized = _maybe_finalize(config)
    return summary


def _maybe_finalize(config: TokenizeConfig) -> bool:
    """Finalize when all n workers' markers exist and the store is not final yet (or is older than a
    marker). Returns True when the store is final after the call."""
    count = config.worker[1]
    markers = [_marker_path(config.out, (i, count)) for i in range(count)]
    if not all_finished("tokenize", markers, Path.is_file, "finalizes the store"):
        return False
    return finalize_tokens(config.out, count, manifest=config.manifest, domain=config.domain)


def finalize_tokens(out: Path, count: int | None = None, *, manifest: Path | None = None,
                    domain: str = "all") -> bool:
    """Index the store and merge the skip reports (under a lock; another process finalizing -> False).

    With the manifest, every clip of it (after `domain`) must be in a shard or in a skip report; else
    the markers of the workers owning the missing clips are removed and UserError names the clips and
    the `--shard` runs that tokenize exactly them."""
    out = Path(out)
    if count is not None:
        missing = [i for i in range(count) if not _marker_path(out, (i, count)).is_file()]
        if missing:
            raise UserError(f"finalize {out}: workers {missing} of {count} have not finished (no marker in {out / MARKER_DIR})")
    meta_path = out / "meta.json"
    with exclusive_lock(out / ".finalize.lock") as mine:
        if not mine:
            print(f"tokenize: another process is finalizing {out}")
            return False
        markers = list((out / MARKER_DIR).glob("*.json"))
        newest = max((m.stat().st_mtime for m in markers), default=0.0)
        if meta_path.is_file() and meta_path.stat().st_mtime >= newest and is_final(out):
            return True  # final already (and readable), and no worker ran since
        if manifest is not None:
            _check_coverage(out, select_domain(read_manifest(manifest), domain), count or 1)
        store = finalize_token_store(out)
        merged = merge_reports(out.glob("skipped-w*.jsonl"), out / REPORT_NAME)
        workers = {m.stem: read_json(m)["summary"] for m in sorted(markers)}
        totals = {key: round(sum(w[key] for w in workers.values()), 3)
                  for key in ("audio_seconds", "load_seconds", "teacher_seconds", "mvq_seconds", "write_seconds")}
        atomic_write_json(out / SUMMARY_NAME, {"utterances": len(store), "skipped": merged, "totals": totals,
                                               "workers": workers})
        print(f"finalized {out}: {len(store)} utterances, teacher {store.meta.teacher}, "
              f"{store.meta.num_codebooks} codebooks; {merged} clip(s) skipped (see {out / REPORT_NAME})")
        return True


def _check_coverage(out: Path, entries: list[ManifestEntry], count: int) -> None:
    """UserError (after removing the markers of the workers concerned) unless every clip is stored or
    reported as skipped. Worker i of n owns clips i, i + n, ... of the list (shard_entries)."""
    covered = stored_ids(out) | {r.id for path in out.glob("skipped-w*.jsonl") for r in read_report(path)}
    missing = [(k % count, e.id) for k, e in enumerate(entries) if e.id not in covered]
    if not missing:
        return
    workers = sorted({worker for worker, _ in missing})
    for worker in workers:
        _marker_path(out, (worker, count)).unlink(missing_ok=True)
    ids = [utt_id for _, utt_id in missing]
    raise UserError(f"finalize {out}: {len(ids)} clip(s) of the manifest are in no shard and no skip report "
                    f"(e.g. {ids[:5]}), a lost or removed shard; rerun tokenize with "
                    + ", ".join(f"--shard {w}/{count}" for w in workers) + " to tokenize them")


def is_final(out: Path) -> bool:
    """True when `out` is a finalized token store."""
    try:
        TokenStore(out)
    except ValueError:
        return False
    return True
