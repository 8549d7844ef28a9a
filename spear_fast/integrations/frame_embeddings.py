"""One embedding matrix per clip from an Upstream, for the harnesses that take one (HEAR, X-ARES).

    embedder = FrameEmbedder(load_upstream("exported/"), layers="last", chunk_seconds=30.0)
    emb, lengths = embedder(waves, lengths)          # (B, T, width), (B,) valid frames

Layers: "last" (the upstream's last layer, d = dim) or "all" (every layer concatenated in order,
d = num_layers x dim). For a spear-fast student "all" means its Transformer layers (not the front
end's output, the upstream's layer 0), as the SPEAR paper concatenates layers for HEAR; for other
upstreams every layer they expose.
Long clips run in chunks of chunk_seconds (rounded down to whole output frames, so that the chunks'
frames line up with the whole clip's), each on its own: attention memory grows with the square of a
chunk's length, and spear-fast students were trained on clips of at most 30 s. A remainder shorter
than MIN_TAIL_SECONDS is joined to the chunk before it rather than encoded with almost no context.
"""
from __future__ import annotations

import torch
from torch import nn

from spear_fast.eval.upstreams import Upstream
from spear_fast.sample_rate import SAMPLE_RATE

LAYER_MODES = ("last", "all")
STUDENT_KINDS = ("student", "checkpoint", "random")  # upstreams whose layer 0 is the front end's output
DEFAULT_CHUNK_SECONDS = 30.0  # the longest clip spear-fast pre-training sees (data.max_duration)
MIN_TAIL_SECONDS = 1.0


def chunk_bounds(num_samples: int, chunk_samples: int, min_tail: int) -> list[tuple[int, int]]:
    """[start, end) sample ranges covering num_samples: chunk_samples each, a short tail joined to the last."""
    bounds = [(start, min(start + chunk_samples, num_samples)) for start in range(0, num_samples, chunk_samples)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < min_tail:
        tail_end = bounds.pop()[1]
        bounds[-1] = (bounds[-1][0], tail_end)
    return bounds


class FrameEmbedder(nn.Module):
    """Frozen upstream -> (B, T, width) frame embeddings of the chosen layers, chunked over time."""

    def __init__(self, upstream: Upstream, layers: str = "last", chunk_seconds: float = DEFAULT_CHUNK_SECONDS):
        super().__init__()
        if layers not in LAYER_MODES:
            raise ValueError(f"layers must be one of {LAYER_MODES}, got {layers!r}")
        if not chunk_seconds > 0:
            raise ValueError(f"chunk_seconds must be > 0, got {chunk_seconds}")
        self.upstream = upstream
        self.layers = layers
        first = 1 if upstream.info.kind in STUDENT_KINDS and upstream.num_layers > 1 else 0
        self.indices = (upstream.num_layers - 1,) if layers == "last" else tuple(range(first, upstream.num_layers))
        self.width = upstream.dim * len(self.indices)
        hop = SAMPLE_RATE / upstream.frame_rate  # samples per output frame
        chunk = int(chunk_seconds * SAMPLE_RATE)
        if float(hop).is_integer():  # whole frames per chunk: chunk frames add up to the whole clip's
            chunk = max(int(hop), chunk // int(hop) * int(hop))
        self.chunk_samples = chunk
        self.min_tail = int(MIN_TAIL_SECONDS * SAMPLE_RATE)

    @property
    def frame_rate(self) -> float:
        return self.upstream.frame_rate

    def train(self, mode: bool = True) -> FrameEmbedder:
        return super().train(False)  # frozen

    @torch.no_grad()
    def forward(self, waves: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """waves (B, L) float 16 kHz, lengths (B,) samples (None: all L) -> ((B, T, width), (B,) frames)."""
        batch, num_samples = waves.shape
        if lengths is None:
            lengths = torch.full((batch,), num_samples, dtype=torch.int64)
        pieces, piece_lengths = [], []
        for start, end in chunk_bounds(num_samples, self.chunk_samples, self.min_tail):
            # clips that end inside this chunk keep what they have; ended clips get a zero stand-in
            remaining = (lengths - start).clamp(0, end - start)  # (B,)
            live = remaining >= self.upstream.min_samples
            if not bool(live.any()):
                break
            out = self.upstream(waves[:, start:end], torch.where(live, remaining, end - start))
            piece = torch.cat([out.layers[i] for i in self.indices], dim=-1)  # (B, t, width)
            frames = torch.where(live, out.lengths, 0)  # (B,)
            pieces.append(piece * live.to(piece.device, piece.dtype)[:, None, None])
            piece_lengths.append(frames)
        total = torch.stack(piece_lengths).sum(0)  # (B,)
        embeddings = pieces[0].new_zeros(batch, int(total.max()), self.width)  # (B, T, width)
        for b in range(batch):
            row = [piece[b, : int(n)] for piece, n in zip(pieces, (p[b] for p in piece_lengths), strict=True)]
            joined = torch.cat(row)
            embeddings[b, : joined.shape[0]] = joined
        return embeddings, total
