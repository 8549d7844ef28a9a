"""HEAR 2021 API (https://hearbenchmark.com/hear-api.html) for a spear-fast export directory.

    from spear_fast import hear
    model = hear.load_model("exported/")                 # or load_model("exported/", layers="all")
    scene = hear.get_scene_embeddings(audio, model)      # (n_sounds, scene_embedding_size)
    emb, ts = hear.get_timestamp_embeddings(audio, model)  # (n_sounds, T, d), (n_sounds, T) in ms

audio: (n_sounds, n_samples) float32 at 16 kHz (a torch tensor or numpy array), all the same length.
Layers: "last" (default; the final layer, d = encoder dim) or "all" (every layer concatenated in
order, d = num_layers x dim; the paper reports both). hear-eval-kit calls load_model(path) only, so
the environment variables SPEAR_HEAR_MODEL (used when model_file_path is "") and SPEAR_HEAR_LAYERS
("last" | "all") select them there.
Timestamps: the centre of each student frame's receptive field. The fbank frame i (10 ms shift,
snip_edges=False) is centred on sample 160 i + 80; output frame j of a time_stride s front end
(kernel-3 convolutions, symmetric) is centred on fbank frame s j, i.e. at (160 s j + 80) / 16 ms:
5, 25, 45, ... ms at 50 Hz.
Scene embeddings: the mean of the timestamp embeddings over time.
Sounds run in batches of `batch_size`; all sounds have the same length, so no padding is involved
and a sound's embedding does not depend on the batch it is in (up to float rounding).
"""
from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

SAMPLE_RATE = 16000
FBANK_SHIFT = 160  # samples per fbank frame
LAYER_MODES = ("last", "all")


class HearModel(nn.Module):
    """The exported student plus the attributes the HEAR API requires."""

    sample_rate = SAMPLE_RATE

    def __init__(self, student: nn.Module, layers: str = "last", batch_size: int = 16):
        super().__init__()
        if layers not in LAYER_MODES:
            raise ValueError(f"hear: layers must be one of {LAYER_MODES}, got {layers!r}")
        if batch_size < 1:
            raise ValueError(f"hear: batch_size must be >= 1, got {batch_size}")
        self.student = student.eval()
        self.layers = layers
        self.batch_size = batch_size
        config = student.config
        self.time_stride = config.subsampling.time_stride
        width = config.encoder.dim * (config.encoder.num_layers if layers == "all" else 1)
        self.scene_embedding_size = width
        self.timestamp_embedding_size = width

    def train(self, mode: bool = True) -> HearModel:
        return super().train(False)  # embeddings never use dropout

    @property
    def frame_rate(self) -> float:
        return SAMPLE_RATE / (FBANK_SHIFT * self.time_stride)


def load_model(model_file_path: str = "", layers: str | None = None, device: str | torch.device = "cpu",
               batch_size: int = 16) -> HearModel:
    """A HEAR model from a `spear export` directory (config.json + model.safetensors)."""
    from spear_fast.model.pretrained import SpearModel

    path = model_file_path or os.environ.get("SPEAR_HEAR_MODEL", "")
    if not path:
        raise ValueError("hear.load_model: give the spear-fast export directory as model_file_path "
                         "(or set SPEAR_HEAR_MODEL); no weights are bundled")
    layers = layers or os.environ.get("SPEAR_HEAR_LAYERS", "last")
    return HearModel(SpearModel.from_pretrained(path, device=device), layers=layers, batch_size=batch_size)


def _check_audio(audio, model: HearModel) -> torch.Tensor:
    if isinstance(audio, np.ndarray):
        audio = torch.from_numpy(audio)
    if not isinstance(audio, torch.Tensor) or audio.dim() != 2 or not audio.is_floating_point():
        shape = tuple(audio.shape) if hasattr(audio, "shape") else type(audio).__name__
        raise ValueError(f"hear: audio must be a float (n_sounds, n_samples) array, got {shape}")
    if audio.shape[0] == 0:
        raise ValueError(f"hear: audio holds no sounds, shape {tuple(audio.shape)}")
    if audio.shape[1] < FBANK_SHIFT // 2:
        raise ValueError(f"hear: sounds need >= {FBANK_SHIFT // 2} samples (one fbank frame), got shape "
                         f"{tuple(audio.shape)}")
    if not bool(torch.isfinite(audio).all()):
        raise ValueError("hear: audio contains NaN or Inf")
    return audio.to(next(model.student.parameters()).device, torch.float32)


@torch.no_grad()
def get_timestamp_embeddings(audio, model: HearModel) -> tuple[torch.Tensor, torch.Tensor]:
    """audio (n_sounds, n_samples) -> (embeddings (n_sounds, T, timestamp_embedding_size),
    timestamps (n_sounds, T) in milliseconds)."""
    audio = _check_audio(audio, model)
    n_sounds, n_samples = audio.shape
    outputs = []
    for start in range(0, n_sounds, model.batch_size):
        waves = audio[start : start + model.batch_size]  # (b, L)
        out = model.student.extract(waves, torch.full((waves.shape[0],), n_samples, dtype=torch.int64))
        if model.layers == "all":
            outputs.append(torch.cat(out.layers, dim=-1))  # (b, T, L * d)
        else:
            outputs.append(out.hidden)  # (b, T, d)
    embeddings = torch.cat(outputs)  # (n_sounds, T, width)
    frames = torch.arange(embeddings.shape[1], device=embeddings.device, dtype=torch.float64)
    centres = (FBANK_SHIFT * model.time_stride * frames + FBANK_SHIFT / 2) * 1000.0 / SAMPLE_RATE  # (T,) ms
    timestamps = centres.float()[None].expand(n_sounds, -1).contiguous()  # (n_sounds, T)
    return embeddings, timestamps


@torch.no_grad()
def get_scene_embeddings(audio, model: HearModel) -> torch.Tensor:
    """audio (n_sounds, n_samples) -> (n_sounds, scene_embedding_size): the mean over time."""
    embeddings, _ = get_timestamp_embeddings(audio, model)
    return embeddings.mean(dim=1)
