"""Reading audio files: anything libsndfile reads (wav, flac, ogg/vorbis, opus, mp3, aiff, ...), as a
mono float32 wave in [-1, 1] at the requested sample rate.

Every failure (missing, unreadable, corrupt, empty, zero-length, too short, too long, NaN/Inf samples,
a segment outside the file) raises `AudioError`, a ValueError whose message names the file and the
reason, so that a long job can skip the file and write the reason to its report.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import torch

from spear_fast.errors import UserError
from spear_fast.sample_rate import SAMPLE_RATE

from .resample import resample

# Shortest output accepted by default: one 25 ms analysis window at 16 kHz. Anything shorter gives no
# complete fbank frame and no frame from a WavLM-style conv front end (receptive field 400 samples).
MIN_SAMPLES = 400


# Containers whose libsndfile seek is not sample-accurate (measured with libsndfile 1.2.2: an Ogg/Vorbis
# seek into the last page lands elsewhere): segments are reached by decoding blocks and dropping them.
_DECODE_TO_SEEK = frozenset({"OGG"})
# MP3 (mpg123 in libsndfile 1.2.2) is worse: seeks are off by hundreds of samples, and even a read that
# continues after a first read call returns a few hundred samples that differ from one whole read.
# A segment is therefore decoded in ONE read from the start of the file and sliced.
_READ_PREFIX_IN_ONE_CALL = frozenset({"MP3"})
_SKIP_BLOCK = 1 << 16  # frames decoded per block while skipping to a segment


def _skip_frames(sound_file: sf.SoundFile, count: int) -> None:
    while count > 0:
        got = len(sound_file.read(frames=min(count, _SKIP_BLOCK), dtype="float32", always_2d=True))
        if got == 0:
            break
        count -= got


class AudioError(UserError):
    """A file that cannot be used as audio; `path` and `reason` are kept for reports."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True)
class AudioInfo:
    """What the file header says: native sample rate, frames per channel, channels, duration (s)."""

    sample_rate: int
    num_frames: int
    channels: int
    duration: float
    format: str


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Header information without decoding the samples; AudioError when the file cannot be opened."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise AudioError(path, "file not found")
    if os.path.isdir(path):
        raise AudioError(path, "is a directory, not an audio file")
    if os.path.getsize(path) == 0:
        raise AudioError(path, "empty file (0 bytes)")
    try:  # libsndfile reports any file it cannot open as "System error.": name the cause from errno
        with open(path, "rb"):
            pass
    except OSError as error:
        cause = (error.strerror or os.strerror(error.errno or 0) or type(error).__name__).lower()
        raise AudioError(path, f"{cause} (the file cannot be opened for reading)") from None
    try:
        info = sf.info(path)
    except (sf.LibsndfileError, RuntimeError, TypeError) as error:
        raise AudioError(path, f"unreadable or corrupt audio ({error})") from error
    if info.samplerate <= 0 or info.channels <= 0:
        raise AudioError(path, f"invalid header: sample rate {info.samplerate}, {info.channels} channel(s)")
    num_frames = int(info.frames)
    return AudioInfo(
        sample_rate=int(info.samplerate),
        num_frames=num_frames,
        channels=int(info.channels),
        duration=num_frames / info.samplerate,
        format=str(info.format),
    )


def load_audio(
    path: str | os.PathLike,
    target_sr: int | None = SAMPLE_RATE,
    *,
    offset: float = 0.0,
    duration: float | None = None,
    min_samples: int = MIN_SAMPLES,
    max_duration: float | None = None,
) -> tuple[torch.Tensor, int]:
    """Read `path` as a mono float32 wave (L,) at `target_sr` Hz (None: the file's own rate).

    offset/duration (seconds) read a segment without decoding the rest of the file (libsndfile seeks).
    Multichannel audio is averaged to mono; other rates are resampled with soxr (anti-aliased).
    Raises AudioError when the result would have fewer than `min_samples` samples, when the file (or
    the requested segment) is longer than `max_duration` seconds, or for any unusable file.
    Returns (wave, sample_rate).
    """
    path = os.fspath(path)
    if target_sr is not None and (int(target_sr) != target_sr or target_sr <= 0):
        raise ValueError(f"load_audio: target_sr must be a positive integer or None, got {target_sr!r}")
    if offset < 0 or not math.isfinite(offset):
        raise UserError(f"load_audio: offset must be a finite number >= 0 s, got {offset!r} for {path}")
    if duration is not None and (duration <= 0 or not math.isfinite(duration)):
        raise UserError(f"load_audio: duration must be a finite number > 0 s or None, got {duration!r} for {path}")
    info = audio_info(path)
    if info.num_frames == 0:
        raise AudioError(path, "zero-length audio (the header declares 0 samples)")
    native_sr = info.sample_rate
    start = round(offset * native_sr)
    if start >= info.num_frames:
        raise AudioError(path, f"offset {offset:.3f} s is past the end of the audio ({info.duration:.3f} s)")
    stop = info.num_frames if duration is None else min(info.num_frames, start + round(duration * native_sr))
    if max_duration is not None and (stop - start) / native_sr > max_duration:
        raise AudioError(
            path, f"too long: {(stop - start) / native_sr:.1f} s to read, more than max_duration={max_duration} s"
        )
    try:
        with sf.SoundFile(path) as sound_file:
            if start and info.format in _READ_PREFIX_IN_ONE_CALL:
                data = sound_file.read(frames=stop, dtype="float32", always_2d=True)[start:]  # (L, C)
            else:
                if start and info.format in _DECODE_TO_SEEK:
                    _skip_frames(sound_file, start)
                elif start:
                    sound_file.seek(start)
                data = sound_file.read(frames=stop - start, dtype="float32", always_2d=True)  # (L, C)
    except (sf.LibsndfileError, RuntimeError) as error:
        raise AudioError(path, f"decoding failed ({error})") from error
    if data.shape[0] == 0:
        raise AudioError(path, "no samples could be decoded")
    if not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise AudioError(path, f"{bad} non-finite (NaN/Inf) sample value(s)")
    mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]  # (L,)
    wave = torch.from_numpy(np.ascontiguousarray(mono))
    sample_rate = native_sr
    if target_sr is not None and target_sr != native_sr:
        wave = resample(wave, native_sr, int(target_sr))
        sample_rate = int(target_sr)
    if wave.numel() < min_samples:
        raise AudioError(
            path, f"too short: {wave.numel()} sample(s) at {sample_rate} Hz, fewer than min_samples={min_samples}"
        )
    return wave, sample_rate
