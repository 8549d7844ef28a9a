"""spear_fast.audio.load_audio: formats, downmix, resampling, segments and every failure mode."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from spear_fast.audio import AudioError, audio_info, load_audio


def band_limited(sr: int, seconds: float, rng: np.random.Generator, channels: int = 1) -> np.ndarray:
    """Sum of a few tones below 6 kHz at `sr`: (L,) or (L, C) float64 in [-0.9, 0.9]."""
    t = np.arange(int(sr * seconds)) / sr
    out = []
    for _ in range(channels):
        freqs = rng.uniform(100, 6000, size=4)
        amps = rng.uniform(0.05, 0.2, size=4)
        out.append(sum(a * np.sin(2 * np.pi * f * t + rng.uniform(0, 6)) for a, f in zip(amps, freqs)))
    return np.stack(out, axis=1) if channels > 1 else out[0]


def snr_db(signal: np.ndarray, estimate: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(signal**2) / np.sum((signal - estimate) ** 2)))


# (extension, format, subtype, lossless): every container+codec this libsndfile can write.
FORMATS = [
    ("wav", "WAV", "PCM_16", True),
    ("wav", "WAV", "FLOAT", True),
    ("flac", "FLAC", "PCM_24", True),
    ("aiff", "AIFF", "PCM_16", True),
    ("ogg", "OGG", "VORBIS", False),
    ("opus", "OGG", "OPUS", False),
    ("mp3", "MP3", "MPEG_LAYER_III", False),
]


@pytest.mark.parametrize("ext, fmt, subtype, lossless", FORMATS, ids=[f"{f[0]}-{f[2]}" for f in FORMATS])
def test_formats_load_and_resample(tmp_path, seed, ext, fmt, subtype, lossless):
    if subtype not in sf.available_subtypes(fmt):
        pytest.skip(f"this libsndfile cannot write {fmt}/{subtype}")
    native_sr = 48000  # opus only takes 8/12/16/24/48 kHz
    path = tmp_path / f"clip.{ext}"
    sf.write(path, band_limited(native_sr, 1.0, np.random.default_rng(seed)), native_sr, format=fmt, subtype=subtype)
    wave, sr = load_audio(path)
    assert sr == 16000 and wave.dtype == torch.float32 and wave.dim() == 1
    # The same tones evaluated directly at 16 kHz: an independent expectation of the resampled wave.
    expected = band_limited(16000, 1.0, np.random.default_rng(seed))
    if ext == "mp3":  # MP3 decoders add encoder/decoder delay and padding: compare by best alignment
        lag = int(np.argmax(np.correlate(wave.numpy()[:8000].astype(np.float64), expected[:4000], mode="valid")))
        got = wave.numpy()[lag : lag + 12000]
        assert snr_db(expected[:12000][1600:], got[1600:]) > 15
        return
    assert wave.shape == expected.shape
    inner = slice(800, -800)  # filter start-up at the edges
    if lossless:
        np.testing.assert_allclose(wave.numpy()[inner], expected[inner], atol=2e-3)
    else:
        assert snr_db(expected[inner], wave.numpy()[inner]) > 15


def test_native_rate_and_stereo_downmix(tmp_path, seed):
    rng = np.random.default_rng(seed)
    stereo = band_limited(16000, 0.5, rng, channels=3)  # 3 channels, float WAV keeps values exactly
    path = tmp_path / "multi.wav"
    sf.write(path, stereo.astype(np.float32), 16000, subtype="FLOAT")
    wave, sr = load_audio(path, target_sr=None)
    assert sr == 16000
    np.testing.assert_allclose(wave.numpy(), stereo.astype(np.float32).mean(axis=1), rtol=0, atol=1e-7)
    info = audio_info(path)
    assert (info.sample_rate, info.num_frames, info.channels) == (16000, 8000, 3)
    assert info.duration == pytest.approx(0.5)


@pytest.mark.parametrize("ext, fmt, subtype", [("wav", "WAV", "FLOAT"), ("flac", "FLAC", "PCM_16"), ("ogg", "OGG", "VORBIS"), ("mp3", "MP3", "MPEG_LAYER_III")])
def test_segment_read_equals_slice_of_full_read(tmp_path, seed, ext, fmt, subtype):
    rng = np.random.default_rng(seed)
    path = tmp_path / f"long.{ext}"
    sf.write(path, band_limited(16000, 3.0, rng), 16000, format=fmt, subtype=subtype)
    full, _ = load_audio(path, target_sr=None)
    offset = float(rng.uniform(0.3, 1.5))
    duration = float(rng.uniform(0.2, 1.0))
    part, _ = load_audio(path, target_sr=None, offset=offset, duration=duration)
    start = round(offset * 16000)
    assert part.shape == (round(duration * 16000),)
    np.testing.assert_allclose(part.numpy(), full.numpy()[start : start + len(part)], rtol=0, atol=1e-6)
    tail, _ = load_audio(path, target_sr=None, offset=2.5, duration=10.0)  # clipped at the end of file
    np.testing.assert_allclose(tail.numpy(), full.numpy()[40000:], rtol=0, atol=1e-6)


def test_segment_read_resampled(tmp_path, seed):
    path = tmp_path / "seg44.flac"
    sf.write(path, band_limited(44100, 2.0, np.random.default_rng(seed)), 44100, subtype="PCM_24")
    part, sr = load_audio(path, offset=0.5, duration=1.0)
    expected = band_limited(16000, 2.0, np.random.default_rng(seed))[8000:24000]
    assert sr == 16000 and part.shape == (16000,)
    np.testing.assert_allclose(part.numpy()[800:-800], expected[800:-800], atol=2e-3)


def expect_error(path, match, **kwargs):
    with pytest.raises(AudioError, match=match) as info:
        load_audio(path, **kwargs)
    assert str(path) in str(info.value) and info.value.path == str(path)
    assert isinstance(info.value, ValueError)
    return info.value


def test_error_cases(tmp_path, seed):
    rng = np.random.default_rng(seed)
    expect_error(tmp_path / "missing.wav", "not found")
    expect_error(tmp_path, "directory")
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())
    expect_error(corrupt, "unreadable or corrupt")
    empty = tmp_path / "empty.flac"
    empty.write_bytes(b"")
    expect_error(empty, "empty file")
    text = tmp_path / "notes.wav"  # wrong extension for its content
    text.write_text("this is not audio\n" * 20)
    expect_error(text, "unreadable or corrupt")
    zero = tmp_path / "zero.wav"
    sf.write(zero, np.zeros(0, dtype=np.float32), 16000)
    expect_error(zero, "zero-length")
    nan = tmp_path / "nan.wav"
    samples = rng.uniform(-0.5, 0.5, 16000).astype(np.float32)
    samples[[10, 999]] = [np.nan, np.inf]
    sf.write(nan, samples, 16000, subtype="FLOAT")
    expect_error(nan, r"2 non-finite")
    one = tmp_path / "one.wav"
    sf.write(one, np.array([0.25], dtype=np.float32), 16000, subtype="FLOAT")
    expect_error(one, "too short: 1 sample")
    wave, _ = load_audio(one, min_samples=1)
    assert wave.tolist() == [0.25]
    truncated = tmp_path / "truncated.flac"
    sf.write(truncated, rng.uniform(-0.5, 0.5, 32000), 16000)
    truncated.write_bytes(truncated.read_bytes()[:60])  # header only
    with pytest.raises(AudioError, match=str(truncated)):
        load_audio(truncated)
    good = tmp_path / "good.wav"
    sf.write(good, rng.uniform(-0.5, 0.5, 32000), 16000)
    expect_error(good, "past the end", offset=2.5)
    expect_error(good, "too long", max_duration=1.5)
    with pytest.raises(ValueError, match="offset"):
        load_audio(good, offset=-1.0)
    with pytest.raises(ValueError, match="target_sr"):
        load_audio(good, target_sr=0)


def test_content_decides_not_the_extension(tmp_path, seed):
    rng = np.random.default_rng(seed)
    samples = rng.uniform(-0.5, 0.5, 4000).astype(np.float32)
    disguised = tmp_path / "actually_wav.flac"
    sf.write(disguised, samples, 16000, format="WAV", subtype="FLOAT")
    wave, _ = load_audio(disguised)
    np.testing.assert_array_equal(wave.numpy(), samples)


def test_an_unreadable_file_says_permission_denied(tmp_path, seed):
    """A file the process may not read is reported as such, not as libsndfile's "System error."."""
    import os
    import tempfile
    from pathlib import Path

    folder = Path(tempfile.mkdtemp(prefix="spear-perm-"))
    folder.chmod(0o755)  # traversable by anyone: only the file itself is closed
    path = folder / "locked.wav"
    sf.write(path, band_limited(16000, 0.5, np.random.default_rng(seed)), 16000)
    path.chmod(0)
    read_end, write_end = os.pipe()
    child = os.fork()  # root reads any file: the child drops to an unprivileged user first
    if child == 0:
        try:
            os.close(read_end)
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            reasons = []
            for read in (audio_info, load_audio):
                try:
                    read(str(path))
                    reasons.append("read without an error")
                except AudioError as error:
                    reasons.append(error.reason)
            os.write(write_end, "\n".join(reasons).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as stream:
        reasons = stream.read().splitlines()
    os.waitpid(child, 0)
    path.chmod(0o644)
    path.unlink()
    folder.rmdir()
    assert len(reasons) == 2 and all(reason.startswith("permission denied") for reason in reasons), reasons
