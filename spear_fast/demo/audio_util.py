"""Small audio helpers shared by the demo-corpus renderers (numpy only, no torch in the workers)."""
from __future__ import annotations

import hashlib
import io
import os

import numpy as np
import soundfile as sf
import soxr

from ..sample_rate import SAMPLE_RATE

MIN_RMS = 1e-3  # a clip quieter than -60 dBFS RMS is a failed render ("silent") and is skipped


def to_mono(wave: np.ndarray) -> np.ndarray:
    """(L,) or (L, C) -> (L,) float32 by averaging channels."""
    if wave.ndim == 2:
        wave = wave.mean(axis=1)
    if wave.ndim != 1:
        raise ValueError(f"expected a (L,) or (L, C) wave, got shape {wave.shape}")
    return wave.astype(np.float32)


def to_16k(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    """Mono float32 at 16 kHz (soxr HQ; deterministic)."""
    wave = to_mono(wave)
    if sample_rate == SAMPLE_RATE:
        return wave
    return soxr.resample(wave, sample_rate, SAMPLE_RATE, quality="HQ").astype(np.float32)


def read_16k(path: str) -> np.ndarray:
    wave, sr = sf.read(path, dtype="float32", always_2d=True)
    return to_16k(wave, sr)


def decode_wav_bytes(data: bytes, what: str) -> np.ndarray:
    if len(data) < 64:
        raise RuntimeError(f"{what} produced no audio ({len(data)} bytes)")
    wave, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return to_16k(wave, sr)


def normalize_peak(wave: np.ndarray, peak: float) -> np.ndarray:
    top = float(np.max(np.abs(wave))) if wave.size else 0.0
    return wave if top == 0.0 else (wave * (peak / top)).astype(np.float32)


def place(canvas: np.ndarray, sound: np.ndarray, start: int, gain: float = 1.0) -> None:
    """Add `sound * gain` into `canvas` at sample `start` (clipped at the canvas end)."""
    if start >= len(canvas) or start < 0:
        return
    n = min(len(sound), len(canvas) - start)
    canvas[start:start + n] += gain * sound[:n]


def check_clip(wave: np.ndarray, what: str) -> None:
    """Raise RuntimeError for a render that cannot go into the corpus (empty, non-finite, silent)."""
    if wave.ndim != 1 or wave.size < SAMPLE_RATE // 10:
        raise RuntimeError(f"{what}: too short ({wave.shape})")
    if not np.all(np.isfinite(wave)):
        raise RuntimeError(f"{what}: non-finite samples")
    rms = float(np.sqrt(np.mean(np.square(wave, dtype=np.float64))))
    if rms < MIN_RMS:
        raise RuntimeError(f"{what}: silent render (RMS {rms:.2e} < {MIN_RMS})")


def write_clip(path: str, wave: np.ndarray) -> float:
    """Write a 16 kHz mono FLAC atomically (temp file + os.replace); returns the duration in s."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}.flac"
    sf.write(tmp, np.clip(wave, -1.0, 1.0), SAMPLE_RATE, subtype="PCM_16", format="FLAC")
    os.replace(tmp, path)
    return len(wave) / SAMPLE_RATE


def audio_checksum(path: str) -> str:
    """sha256 of the decoded int16 samples (independent of FLAC container details)."""
    data, _ = sf.read(path, dtype="int16")
    return hashlib.sha256(np.ascontiguousarray(data).tobytes()).hexdigest()
