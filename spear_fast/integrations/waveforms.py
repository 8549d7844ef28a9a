"""Input checks shared by the harness adapters (HEAR, X-ARES, s3prl): every bad input gets a ValueError
that names what was expected, never a silent wrong result.

Rejected: a sample rate other than 16 kHz (where the harness passes one), multi-channel audio, empty
or too-short clips, integer PCM (and integer PCM already cast to float: a peak above MAX_FLOAT_PEAK),
NaN / Inf samples.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from spear_fast.sample_rate import SAMPLE_RATE

# A float wave is expected in [-1, 1] (randn-like test signals reach ~5); int16 PCM cast to float peaks
# in the hundreds to 32767, so a peak above this is taken for unscaled integer samples.
MAX_FLOAT_PEAK = 64.0


def check_sample_rate(who: str, sample_rate: int | None) -> None:
    """None means "the caller already resampled to 16 kHz" (the harness read the model's attribute)."""
    if sample_rate is not None and int(sample_rate) != SAMPLE_RATE:
        raise ValueError(f"{who}: expected {SAMPLE_RATE} Hz audio, got sample rate {sample_rate}; resample it to "
                         f"{SAMPLE_RATE} Hz first (e.g. spear_fast.audio.resample)")


def _as_float_tensor(who: str, audio) -> torch.Tensor:
    if isinstance(audio, np.ndarray):
        audio = torch.from_numpy(audio)
    if not isinstance(audio, torch.Tensor):
        raise ValueError(f"{who}: expected a torch.Tensor or numpy array of audio, got {type(audio).__name__}")
    if not audio.is_floating_point():
        raise ValueError(f"{who}: expected float audio in [-1, 1], got dtype {audio.dtype} (integer PCM: divide "
                         f"int16 samples by 32768)")
    return audio


def _check_values(who: str, audio: torch.Tensor) -> None:
    if not bool(torch.isfinite(audio).all()):
        raise ValueError(f"{who}: audio contains NaN or Inf")
    peak = float(audio.abs().max())
    if peak > MAX_FLOAT_PEAK:
        raise ValueError(f"{who}: expected float audio in [-1, 1], got a peak of {peak:g} (integer PCM stored "
                         f"as floats? divide int16 samples by 32768)")


def mono_batch(who: str, audio, *, min_samples: int, sample_rate: int | None = None, single_clip: bool = True,
               shape_name: str = "(B, samples)") -> torch.Tensor:
    """(B, L) float32 from a (B, L) batch (or one (L,) clip, when single_clip); ValueError otherwise.
    shape_name is the expected shape as the harness names it, for the messages."""
    check_sample_rate(who, sample_rate)
    audio = _as_float_tensor(who, audio)
    if audio.dim() == 1 and single_clip:
        audio = audio[None]
    if audio.dim() != 2:
        raise ValueError(f"{who}: expected mono audio {shape_name}, got shape {tuple(audio.shape)} (average the "
                         f"channels of multi-channel audio)")
    if audio.shape[0] == 0 or audio.shape[1] == 0:
        raise ValueError(f"{who}: audio is empty, shape {tuple(audio.shape)}")
    if audio.shape[1] < min_samples:
        raise ValueError(f"{who}: clips need at least {min_samples} samples ({1000 * min_samples / SAMPLE_RATE:g} ms "
                         f"at {SAMPLE_RATE} Hz), got shape {tuple(audio.shape)}")
    _check_values(who, audio)
    return audio.float()


def mono_clips(who: str, wavs: Sequence, *, min_samples: int, sample_rate: int | None = None) -> list[torch.Tensor]:
    """Each clip as a (L,) float tensor from a list of 1-D clips; ValueError otherwise."""
    check_sample_rate(who, sample_rate)
    if isinstance(wavs, (torch.Tensor, np.ndarray)) or not isinstance(wavs, Sequence):
        raise ValueError(f"{who}: expected a list of 1-D waveforms, got {type(wavs).__name__}")
    if len(wavs) == 0:
        raise ValueError(f"{who}: got an empty list of waveforms")
    clips = []
    for index, wav in enumerate(wavs):
        wav = _as_float_tensor(f"{who}: clip {index}", wav)
        if wav.dim() == 2 and 1 in wav.shape:  # (1, L) or (L, 1): one channel
            wav = wav.reshape(-1)
        if wav.dim() != 1:
            raise ValueError(f"{who}: clip {index} must be a mono 1-D waveform (samples,), got shape "
                             f"{tuple(wav.shape)} (average the channels of multi-channel audio)")
        if wav.shape[0] < min_samples:
            raise ValueError(f"{who}: clip {index} has {wav.shape[0]} samples, at least {min_samples} needed "
                             f"({1000 * min_samples / SAMPLE_RATE:g} ms at {SAMPLE_RATE} Hz)")
        _check_values(f"{who}: clip {index}", wav)
        clips.append(wav.float())
    return clips
