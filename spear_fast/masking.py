"""Span masking of the fbank before subsampling (SPEAR.md section 5; training only).

Per utterance of L valid frames, with a seeded torch.Generator:
1. Channel spans: n_c = floor(channel_prob * 128 / channel_width + u) spans (u ~ U(0, 1), so the
   expectation is channel_prob * 128 / width), at least `min_channel_spans`; starts drawn without
   replacement from [0, 128 - width]; the covered bins are set to 0 on the utterance's valid frames.
2. Time spans (wav2vec2/HuBERT rule): n_t = floor(time_prob * L / time_span + u) spans, at least
   `min_time_spans` (2), at most the number of possible starts; starts drawn without replacement from
   [0, L - span] so spans never reach padding; spans may overlap. Expected coverage is
   about 1 - exp(-time_prob) = 48 % for time_prob 0.65. Utterances shorter than 2 * time_span use
   span max(1, L // 4), which keeps most of a short utterance visible in most draws but does not
   guarantee it: two non-overlapping spans can still cover e.g. 70 % of a 20-frame clip, and a
   clip of L < 4 frames is masked entirely (training drops clips under data.min_duration).
This module returns the boolean time mask; the student replaces those frames by its learned 128-d
mask vector (SpearStudent.forward(..., time_mask=...)), because that vector is a student parameter.

Output-rate mask: an output frame t of a stride-s student (s = 2 or 4) summarises input frames
[s t, s t + s); it counts as masked when ANY of them is masked (its content was at least partly
hidden), and only for t < the utterance's output length. The objective gives masked output frames
weight alpha and the others 1 - alpha (objective.frame_weights), using exactly this mask.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from spear_fast.config import check, field
from spear_fast.lengths import Lengths, host_lengths
from spear_fast.model.config import FBANK_DIM
from spear_fast.model.subsampling import subsampled_lengths


@dataclass
class MaskingConfig:
    enabled: bool = field(True, "apply masking (training); off -> all-False masks")
    channel_prob: float = field(0.25, "channel span start probability", ge=0.0, lt=1.0)
    channel_width: int = field(20, "channel span width in fbank bins", ge=1, le=FBANK_DIM)
    min_channel_spans: int = field(0, "minimum channel spans per utterance", ge=0)
    time_prob: float = field(0.65, "time span start probability (x L / span spans)", ge=0.0, lt=1.0)
    time_span: int = field(10, "time span length in input (100 Hz) frames", ge=1)
    min_time_spans: int = field(2, "minimum time spans per utterance", ge=0)


class MaskingResult(NamedTuple):
    feats: torch.Tensor  # (B, T, 128) channel spans zeroed (time-masked frames NOT yet replaced)
    time_mask: torch.Tensor  # (B, T) bool, input frames to replace by the mask vector
    channel_mask: torch.Tensor  # (B, 128) bool, bins zeroed
    output_mask: torch.Tensor  # (B, T') bool, masked student output frames ("any" rule)
    output_lengths: torch.Tensor  # (B,) int64 student output lengths
    valid_frames: int  # valid input frames of the batch
    valid_output_frames: int  # valid output frames of the batch

    @property
    def time_fraction(self) -> float:
        """Masked fraction of valid input frames (reads the mask back from its device)."""
        return float(self.time_mask.sum()) / max(self.valid_frames, 1)

    @property
    def output_fraction(self) -> float:
        """Masked fraction of valid output frames (reads the mask back from its device)."""
        return float(self.output_mask.sum()) / max(self.valid_output_frames, 1)


def _draw_spans(lengths: torch.Tensor, width: torch.Tensor, num_spans: torch.Tensor, size: int,
                generator: torch.Generator) -> torch.Tensor:
    """(B, size) bool: per row, `num_spans` spans of `width` frames whose starts are drawn without
    replacement from [0, lengths - width]. All arguments (B,) int64 on CPU; num_spans <= lengths - width + 1."""
    batch = lengths.shape[0]
    positions = torch.arange(size)  # (S,)
    candidate = positions[None, :] <= (lengths - width)[:, None]  # (B, S) valid start positions
    scores = torch.rand(batch, size, generator=generator)  # (B, S) uniform in [0, 1)
    scores = scores.masked_fill(~candidate, 2.0)  # non-candidates sort last
    rank = scores.argsort(dim=1).argsort(dim=1)  # (B, S) rank of each position's score
    starts = (rank < num_spans[:, None]) & candidate  # (B, S) a random num_spans-subset of candidates
    # frame t is covered when a start lies in (t - width, t]: difference of cumulative start counts
    counts = starts.cumsum(dim=1)  # (B, S)
    behind = positions[None, :] - width[:, None]  # (B, S) index of the count just outside the window
    outside = torch.where(behind >= 0, counts.gather(1, behind.clamp(min=0)), torch.zeros_like(counts))
    return (counts - outside) > 0


def _num_spans(prob: float, lengths: torch.Tensor, width: torch.Tensor, minimum: int,
               generator: torch.Generator) -> torch.Tensor:
    """floor(prob * L / width + u), clamped to [minimum, number of possible starts]; (B,) int64."""
    u = torch.rand(lengths.shape[0], generator=generator, dtype=torch.float64)  # (B,)
    expected = prob * lengths.to(torch.float64) / width.to(torch.float64)
    count = torch.floor(expected + u).to(torch.int64).clamp(min=minimum)
    return torch.minimum(count, (lengths - width + 1).clamp(min=0))


def output_rate_mask(time_mask: torch.Tensor, feat_lengths: torch.Tensor, time_stride: int) -> torch.Tensor:
    """(B, T) input-rate mask -> (B, T') output-rate mask: output frame t is masked when any input frame
    in [s t, s t + s) is, and t < its utterance's output length."""
    batch, frames = time_mask.shape
    out_frames = subsampled_lengths(frames, time_stride)
    padded = torch.zeros(batch, out_frames * time_stride, dtype=torch.bool, device=time_mask.device)
    padded[:, :frames] = time_mask
    out = padded.view(batch, out_frames, time_stride).any(dim=2)  # (B, T')
    out_lengths = subsampled_lengths(feat_lengths.to(time_mask.device), time_stride)
    return out & (torch.arange(out_frames, device=time_mask.device)[None, :] < out_lengths[:, None])


def compute_masks(feats: torch.Tensor, feat_lengths: Lengths, config: MaskingConfig,
                  generator: torch.Generator, time_stride: int = 2) -> MaskingResult:
    """Draw channel and time masks for a padded fbank batch; see the module docstring for the rules.
    Random numbers come from `generator` (a CPU torch.Generator) only, so a seed fixes the masks.
    The masks are drawn on the host from the lengths: pass them as Python ints and nothing is read
    back from feats' device (spear_fast.lengths)."""
    check(config)
    if feats.dim() != 3 or feats.shape[-1] != FBANK_DIM:
        raise ValueError(f"feats must be (B, T, {FBANK_DIM}), got {tuple(feats.shape)}")
    batch, frames, _ = feats.shape
    if isinstance(feat_lengths, torch.Tensor) and (feat_lengths.shape != (batch,) or feat_lengths.is_floating_point()):
        raise ValueError(f"feat_lengths must be an integer ({batch},) tensor, got {tuple(feat_lengths.shape)} "
                         f"{feat_lengths.dtype}")
    host = host_lengths(feat_lengths)
    if len(host) != batch:
        raise ValueError(f"feat_lengths must have {batch} values, got {len(host)}")
    if batch and (min(host) < 0 or max(host) > frames):
        raise ValueError(f"feat_lengths must lie in [0, {frames}] (T of feats {tuple(feats.shape)}), got {host}")
    lengths = torch.tensor(host, dtype=torch.int64)  # (B,) on the CPU, where the masks are drawn
    device = feats.device
    out_lengths = subsampled_lengths(lengths, time_stride)
    if not config.enabled:
        time_mask = torch.zeros(batch, frames, dtype=torch.bool)
        channel_mask = torch.zeros(batch, FBANK_DIM, dtype=torch.bool)
    else:
        # channel spans: the "length" of every row is the 128 bins
        bins = torch.full((batch,), FBANK_DIM, dtype=torch.int64)
        channel_width = torch.full((batch,), config.channel_width, dtype=torch.int64)
        num_channel = _num_spans(config.channel_prob, bins, channel_width, config.min_channel_spans, generator)
        channel_mask = _draw_spans(bins, channel_width, num_channel, FBANK_DIM, generator)  # (B, 128)
        # time spans; short utterances get shorter spans (module docstring)
        span = torch.where(lengths >= 2 * config.time_span, torch.full_like(lengths, config.time_span),
                           (lengths // 4).clamp(min=1))
        num_time = _num_spans(config.time_prob, lengths, span, config.min_time_spans, generator)
        time_mask = _draw_spans(lengths, span, num_time, frames, generator)  # (B, T)
    valid = torch.arange(frames)[None, :] < lengths[:, None]  # (B, T)
    time_mask &= valid
    output_mask = output_rate_mask(time_mask, lengths, time_stride)  # (B, T')
    zero = (channel_mask[:, None, :] & valid[:, :, None]).to(device, non_blocking=True)  # (B, T, 128)
    masked_feats = feats.masked_fill(zero, 0.0)
    return MaskingResult(feats=masked_feats, time_mask=time_mask.to(device, non_blocking=True),
                         channel_mask=channel_mask.to(device, non_blocking=True),
                         output_mask=output_mask.to(device, non_blocking=True),
                         output_lengths=out_lengths.to(device, non_blocking=True), valid_frames=sum(host),
                         valid_output_frames=sum(subsampled_lengths(n, time_stride) for n in host))
