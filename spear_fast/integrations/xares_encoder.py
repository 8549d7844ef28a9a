"""X-ARES (the Dasheng authors' benchmark, `xares` on PyPI) encoder for any spear-fast model spec.

    SPEAR_XARES_MODEL=exported/large python -m xares.run spear_fast/integrations/xares_encoder.py src/tasks/*.py

xares.run imports the encoder file as a module (path -> dotted name, so the installed package is
found from any directory) and builds the one class whose name ends in "Encoder" without arguments,
so the model comes from the environment: SPEAR_XARES_MODEL (a model spec as `spear probe --model`
takes it: an export directory, a checkpoint, hf:DIR?trust_remote_code=1) and SPEAR_XARES_LAYERS
("last", the default, or "all": every layer concatenated). In Python:

    encoder = SpearEncoder("exported/large")
    xares.audio_encoder_checker.check_audio_encoder(encoder)   # True
    frames = encoder(audio)          # (B, T) or (T,) float 16 kHz -> (B, T', output_dim)

X-ARES asks encoders to take clips of up to 10 minutes: they run in chunks of chunk_seconds (30 s by
default; spear_fast/integrations/frame_embeddings.py). X-ARES gives whole batches without lengths
(its loader pads the last crop), so every row counts as full length.
This module must define exactly one name ending in "Encoder" (xares.run looks the class up that way).
"""
from __future__ import annotations

import os

import torch
from torch import nn

from spear_fast.integrations.frame_embeddings import DEFAULT_CHUNK_SECONDS, FrameEmbedder
from spear_fast.integrations.waveforms import mono_batch
from spear_fast.sample_rate import SAMPLE_RATE

MODEL_VARIABLE = "SPEAR_XARES_MODEL"
LAYERS_VARIABLE = "SPEAR_XARES_LAYERS"


class SpearEncoder(nn.Module):
    """X-ARES's encoder contract: output_dim, sampling_rate, hop_size_in_ms; forward(audio) -> (B, T', D)."""

    sampling_rate = SAMPLE_RATE

    def __init__(self, model: str | None = None, layers: str | None = None, device: str | torch.device = "cpu",
                 chunk_seconds: float = DEFAULT_CHUNK_SECONDS):
        super().__init__()
        from spear_fast.eval.upstreams import load_upstream

        spec = model or os.environ.get(MODEL_VARIABLE, "")
        if not spec:
            raise ValueError(f"SpearEncoder: give a model spec (an export directory, a checkpoint, "
                             f"hf:DIR?trust_remote_code=1) as SpearEncoder(model) or in ${MODEL_VARIABLE}")
        layers = layers or os.environ.get(LAYERS_VARIABLE, "last")
        self.embedder = FrameEmbedder(load_upstream(spec, device=device), layers=layers, chunk_seconds=chunk_seconds)
        self.output_dim = int(self.embedder.width)
        self.hop_size_in_ms = 1000.0 / self.embedder.frame_rate

    def train(self, mode: bool = True) -> SpearEncoder:
        return super().train(False)  # frozen features

    @torch.no_grad()
    def forward(self, audio: torch.Tensor, sampling_rate: int | None = None) -> torch.Tensor:
        """audio (B, T) or (T,) float in [-1, 1] at 16 kHz -> (B, T', output_dim) float32."""
        waves = mono_batch("SpearEncoder", audio, min_samples=self.embedder.upstream.min_samples,
                           sample_rate=sampling_rate)
        embeddings, _ = self.embedder(waves)  # (B, T', D)
        return embeddings
