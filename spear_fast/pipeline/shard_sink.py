"""The store side of a pass that writes one shard per commit (collect-frames' parts, extract's feature
shards): clip outputs are held in memory, in order, until a commit writes them all as one shard."""
from __future__ import annotations

from typing import Any

from .clips import Skip
from .job import ClipOutput


class ShardSink:
    """A job.ClipSink. Subclasses say what a clip's output becomes (`keep`: the item to store and its
    frames, or a Skip) and how a shard is written (`write_shard`). A commit is due once the held clips
    reach `max_frames` frames or `max_clips` clips (None: no such limit)."""

    def __init__(self, *, max_frames: int | None = None, max_clips: int | None = None):
        self.max_frames, self.max_clips = max_frames, max_clips
        self.ids: list[str] = []
        self.items: list[Any] = []
        self.frames: list[int] = []

    def keep(self, output: ClipOutput) -> tuple[Any, int] | Skip:
        raise NotImplementedError

    def write_shard(self, ids: list[str], items: list[Any], frames: list[int]) -> None:
        raise NotImplementedError

    def put(self, outputs: list[ClipOutput]) -> list[Skip]:
        skips = []
        for output in outputs:
            kept = self.keep(output)
            if isinstance(kept, Skip):
                skips.append(kept)
                continue
            item, frames = kept
            self.ids.append(output.entry.id)
            self.items.append(item)
            self.frames.append(frames)
        return skips

    def commit_due(self) -> bool:
        return ((self.max_frames is not None and sum(self.frames) >= self.max_frames)
                or (self.max_clips is not None and len(self.ids) >= self.max_clips))

    def commit(self) -> None:
        if self.ids:
            self.write_shard(self.ids, self.items, self.frames)
        self.ids, self.items, self.frames = [], [], []
