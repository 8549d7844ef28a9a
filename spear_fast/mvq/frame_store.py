"""Teacher frames on disk for fitting a quantiser: float16 shards, memory-mapped, never all in RAM.

Layout of a store directory:
  shard-00000.npy, shard-00001.npy, ...   float16 (T_i, D) arrays
  index.json                              {"dim": D, "shards": [{"file": ..., "frames": T_i}, ...]}
Shards and the index are written atomically (temp file + os.replace); the index is written last, so
a store without index.json is unfinished. Random sampling reads only the rows it draws.

Held-out split: every `HOLDOUT_EVERY`-th frame (global index i with i % HOLDOUT_EVERY == 0) is
held out; `sample` draws only from the others, `heldout` returns (up to a cap) held-out frames.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from spear_fast.atomic import atomic_open, atomic_write_json
from spear_fast.errors import UserError

INDEX_FILE = "index.json"
SHARD_FRAMES = 1 << 18  # frames per shard: 256 Ki frames, 512 MiB at D=1024 in float16
HOLDOUT_EVERY = 20  # 5 % of the frames are held out for evaluation
FLOAT16_MAX = 65504.0


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_open(path, "wb") as handle:
        np.save(handle, array)



class FrameStoreWriter:
    """FrameStoreWriter(dir, dim).add(frames (T, D)) ... .close(). Rejects NaN/Inf and values that
    overflow float16 (ValueError naming how many and the first rows)."""

    def __init__(self, directory: str | os.PathLike, dim: int, shard_frames: int = SHARD_FRAMES) -> None:
        if dim <= 0 or shard_frames <= 0:
            raise ValueError(f"FrameStoreWriter: dim and shard_frames must be positive, got {dim}, {shard_frames}")
        self.directory = Path(directory)
        if (self.directory / INDEX_FILE).exists():
            raise UserError(f"FrameStoreWriter: {self.directory} already holds a frame store")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.dim, self.shard_frames = dim, shard_frames
        self._pending: list[np.ndarray] = []
        self._pending_frames = 0
        self._shards: list[dict] = []
        self._closed = False

    def add(self, frames: np.ndarray | torch.Tensor) -> None:
        if self._closed:
            raise ValueError("FrameStoreWriter.add: the writer is closed")
        if isinstance(frames, torch.Tensor):
            frames = frames.detach().cpu().float().numpy()
        frames = np.asarray(frames)
        if frames.ndim != 2 or frames.shape[1] != self.dim:
            raise ValueError(f"FrameStoreWriter.add: expected frames of shape (T, {self.dim}), got {frames.shape}")
        bad = ~np.isfinite(frames).all(axis=1) | (np.abs(frames) > FLOAT16_MAX).any(axis=1)
        if bad.any():
            rows = np.flatnonzero(bad)
            raise ValueError(
                f"FrameStoreWriter.add: {rows.size} of {frames.shape[0]} frames hold NaN/Inf or values beyond "
                f"float16 range; first rows {rows[:5].tolist()}"
            )
        if frames.shape[0] == 0:
            return
        self._pending.append(frames.astype(np.float16))
        self._pending_frames += frames.shape[0]
        while self._pending_frames >= self.shard_frames:
            self._flush(self.shard_frames)

    def _flush(self, count: int) -> None:
        block = np.concatenate(self._pending, axis=0)
        shard, rest = block[:count], block[count:]
        name = f"shard-{len(self._shards):05d}.npy"
        _atomic_save_npy(self.directory / name, np.ascontiguousarray(shard))
        self._shards.append({"file": name, "frames": int(shard.shape[0])})
        self._pending = [rest] if rest.shape[0] else []
        self._pending_frames = int(rest.shape[0])

    def close(self) -> "FrameStore":
        if not self._closed:
            if self._pending_frames:
                self._flush(self._pending_frames)
            atomic_write_json(self.directory / INDEX_FILE, {"dim": self.dim, "shards": self._shards})
            self._closed = True
        return FrameStore(self.directory)

    def __enter__(self) -> "FrameStoreWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()


class FrameStore:
    """Read side: len(store), store.dim, store.sample(n, generator), store.iter_batches(...),
    store.heldout(max_frames). Frames come back as float32 torch tensors."""

    def __init__(self, directory: str | os.PathLike, holdout_every: int = HOLDOUT_EVERY) -> None:
        self.directory = Path(directory)
        index_path = self.directory / INDEX_FILE
        if not index_path.is_file():
            raise UserError(f"FrameStore: {index_path} not found (not a frame store, or unfinished)")
        with open(index_path) as handle:
            index = json.load(handle)
        self.dim = int(index["dim"])
        if holdout_every < 2:
            raise ValueError(f"FrameStore: holdout_every must be >= 2, got {holdout_every}")
        self.holdout_every = holdout_every
        self._arrays: list[np.ndarray] = []
        for shard in index["shards"]:
            array = np.load(self.directory / shard["file"], mmap_mode="r")
            if array.shape != (shard["frames"], self.dim) or array.dtype != np.float16:
                raise UserError(
                    f"FrameStore: {shard['file']} has shape {array.shape} dtype {array.dtype}, "
                    f"index says ({shard['frames']}, {self.dim}) float16"
                )
            self._arrays.append(array)
        sizes = np.array([a.shape[0] for a in self._arrays], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(sizes)])  # (S+1,) first global row of each shard
        self.num_frames = int(self._starts[-1])

    def __len__(self) -> int:
        return self.num_frames

    @property
    def num_train(self) -> int:
        return self.num_frames - self.num_heldout

    @property
    def num_heldout(self) -> int:
        return (self.num_frames + self.holdout_every - 1) // self.holdout_every

    def read(self, rows: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Frames at global row indexes (n,) -> float32 (n, D), in the given order."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self.num_frames):
            raise ValueError(f"FrameStore.read: rows must lie in [0, {self.num_frames}), got [{rows.min()}, {rows.max()}]")
        out = np.empty((rows.size, self.dim), dtype=np.float32)
        shard_of = np.searchsorted(self._starts, rows, side="right") - 1  # (n,)
        for shard in np.unique(shard_of):
            where = np.flatnonzero(shard_of == shard)
            local = rows[where] - self._starts[shard]
            order = np.argsort(local, kind="stable")  # read each shard in row order
            out[where[order]] = self._arrays[shard][local[order]]
        return torch.from_numpy(out)

    def train_rows(self, positions: np.ndarray) -> np.ndarray:
        """Training position j in [0, num_train) -> global row (skipping every holdout_every-th row)."""
        per = self.holdout_every - 1
        return (positions // per) * self.holdout_every + (positions % per) + 1

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n training frames drawn uniformly with replacement -> float32 (n, D)."""
        if self.num_train <= 0:
            raise UserError(f"FrameStore.sample: {self.directory} has no training frames ({self.num_frames} in all)")
        positions = torch.randint(0, self.num_train, (n,), generator=generator).numpy()
        return self.read(self.train_rows(positions))

    def heldout(self, max_frames: int = 10000) -> torch.Tensor:
        """Up to max_frames held-out frames, evenly spread over the store -> float32 (n, D)."""
        count = min(self.num_heldout, max_frames)
        picks = np.linspace(0, self.num_heldout - 1, count).round().astype(np.int64) if count else np.zeros(0, np.int64)
        return self.read(np.unique(picks) * self.holdout_every)

    def iter_batches(self, batch_size: int, max_frames: int | None = None) -> Iterator[torch.Tensor]:
        """All frames (or the first max_frames) in order, float32 (<= batch_size, D) batches."""
        stop = self.num_frames if max_frames is None else min(self.num_frames, max_frames)
        for start in range(0, stop, batch_size):
            yield self.read(np.arange(start, min(start + batch_size, stop)))
