"""The clips of a pass and how they are read: the domain filter, padding-aware duration batches, and
decoding a batch (16 kHz mono; files that cannot be used come back as Skips with their reason)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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


def select_domain(entries: Sequence[ManifestEntry], domain: str) -> list[ManifestEntry]:
    if domain not in DOMAIN_CHOICES:
        raise UserError(f"domain must be one of {DOMAIN_CHOICES}, got {domain!r}")
    if domain == "all":
        return list(entries)
    assert domain in DOMAINS
    return [e for e in entries if e.domain == domain]


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
