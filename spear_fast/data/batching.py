"""Dynamic batches by total seconds of audio, drawn from duration buckets.

A batch holds as many clips of similar length as fit in `max_seconds` of PADDED audio (the longest
clip times the batch size: that is what the GPU computes), so short clips make big batches and long
clips small ones, with little padding. Clips are bucketed by duration quantiles; each epoch shuffles
within buckets and then shuffles the batch order, reproducibly from (seed, epoch).

Distributed: every rank builds the same global batch list and takes batches rank, rank + world, ...
after truncating it to a multiple of the world size, so all ranks step equally often.
Resume: `state_dict()` records (epoch, batches already yielded); `load_state_dict` skips those.
With keyed_by_epoch=True a batch is a list of (epoch, index) keys (see spear_fast.data.dataset).
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch

from spear_fast.errors import UserError


class DurationBucketSampler(torch.utils.data.Sampler):
    """Yields lists of dataset indices; see the module docstring."""

    def __init__(
        self,
        durations: Sequence[float],
        max_seconds: float,
        *,
        num_buckets: int = 10,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        keyed_by_epoch: bool = False,
    ):
        if max_seconds <= 0:
            raise ValueError(f"DurationBucketSampler: max_seconds must be > 0, got {max_seconds}")
        if num_buckets < 1:
            raise ValueError(f"DurationBucketSampler: num_buckets must be >= 1, got {num_buckets}")
        if not 0 <= rank < world_size:
            raise ValueError(f"DurationBucketSampler: rank {rank} is outside world_size {world_size}")
        self.durations = torch.as_tensor(list(durations), dtype=torch.float64)  # (num_clips,)
        if self.durations.numel() == 0:
            raise ValueError("DurationBucketSampler: no clips to batch (empty durations)")
        bad = torch.nonzero(~(self.durations > 0) | ~torch.isfinite(self.durations)).flatten()
        if bad.numel():
            first = int(bad[0])
            raise ValueError(
                f"DurationBucketSampler: {bad.numel()} clip(s) have a non-positive or non-finite duration, "
                f"first at index {first}: {float(self.durations[first])}"
            )
        longest = float(self.durations.max())
        if longest > max_seconds:
            raise ValueError(
                f"DurationBucketSampler: the longest clip ({longest:.2f} s, index {int(self.durations.argmax())}) "
                f"does not fit in a batch of max_seconds={max_seconds}; crop clips or raise max_seconds"
            )
        self.max_seconds = float(max_seconds)
        self.num_buckets = num_buckets
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.keyed_by_epoch = keyed_by_epoch  # yield (epoch, index) keys (SpearDataset takes both forms)
        self.epoch = 0
        self._skip = 0  # batches of the current epoch already consumed before a resume

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self._skip = 0
        self.epoch = epoch

    def _buckets(self) -> list[torch.Tensor]:
        order = torch.argsort(self.durations, stable=True)  # (num_clips,) shortest first
        return [bucket for bucket in torch.tensor_split(order, self.num_buckets) if bucket.numel()]

    def global_batches(self) -> list[list[int]]:
        """Every rank's batches of this epoch, in order (rank r takes items r, r + world, ...)."""
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        batches: list[list[int]] = []
        for bucket in self._buckets():
            if self.shuffle:
                bucket = bucket[torch.randperm(bucket.numel(), generator=generator)]
            batch: list[int] = []
            longest = 0.0
            for index in bucket.tolist():
                duration = float(self.durations[index])
                if batch and max(longest, duration) * (len(batch) + 1) > self.max_seconds:
                    batches.append(batch)
                    batch, longest = [], 0.0
                batch.append(index)
                longest = max(longest, duration)
            if batch and not (self.drop_last and longest * len(batch) < 0.5 * self.max_seconds):
                batches.append(batch)
        if self.shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        usable = len(batches) - len(batches) % self.world_size
        return batches[:usable]

    def __iter__(self) -> Iterator[list[int] | list[tuple[int, int]]]:
        mine = self.global_batches()[self.rank :: self.world_size]
        start, self._skip = self._skip, 0
        epoch = self.epoch
        for batch in mine[start:]:
            yield [(epoch, index) for index in batch] if self.keyed_by_epoch else batch

    def __len__(self) -> int:
        return len(self.global_batches()) // self.world_size

    def state_dict(self, batches_done: int) -> dict[str, int]:
        """Where to resume: `batches_done` batches of the current epoch were consumed on this rank."""
        return {"epoch": self.epoch, "batches_done": batches_done, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["seed"] != self.seed:
            raise UserError(f"DurationBucketSampler: checkpoint was made with seed {state['seed']}, this run uses {self.seed}")
        self.epoch = state["epoch"]
        self._skip = state["batches_done"]
