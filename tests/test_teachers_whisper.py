"""Whisper tiny.en demo teacher (CTranslate2): the log-mel front-end vs openai-whisper's own
whisper/audio.py, the encoder's frames (384-d, 50 Hz, deterministic, padding-invariant)."""
import importlib.util
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("ctranslate2")

from spear_fast.teachers import load_teacher  # noqa: E402
from spear_fast.teachers.whisper_ct2 import WINDOW_SAMPLES, WhisperLogMel, slaney_mel_filters  # noqa: E402


@pytest.fixture(scope="module")
def whisper_audio():
    """openai-whisper's whisper/audio.py (pip install --no-deps openai-whisper). The package's
    __init__ needs tiktoken and numba, so audio.py is imported under a bare parent package; it
    needs only numpy, torch and whisper/utils.py (standard library)."""
    spec = importlib.util.find_spec("whisper")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("openai-whisper is not installed (test extra: pip install --no-deps openai-whisper)")
    folder = list(spec.submodule_search_locations)[0]
    saved = {k: v for k, v in sys.modules.items() if k == "whisper" or k.startswith("whisper.")}
    parent = types.ModuleType("whisper")
    parent.__path__ = [folder]
    sys.modules["whisper"] = parent
    try:
        audio = importlib.import_module("whisper.audio")
    finally:
        for key in [k for k in sys.modules if k == "whisper" or k.startswith("whisper.")]:
            del sys.modules[key]
        sys.modules.update(saved)
    return audio, Path(folder)


@pytest.fixture(scope="module")
def teacher():
    return load_teacher("whisper-demo")


def _vowel(seconds, f0, seed):
    """A crude voiced sound: a 1/k harmonic series on f0 with vibrato, shaped by two formants."""
    gen = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.03 * np.sin(2 * np.pi * 5 * t))) / 16000
    wave = np.zeros_like(t)
    for k in range(1, 30):
        freq = k * f0
        gain = np.exp(-((freq - 700) / 200) ** 2) + 0.5 * np.exp(-((freq - 1200) / 250) ** 2) + 0.02
        wave += gain * np.sin(k * phase + gen.uniform(0, 2 * np.pi)) / k
    return torch.from_numpy(0.3 * wave / np.abs(wave).max()).float()


def test_mel_filters_equal_whisper_asset(whisper_audio):
    _, folder = whisper_audio
    with np.load(folder / "assets" / "mel_filters.npz") as f:
        reference = f["mel_80"]
    ours = slaney_mel_filters()
    assert ours.shape == reference.shape == (80, 201)
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-8)


def test_log_mel_matches_openai_whisper(whisper_audio, seed):
    audio, _ = whisper_audio
    gen = torch.Generator().manual_seed(seed)
    clip = torch.randn(37_000, generator=gen) * 0.1
    clip[10_000:20_000] = 0.0  # silence -> the max - 8 floor
    # whisper.transcribe: log_mel_spectrogram(audio, padding=N_SAMPLES), then the first 3000 frames
    reference = audio.log_mel_spectrogram(clip, 80, padding=audio.N_SAMPLES)[:, : audio.N_FRAMES]
    window = torch.zeros(WINDOW_SAMPLES)
    window[: clip.numel()] = clip
    ours = WhisperLogMel()(window[None])[0]
    assert ours.shape == reference.shape == (80, 3000)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=2e-5)


def test_encoder_frames(teacher, seed):
    assert teacher.dim == 384 and teacher.frame_rate == 50.0 and teacher.layer == "last"
    speech = _vowel(2.5, 120.0, seed)
    quiet = torch.randn(1, 30_000, generator=torch.Generator().manual_seed(seed)) * 1e-4
    lengths = torch.tensor([speech.numel(), 30_000])
    waves = torch.zeros(2, speech.numel())
    waves[0] = speech
    waves[1, :30_000] = quiet
    waves[1, 30_000:] = 0.7  # padding content must not matter
    batch = teacher(waves, lengths)
    assert batch.frames.shape == (2, math.ceil(speech.numel() / 320), 384)
    assert batch.frame_lengths.tolist() == [math.ceil(speech.numel() / 320), math.ceil(30_000 / 320)]
    assert torch.isfinite(batch.frames).all()
    alone = teacher(speech[None], lengths[:1])
    torch.testing.assert_close(alone.frames[0], batch.frames[0], rtol=1e-3, atol=1e-3)  # padding-invariant
    again = teacher(speech[None], lengths[:1])
    assert torch.equal(again.frames, alone.frames)  # deterministic
    n = int(batch.frame_lengths[1])
    voiced, silent = batch.frames[0, :n], batch.frames[1, :n]
    cosine = torch.nn.functional.cosine_similarity(voiced.mean(0), silent.mean(0), dim=0)
    assert (voiced - silent).norm() / silent.norm() > 0.3 and cosine < 0.95
    assert batch.frames[1, n:].abs().max() == 0


def test_long_clip_uses_30s_windows_and_clip_context(teacher, seed):
    # a clip of 30 s + 0.5 s: window 2 holds the last 0.5 s, zero-padded to 30 s
    tail = _vowel(0.5, 200.0, seed + 1)
    clip = torch.cat([torch.zeros(WINDOW_SAMPLES), tail])
    out = teacher(clip[None], torch.tensor([clip.numel()]))
    assert out.frames.shape[1] == 1500 + 25
    tail_alone = teacher(tail[None], torch.tensor([tail.numel()]))
    torch.testing.assert_close(out.frames[0, 1500:], tail_alone.frames[0], rtol=1e-3, atol=1e-3)
    fast = load_teacher("whisper-demo?context=clip")
    short = fast(tail[None], torch.tensor([tail.numel()]))
    assert short.frames.shape == tail_alone.frames.shape
    assert not torch.allclose(short.frames, tail_alone.frames, atol=1e-2)  # a different (shorter) context


def test_bad_specs():
    for layer in ("9", "-1", "middle"):
        with pytest.raises(ValueError, match="layer"):
            load_teacher(f"whisper-demo?layer={layer}")
    with pytest.raises(ValueError, match="CTranslate2 Whisper folder"):
        load_teacher("whisper-demo:/nonexistent/folder")
    with pytest.raises(ValueError, match="context"):
        load_teacher("whisper-demo?context=10s")
