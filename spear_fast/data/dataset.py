"""Pre-training examples: audio from a manifest plus each teacher's stored MVQ tokens.

`SpearDataset[i]` reads one clip (16 kHz mono), crops clips longer than `max_duration` at a random
start aligned to ALIGN_SAMPLES (so every teacher's token frames are cut at a frame boundary), and
looks up the clip's tokens in each teacher's token store (None where a store has no entry: e.g. the
audio teacher is only run on audio-domain clips). A clip that cannot be read is not fatal: the item
comes back as a BadItem(id, reason), which `collate` drops and reports.

Items are addressed by (epoch, index) (or a plain index at `dataset.epoch`): the epoch travels with
the key, so crops change per epoch even inside persistent DataLoader workers, whose copies of the
dataset never see a set_epoch call. DurationBucketSampler(..., keyed_by_epoch=True) yields such keys.

`collate` pads waves with zeros and tokens with IGNORE_INDEX (-100), giving a `Collated(batch, skipped)`.
The Batch keeps the lengths twice: as tensors, which go to the device, and as Python ints on the
host, from which the training step decides everything that needs a value (spear_fast.lengths).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Mapping, NamedTuple, Sequence

import numpy as np
import torch

from kernels import IGNORE_INDEX

from spear_fast.audio import SAMPLE_RATE, AudioError, load_audio
from spear_fast.data.manifest import ManifestEntry
from spear_fast.data.token_store import TokenStore

log = logging.getLogger(__name__)

# Crop starts are multiples of 640 samples = 40 ms: one frame at 25 Hz, two at 50 Hz, four fbank
# frames at 100 Hz, so all token streams stay aligned with the cropped audio.
ALIGN_SAMPLES = 640


@dataclass
class Example:
    id: str
    wave: torch.Tensor  # (L,) float32, 16 kHz
    domain: str  # "speech" | "audio"
    tokens: dict[str, np.ndarray | None]  # teacher -> (T, N) uint8, or None when the store lacks the clip


class BadItem(NamedTuple):
    """A clip that could not be used, and why (for the run's skip report)."""

    id: str
    reason: str


@dataclass
class Batch:
    ids: list[str]
    domains: list[str]  # "speech" | "audio" per clip
    waves: torch.Tensor  # (B, L) float32, zero-padded
    lengths: torch.Tensor  # (B,) int64 samples
    num_samples: list[int]  # `lengths` on the host
    tokens: dict[str, torch.Tensor] = field(default_factory=dict)  # teacher -> (B, T, N) int64, IGNORE_INDEX-padded
    token_lengths: dict[str, torch.Tensor] = field(default_factory=dict)  # teacher -> (B,) int64, 0 = no tokens
    num_token_frames: dict[str, list[int]] = field(default_factory=dict)  # `token_lengths` on the host

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(
            ids=self.ids,
            domains=self.domains,
            waves=self.waves.to(device, non_blocking=True),
            lengths=self.lengths.to(device, non_blocking=True),
            num_samples=self.num_samples,
            tokens={name: t.to(device, non_blocking=True) for name, t in self.tokens.items()},
            token_lengths={name: t.to(device, non_blocking=True) for name, t in self.token_lengths.items()},
            num_token_frames=self.num_token_frames,
        )

    @property
    def seconds(self) -> float:
        return sum(self.num_samples) / SAMPLE_RATE


class SpearDataset(torch.utils.data.Dataset):
    def __init__(
        self,
        entries: Sequence[ManifestEntry],
        token_stores: Mapping[str, TokenStore],
        *,
        max_duration: float | None = None,
        seed: int = 0,
    ):
        if max_duration is not None and max_duration * SAMPLE_RATE < ALIGN_SAMPLES:
            raise ValueError(f"SpearDataset: max_duration {max_duration} s is shorter than one aligned crop step (40 ms)")
        self.entries = list(entries)
        self.token_stores = dict(token_stores)
        self.max_duration = max_duration
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.entries)

    def durations(self) -> list[float]:
        """Seconds per item after cropping (what the batch sampler budgets)."""
        cap = self.max_duration if self.max_duration is not None else float("inf")
        return [min(entry.effective_duration, cap) for entry in self.entries]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, key: int | tuple[int, int]) -> Example | BadItem:
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        entry = self.entries[index]
        try:
            wave, _ = load_audio(
                entry.path, SAMPLE_RATE, offset=entry.offset, duration=entry.segment_duration
            )
        except AudioError as error:
            log.warning("skipping %s: %s", entry.id, error)
            return BadItem(entry.id, str(error))
        tokens = {
            name: (np.asarray(store[entry.id]) if entry.id in store else None)
            for name, store in self.token_stores.items()
        }
        start, cropped = 0, False
        if self.max_duration is not None and wave.numel() > self.max_duration * SAMPLE_RATE:
            keep = int(self.max_duration * SAMPLE_RATE) // ALIGN_SAMPLES * ALIGN_SAMPLES
            steps = (wave.numel() - keep) // ALIGN_SAMPLES
            # A per-(seed, epoch, item) generator: the crop is the same in every worker layout.
            generator = torch.Generator().manual_seed(((self.seed * 1_000_003 + epoch) * 10_000_019 + index) % 2**63)
            start = int(torch.randint(0, steps + 1, (1,), generator=generator)) * ALIGN_SAMPLES
            wave = wave[start : start + keep]
            cropped = True
        for name, array in tokens.items():
            if array is None or not cropped:
                continue
            rate = self.token_stores[name].meta.frame_rate
            first = round(start * rate / SAMPLE_RATE)
            count = int(np.ceil(wave.numel() * rate / SAMPLE_RATE))
            tokens[name] = array[first : first + count]
        return Example(id=entry.id, wave=wave, domain=entry.domain, tokens=tokens)


