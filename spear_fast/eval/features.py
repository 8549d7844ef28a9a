"""Per-utterance upstream features on disk: `spear extract` and the probes' feature cache.

A store is a directory:
    meta.json               {"format", "model", "layers" (upstream layer indexes kept, 0-based),
                             "dim", "frame_rate", "pool" ("none" | "mean"), "dtype"}
    shard-NNNNN.safetensors one tensor per utterance id: (num_kept_layers, T, dim) for pool "none",
                            (num_kept_layers, dim) for pool "mean" (the mean over the valid frames)
    index.json              {"shards": {id: shard file}, "frames": {id: T}}
Each shard and then the index are replaced atomically (temp file + os.replace), so a killed run
leaves a consistent store; a rerun with the same settings skips the ids already in the index and
retries the ones that failed. Unreadable audio is skipped, reported, and listed in failed.json.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from spear_fast.atomic import atomic_write_json
from spear_fast.data.manifest import ManifestEntry
from spear_fast.errors import UserError

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
    from safetensors.torch import save_file

    from spear_fast.audio import AudioError, load_audio
    from spear_fast.pipeline.clips import DEFAULT_MAX_DURATION, duration_batches

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
    skipped = len(entries) - len(todo)
    failed: dict[str, str] = {}
    shard_number = len(set(index["shards"].values()))
    pending: dict[str, torch.Tensor] = {}
    pending_frames: dict[str, int] = {}

    def flush() -> None:
        nonlocal shard_number
        if not pending:
            return
        name = f"shard-{shard_number:05d}.safetensors"
        while name in set(index["shards"].values()):  # never overwrite a shard the index points to
            shard_number += 1
            name = f"shard-{shard_number:05d}.safetensors"
        tmp = out_dir / f".{name}.tmp"
        save_file(dict(pending), str(tmp), metadata={"format": FORMAT})
        os.replace(tmp, out_dir / name)
        index["shards"].update({k: name for k in pending})
        index["frames"].update(pending_frames)
        atomic_write_json(index_path, index)
        shard_number += 1
        pending.clear()
        pending_frames.clear()

    start = time.perf_counter()
    total_seconds = sum(e.effective_duration for e in todo)
    bar = tqdm(total=total_seconds, unit="s audio", unit_scale=True, desc=f"extract {upstream.info.name}",
               disable=not progress)
    for batch in duration_batches(todo, batch_seconds, max_clips=MAX_BATCH):
        waves, good = [], []
        for entry in batch:
            try:
                wave, _ = load_audio(entry.path, 16000, offset=entry.offset, duration=entry.segment_duration,
                                     min_samples=upstream.min_samples, max_duration=max_duration)
            except (AudioError, ValueError, OSError) as err:
                failed[entry.id] = str(err)
                continue
            waves.append(wave)
            good.append(entry)
        if good:
            lengths = torch.tensor([w.shape[0] for w in waves])
            padded = torch.zeros(len(waves), int(lengths.max()))  # (B, L)
            for b, wave in enumerate(waves):
                padded[b, : wave.shape[0]] = wave
            out = upstream(padded, lengths)
            stacked = torch.stack([out.layers[i] for i in kept], dim=1)  # (B, n_kept, T, d)
            for b, entry in enumerate(good):
                n = int(out.lengths[b])
                x = stacked[b, :, :n]  # (n_kept, T_b, d)
                if pool == "mean":
                    x = x.mean(dim=1)  # (n_kept, d)
                pending[entry.id] = x.to("cpu", DTYPES[dtype]).contiguous()
                pending_frames[entry.id] = n
            if len(pending) >= shard_utterances:
                flush()
        bar.update(min(sum(e.effective_duration for e in batch), bar.total - bar.n))  # never past the total
    flush()
    bar.close()
    failed_path = out_dir / "failed.json"
    if failed:
        atomic_write_json(failed_path, failed)
        print(f"extract: skipped {len(failed)} unreadable clip(s), listed in {failed_path}; e.g. "
              f"{next(iter(failed.items()))}")
    elif failed_path.exists():
        failed_path.unlink()
    return ExtractReport(out_dir, extracted=len(todo) - len(failed), skipped=skipped, failed=failed,
                         seconds=time.perf_counter() - start)
