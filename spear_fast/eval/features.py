"""Per-utterance upstream features on disk: `spear extract` and the probes' feature cache.

A store is a directory:
    meta.json               {"format", "model", "layers" (upstream layer indexes kept, 0-based),
                             "dim", "frame_rate", "pool" ("none" | "mean"), "dtype"}
    shard-NNNNN.safetensors one tensor per utterance id: (num_kept_layers, T, dim) for pool "none",
                            (num_kept_layers, dim) for pool "mean" (the mean over the valid frames)
    index.json              {"shards": {id: shard file}, "frames": {id: T}}
Each shard and then the index are replaced atomically (temp file + os.replace), so a killed run
leaves a consistent store; a rerun with the same settings skips the ids already in the index and
retries the ones that failed. Unreadable audio is skipped, reported, and listed in failed.json. The
clips run through the offline passes' job loop (spear_fast/pipeline/job.py): a failure of the upstream
stops the run naming the clip, after committing the clips done before it.
"""
from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from spear_fast.atomic import atomic_open, atomic_write_json
from spear_fast.data.manifest import ManifestEntry
from spear_fast.errors import UserError
from spear_fast.pipeline.clips import DEFAULT_MAX_DURATION, Skip
from spear_fast.pipeline.inference import run_model
from spear_fast.pipeline.job import ClipOutput, run_clip_job
from spear_fast.pipeline.shard_sink import ShardSink

FORMAT = "spear-fast features v1"
POOLS = ("none", "mean")
DTYPES = {"float32": torch.float32, "float16": torch.float16}
BATCH_SECONDS = 64.0  # padded audio per forward batch (B x longest clip): bounds activation memory
MAX_BATCH = 32  # clips per batch at most
SHARD_UTTERANCES = 256  # utterances per shard file: one atomic write per shard