class Collated(NamedTuple):
    batch: Batch | None  # None when no clip of the sampled batch was usable
    skipped: list[BadItem]  # unreadable and too-short clips, for the skip report


def collate(
    items: Sequence[Example | BadItem], codebooks: Mapping[str, int], min_samples: int = 1
) -> Collated:
    """Pad the usable examples into a Batch; report BadItems and clips under `min_samples` samples.

    codebooks: teacher name -> N; every teacher gets a (B, T, N) target tensor, all IGNORE_INDEX where no
    clip of the batch has that teacher's tokens.
    """
    skipped = [item for item in items if isinstance(item, BadItem)]
    kept = []
    for item in items:
        if isinstance(item, BadItem):
            continue
        if item.wave.numel() < min_samples:
            skipped.append(BadItem(item.id, f"too short after decoding: {item.wave.numel()} samples < {min_samples}"))
        else:
            kept.append(item)
    if not kept:
        return Collated(None, skipped)
    num_samples = [example.wave.numel() for example in kept]
    waves = torch.zeros(len(kept), max(num_samples), dtype=torch.float32)  # (B, L)
    for row, example in enumerate(kept):
        waves[row, : example.wave.numel()] = example.wave
    batch = Batch(
        ids=[example.id for example in kept],
        domains=[example.domain for example in kept],
        waves=waves,
        lengths=torch.tensor(num_samples, dtype=torch.int64),  # (B,)
        num_samples=num_samples,
    )
    for name, num_codebooks in codebooks.items():
        arrays = [example.tokens.get(name) for example in kept]
        for example, array in zip(kept, arrays):
            if array is not None and array.shape[1] != num_codebooks:
                raise ValueError(
                    f"collate: clip {example.id!r} has {array.shape[1]} codebooks of teacher {name!r}, expected {num_codebooks}"
                )
        frames = [0 if a is None else a.shape[0] for a in arrays]
        targets = torch.full((len(kept), max(max(frames), 1), num_codebooks), IGNORE_INDEX, dtype=torch.int64)
        for row, array in enumerate(arrays):
            if array is not None and array.shape[0]:
                targets[row, : array.shape[0]] = torch.from_numpy(array.astype(np.int64))  # copy: memmaps are read-only
        batch.tokens[name] = targets  # (B, T, N)
        batch.token_lengths[name] = torch.tensor(frames, dtype=torch.int64)  # (B,)
        batch.num_token_frames[name] = frames
    return Collated(batch, skipped)
