"""HEAR 2021 API (https://hearbenchmark.com/hear-api.html) for any spear-fast model spec.

    from spear_fast import hear
    model = hear.load_model("exported/")                 # or load_model("exported/", layers="all")
    scene = hear.get_scene_embeddings(audio, model)      # (n_sounds, scene_embedding_size)
    emb, ts = hear.get_timestamp_embeddings(audio, model)  # (n_sounds, T, d), (n_sounds, T) in ms

model_file_path is a model spec as `spear probe --model` takes it (spear_fast/eval/upstreams.py): a
`spear export` directory, a training checkpoint, or `hf:DIR?trust_remote_code=1` for a released SPEAR
checkpoint, so both are evaluated the same way.
audio: (n_sounds, n_samples) float32 at 16 kHz (a torch tensor or numpy array), all the same length;
an optional sample_rate= keyword is checked against 16 kHz. Bad input (other shapes, integer PCM,
NaN, too short) raises ValueError.
Layers: "last" (default; the final layer, d = encoder dim) or "all" (every layer concatenated in
order, d = num_layers x dim; the paper reports both); see spear_fast/integrations/frame_embeddings.py.
hear-eval-kit calls load_model(path) only, so the environment variables SPEAR_HEAR_MODEL (used when
model_file_path is "") and SPEAR_HEAR_LAYERS ("last" | "all") select them there. Sounds longer than
chunk_seconds (30 s) are encoded in chunks.
Timestamps: the centre of each frame's receptive field. For models on the fbank (spear-fast
students), the fbank frame i (10 ms shift, snip_edges=False) is centred on sample 160 i + 80;
output frame j of a time_stride s front end (kernel-3 convolutions, symmetric) is centred on fbank
frame s j, i.e. at (160 s j + 80) / 16 ms: 5, 25, 45, ... ms at 50 Hz. Other models: (j + 0.5) hops.
Scene embeddings: the mean of the timestamp embeddings over time.
Sounds run in batches of `batch_size`; all sounds have the same length, so no padding is involved
and a sound's embedding does not depend on the batch it is in (up to float rounding).
"""
from __future__ import annotations

import os

import torch
from torch import nn

from spear_fast.errors import UserError
from spear_fast.integrations.frame_embeddings import (
    DEFAULT_CHUNK_SECONDS,
    LAYER_MODES,
    STUDENT_KINDS,
    FrameEmbedder,
)
from spear_fast.integrations.waveforms import mono_batch
from spear_fast.sample_rate import SAMPLE_RATE

FBANK_SHIFT = 160  # samples per fbank frame
FBANK_FRONT_ENDS = (*STUDENT_KINDS, "fbank")  # upstreams whose frame 0 is centred on fbank frame 0


class HearModel(nn.Module):
    """An upstream plus the attributes the HEAR API requires."""

    sample_rate = SAMPLE_RATE

    def __init__(self, upstream: nn.Module, layers: str = "last", batch_size: int = 16,
                 chunk_seconds: float = DEFAULT_CHUNK_SECONDS):
        super().__init__()
        if layers not in LAYER_MODES:
            raise UserError(f"hear: layers must be one of {LAYER_MODES}, got {layers!r}")
        if batch_size < 1:
            raise UserError(f"hear: batch_size must be >= 1, got {batch_size}")
        self.embedder = FrameEmbedder(upstream, layers=layers, chunk_seconds=chunk_seconds)
        self.layers = layers
        self.batch_size = batch_size
        self.scene_embedding_size = int(self.embedder.width)
        self.timestamp_embedding_size = int(self.embedder.width)
        hop_ms = 1000.0 / upstream.frame_rate
        fbank_based = upstream.info.kind in FBANK_FRONT_ENDS
        self.first_centre_ms = FBANK_SHIFT / 2 * 1000.0 / SAMPLE_RATE if fbank_based else hop_ms / 2

    def train(self, mode: bool = True) -> HearModel:
        return super().train(False)  # embeddings never use dropout

    @property
    def frame_rate(self) -> float:
        return self.embedder.frame_rate

    @property
    def min_samples(self) -> int:
        return self.embedder.upstream.min_samples


def load_model(model_file_path: str = "", layers: str | None = None, device: str | torch.device = "cpu",
               batch_size: int = 16, chunk_seconds: float = DEFAULT_CHUNK_SECONDS) -> HearModel:
    """A HEAR model from a model spec: a `spear export` directory (config.json + model.safetensors), a
    training checkpoint, or hf:DIR?trust_remote_code=1."""
    from spear_fast.eval.upstreams import load_upstream

    path = model_file_path or os.environ.get("SPEAR_HEAR_MODEL", "")
    if not path:
        raise UserError("hear.load_model: give the spear-fast export directory as model_file_path "
                        "(or set SPEAR_HEAR_MODEL); no weights are bundled")
    layers = layers or os.environ.get("SPEAR_HEAR_LAYERS", "last")
    if layers not in LAYER_MODES:
        raise UserError(f"hear: layers must be one of {LAYER_MODES}, got {layers!r}")
    return HearModel(load_upstream(str(path), device=device), layers=layers, batch_size=batch_size,
                     chunk_seconds=chunk_seconds)


@torch.no_grad()
def get_timestamp_embeddings(audio, model: HearModel, sample_rate: int | None = None
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """audio (n_sounds, n_samples) -> (embeddings (n_sounds, T, timestamp_embedding_size),
    timestamps (n_sounds, T) in milliseconds)."""
    audio = mono_batch("hear", audio, min_samples=model.min_samples, sample_rate=sample_rate, single_clip=False,
                       shape_name="(n_sounds, n_samples)")
    n_sounds = audio.shape[0]
    outputs = []
    for start in range(0, n_sounds, model.batch_size):
        embeddings, _ = model.embedder(audio[start : start + model.batch_size])  # (b, T, width)
        outputs.append(embeddings)
    embeddings = torch.cat(outputs)  # (n_sounds, T, width)
    frames = torch.arange(embeddings.shape[1], device=embeddings.device, dtype=torch.float64)
    centres = model.first_centre_ms + frames * (1000.0 / model.frame_rate)  # (T,) ms
    timestamps = centres.float()[None].expand(n_sounds, -1).contiguous()  # (n_sounds, T)
    return embeddings, timestamps


@torch.no_grad()
def get_scene_embeddings(audio, model: HearModel, sample_rate: int | None = None) -> torch.Tensor:
    """audio (n_sounds, n_samples) -> (n_sounds, scene_embedding_size): the mean over time."""
    embeddings, _ = get_timestamp_embeddings(audio, model, sample_rate=sample_rate)
    return embeddings.mean(dim=1)