def parse_layers(text: str | Sequence[int], num_layers: int) -> list[int]:
    """"all" | "last" | "i,j,..." (0-based; negative counts from the end) -> sorted distinct indexes."""
    if isinstance(text, str):
        text = text.strip()
        if text == "all":
            return list(range(num_layers))
        if text == "last":
            return [num_layers - 1]
        try:
            items = [int(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise UserError(f"layers {text!r}: expected 'all', 'last' or comma-separated integers") from None
    else:
        items = [int(x) for x in text]
    if not items:
        raise UserError("layers: no layer given")
    out = []
    for item in items:
        index = item + num_layers if item < 0 else item
        if not 0 <= index < num_layers:
            raise UserError(f"layer {item} is outside the upstream's {num_layers} layers")
        out.append(index)
    return sorted(set(out))


class FeatureStore:
    """Read side: FeatureStore(dir)[utt_id] -> float32 tensor; .meta, .ids, len, `in`."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        meta_path, index_path = self.directory / "meta.json", self.directory / "index.json"
        for path in (meta_path, index_path):
            if not path.is_file():
                raise UserError(f"{path}: not found (not a feature store)")
        self.meta = json.loads(meta_path.read_text())
        if self.meta.get("format") != FORMAT:
            raise UserError(f"{meta_path}: format {self.meta.get('format')!r}, expected {FORMAT!r}")
        index = json.loads(index_path.read_text())
        self.shards: dict[str, str] = index["shards"]
        self.frames: dict[str, int] = index["frames"]
        self._open: dict[str, object] = {}

    @property
    def ids(self) -> list[str]:
        return list(self.shards)

    def __len__(self) -> int:
        return len(self.shards)

    def __contains__(self, utt_id: str) -> bool:
        return utt_id in self.shards

    def __getitem__(self, utt_id: str) -> torch.Tensor:
        from safetensors import safe_open

        if utt_id not in self.shards:
            raise KeyError(f"{self.directory}: no features for id {utt_id!r}")
        shard = self.shards[utt_id]
        if shard not in self._open:
            self._open[shard] = safe_open(str(self.directory / shard), framework="pt")
        return self._open[shard].get_tensor(utt_id).float()


@dataclass
class ExtractReport:
    directory: Path
    extracted: int  # utterances written by this run
    skipped: int  # already in the store
    failed: dict[str, str]  # id -> reason
    seconds: float  # wall time


class FeatureShardSink(ShardSink):
    """extract's store side: each clip's kept layers (mean-pooled or not), written every
    `shard_utterances` clips as one safetensors shard, then the index; both atomically."""

    def __init__(self, directory: Path, index: dict[str, Any], pool: str, dtype: str, shard_utterances: int):
        super().__init__(max_clips=shard_utterances)
        self.directory, self.index, self.pool, self.dtype = directory, index, pool, dtype
        self.shard_number = len(set(index["shards"].values()))

    def keep(self, output: ClipOutput) -> tuple[torch.Tensor, int]:
        x = output.frames  # (n_kept, T, d)
        if self.pool == "mean":
            x = x.mean(dim=1)  # (n_kept, d)
        return x.to("cpu", DTYPES[self.dtype]).contiguous(), output.frames.shape[1]

    def write_shard(self, ids: list[str], items: list[torch.Tensor], frames: list[int]) -> None:
        from safetensors.torch import save

        taken = set(self.index["shards"].values())
        name = f"shard-{self.shard_number:05d}.safetensors"
        while name in taken:  # never overwrite a shard the index points to
            self.shard_number += 1
            name = f"shard-{self.shard_number:05d}.safetensors"
        with atomic_open(self.directory / name, "wb") as stream:
            stream.write(save(dict(zip(ids, items)), metadata={"format": FORMAT}))
        self.index["shards"].update({utt_id: name for utt_id in ids})
        self.index["frames"].update(zip(ids, frames))
        atomic_write_json(self.directory / "index.json", self.index)
        self.shard_number += 1


class FailedClips:
    """extract's skip log (a job.SkipLog): this run's unusable clips, id -> "path: reason" (failed.json)."""

    def __init__(self) -> None:
        self.reasons: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.reasons)

    def forget(self, ids: Iterable[str]) -> None:
        for utt_id in ids:
            self.reasons.pop(utt_id, None)

    def add(self, skips: Iterable[Skip]) -> None:
        self.reasons.update({skip.id: f"{skip.path}: {skip.reason}" for skip in skips})


def kept_layers(kept: Sequence[int]):
    """The job loop's `split` for an upstream: UpstreamOutput -> [(len(kept), T_b, dim) per clip]."""

    def split(out) -> list[torch.Tensor]:
        stacked = torch.stack([out.layers[i] for i in kept], dim=1)  # (B, n_kept, T, d)
        return [stacked[b, :, : int(out.lengths[b])] for b in range(stacked.shape[0])]

    return split


def extract_features(upstream, entries: Sequence[ManifestEntry], out_dir: str | os.PathLike, *,
                     layers: str | Sequence[int] = "all", pool: str = "none", dtype: str = "float32",
                     batch_seconds: float = BATCH_SECONDS, shard_utterances: int = SHARD_UTTERANCES,
                     max_duration: float | None = None, progress: bool = True) -> ExtractReport:
    """Run `upstream` (an eval.upstreams.Upstream) over the manifest rows and store their features.

    Clips (or manifest segments) longer than `max_duration` seconds (default: the pipeline passes' cap,
    spear_fast.pipeline.clips.DEFAULT_MAX_DURATION) are skipped and listed in failed.json with the
    reason, as collect-frames and tokenize do, rather than cut into chunks: a global-attention model
    gives other features for a chunked clip than for the whole one, and one long clip in one piece
    costs (T x T) attention memory. Long recordings belong in the manifest as segments."""
    if max_duration is None:
        max_duration = DEFAULT_MAX_DURATION
    if not max_duration > 0:
        raise UserError(f"extract: max_duration must be > 0 s, got {max_duration}")
    if pool not in POOLS:
        raise UserError(f"extract: pool {pool!r} must be one of {POOLS}")
    if dtype not in DTYPES:
        raise UserError(f"extract: dtype {dtype!r} must be one of {sorted(DTYPES)}")
    ids = [e.id for e in entries]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise UserError(f"extract: duplicate utterance id {dup!r} in the manifest")
    kept = parse_layers(layers, upstream.num_layers)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "model": upstream.info.name, "layers": kept, "dim": upstream.dim,
            "frame_rate": upstream.frame_rate, "pool": pool, "dtype": dtype}
    meta_path, index_path = out_dir / "meta.json", out_dir / "index.json"
    if meta_path.is_file():
        found = json.loads(meta_path.read_text())
        diff = {k: (found.get(k), v) for k, v in meta.items() if found.get(k) != v}
        if diff:
            raise UserError(f"{meta_path}: the store was written with other settings {diff} (found, asked); "
                            f"use another --out or delete it")
    else:
        atomic_write_json(meta_path, meta)
    index = json.loads(index_path.read_text()) if index_path.is_file() else {"shards": {}, "frames": {}}
    todo = [e for e in entries if e.id not in index["shards"]]
    start = time.perf_counter()
    failed = FailedClips()
    forward = functools.partial(run_model, upstream, split=kept_layers(kept), name=f"upstream {upstream.info.name}")
    run_clip_job(todo, forward, FeatureShardSink(out_dir, index, pool, dtype, shard_utterances), failed,
                 batch_seconds=batch_seconds, max_duration=max_duration, min_samples=upstream.min_samples,
                 desc=f"extract {upstream.info.name}", progress=progress, max_clips=MAX_BATCH)
    failed_path = out_dir / "failed.json"
    if failed.reasons:
        atomic_write_json(failed_path, failed.reasons)
        print(f"extract: skipped {len(failed)} unreadable clip(s), listed in {failed_path}; e.g. "
              f"{next(iter(failed.reasons.items()))}")
    elif failed_path.exists():
        failed_path.unlink()
    return ExtractReport(out_dir, extracted=len(todo) - len(failed), skipped=len(entries) - len(todo),
                         failed=failed.reasons, seconds=time.perf_counter() - start)
