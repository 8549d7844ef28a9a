"""spear_fast.audio.fbank against lhotse's Fbank(FbankConfig(num_mel_bins=128)) (the SPEAR recipe's
features) and, for waves too short for lhotse, against a float64 per-frame transcription of Kaldi's
ExtractWindow + fbank written here."""
from __future__ import annotations

import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from spear_fast.audio import FBANK_DIM, FRAME_SHIFT, PAD_VALUE, fbank, load_audio

fbank_module = sys.modules["spear_fast.audio.fbank"]
lhotse = pytest.importorskip("lhotse", reason="lhotse is the fbank reference (test extra)")

TOLERANCE = 1e-3  # absolute, in log-energy units (the bound)


@pytest.fixture(scope="module")
def reference():
    from lhotse import Fbank, FbankConfig

    return Fbank(FbankConfig(num_mel_bins=128))


def recorded_like(length: int, rng: np.random.Generator) -> np.ndarray:
    """Chirp + harmonics + noise, with a stretch of digital silence and a quiet stretch: (length,) float32."""
    t = np.arange(length) / 16000.0
    f0 = rng.uniform(80, 300)
    wave = sum(
        rng.uniform(0.05, 0.3) / h * np.sin(2 * np.pi * h * (f0 + rng.uniform(200, 3000) * t) * t + rng.uniform(0, 6))
        for h in range(1, 5)
    )
    wave = wave + rng.uniform(1e-3, 3e-2) * rng.standard_normal(length)
    if length > 1000:
        a = int(rng.integers(0, length // 2))
        wave[a : a + length // 5] = 0.0  # digital silence (energies at the log floor)
        b = int(rng.integers(0, length // 2))
        wave[b : b + length // 6] *= 1e-3
    return np.clip(wave, -1, 1).astype(np.float32)


def kaldi_fbank_float64(wave: np.ndarray, window: np.ndarray, banks: np.ndarray) -> np.ndarray:
    """Kaldi's compute-fbank (snip_edges=false, dither 0) frame by frame in float64: (T, 128)."""
    length = len(wave)
    frames = (length + 80) // 160
    out = np.zeros((frames, banks.shape[1]))
    for t in range(frames):
        start = t * 160 + 80 - 200  # Kaldi: first sample = t * shift + shift/2 - frame_length/2
        frame = np.empty(400)
        for s in range(400):
            i = start + s
            while i < 0 or i >= length:  # Kaldi's ExtractWindow mirror loop
                i = -i - 1 if i < 0 else 2 * length - 1 - i
            frame[s] = wave[i]
        frame -= frame.mean()
        frame[1:] -= 0.97 * frame[:-1].copy()
        frame[0] -= 0.97 * frame[0]
        frame *= window
        power = np.abs(np.fft.rfft(frame, n=512)) ** 2
        out[t] = np.log(np.maximum(power @ banks, np.finfo(np.float32).eps))
    return out


@pytest.mark.parametrize("length", [200, 239, 240, 401, 1601, 16000, 16079, 16080, 48123])
def test_matches_lhotse(reference, seed, length):
    rng = np.random.default_rng(seed)
    wave = recorded_like(length, rng)
    expected = reference.extract(wave, 16000)  # (T, 128)
    feats, frames = fbank(torch.from_numpy(wave))
    assert feats.shape == expected.shape == ((length + 80) // 160, 128)  # round(L / 160), halves up
    assert int(frames) == expected.shape[0]
    assert feats.dtype == torch.float32
    np.testing.assert_allclose(feats.numpy(), expected, rtol=0, atol=TOLERANCE)


def test_matches_lhotse_on_espeak_speech(reference, tmp_path, seed):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    rng = np.random.default_rng(seed)
    words = ["seven", "purple", "engine", "harbour", "quietly", "tomorrow", "bright", "station", "under"]
    text = " ".join(rng.choice(words, size=8))
    path = tmp_path / "speech.wav"
    subprocess.run(["espeak-ng", "-s", str(int(rng.integers(120, 220))), "-w", str(path), text], check=True)
    wave, sr = load_audio(path)  # espeak-ng writes 22050 Hz: resampled to 16 kHz
    assert sr == 16000
    expected = reference.extract(wave.numpy(), 16000)
    feats, _ = fbank(wave)
    np.testing.assert_allclose(feats.numpy(), expected, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("length", [1, 50, 79, 80, 119, 150, 239, 400])
def test_short_waves_follow_kaldi_mirroring(reference, seed, length):
    """lhotse fails below ~120 samples; Kaldi mirrors repeatedly: compare with the float64 transcription."""
    rng = np.random.default_rng(seed)
    wave = (0.2 * rng.standard_normal(length)).astype(np.float32)
    window = reference.extractor.wav2win._window.double().numpy()
    banks = reference.extractor._fb.double().numpy()
    expected = kaldi_fbank_float64(wave.astype(np.float64), window, banks)
    feats, frames = fbank(torch.from_numpy(wave).double())
    assert int(frames) == (length + 80) // 160 == expected.shape[0]
    np.testing.assert_allclose(feats.numpy(), expected, rtol=0, atol=1e-9)
    feats32, _ = fbank(torch.from_numpy(wave))
    # Mirrored noise through pre-emphasis leaves the lowest mel bins ~40 dB under the rest (log energy
    # near -15), where float32 rounding of the frame's power spectrum reaches ~1e-4 of the log value
    # (seen: 1.7e-3 at -14.4): hence a relative term beside the absolute bound.
    np.testing.assert_allclose(feats32.numpy(), expected, rtol=2e-4, atol=TOLERANCE)


def test_float64_path_is_exact_kaldi(reference, seed):
    rng = np.random.default_rng(seed)
    wave = recorded_like(2345, rng).astype(np.float64)
    window = reference.extractor.wav2win._window.double().numpy()
    banks = reference.extractor._fb.double().numpy()
    feats, _ = fbank(torch.from_numpy(wave))
    assert feats.dtype == torch.float64
    np.testing.assert_allclose(feats.numpy(), kaldi_fbank_float64(wave, window, banks), rtol=0, atol=1e-9)


def test_constants_match_lhotse(reference):
    assert torch.equal(fbank_module.mel_banks(), reference.extractor._fb.data)
    assert torch.equal(fbank_module.povey_window(), reference.extractor.wav2win._window.data)
    assert FBANK_DIM == 128 and FRAME_SHIFT == 160
    assert PAD_VALUE == pytest.approx(math.log(1e-10))


@pytest.mark.parametrize("lengths", [[16000, 50, 3217, 0, 8080, 12345, 1601], [9000, 4001, 8999, 6543]])
def test_batched_equals_alone_and_padding(seed, lengths):
    rng = np.random.default_rng(seed)
    batch = torch.zeros(len(lengths), max(lengths))
    for row, length in enumerate(lengths):
        batch[row, :length] = torch.from_numpy(recorded_like(length, rng))
        batch[row, length:] = torch.from_numpy(rng.uniform(-1, 1, max(lengths) - length).astype(np.float32))  # garbage
    lengths_t = torch.tensor(lengths)
    feats, frame_lengths = fbank(batch, lengths_t)
    assert feats.shape == (len(lengths), (max(lengths) + 80) // 160, 128)
    assert frame_lengths.tolist() == [(n + 80) // 160 for n in lengths]
    for row, length in enumerate(lengths):
        alone, n = fbank(batch[row, :length])
        assert int(n) == frame_lengths[row]
        torch.testing.assert_close(feats[row, :n], alone, rtol=0, atol=1e-5)
        assert (feats[row, n:] == PAD_VALUE).all()
    from_ints, int_frame_lengths = fbank(batch, lengths)  # the host copies the trainer passes
    assert torch.equal(from_ints, feats) and torch.equal(int_frame_lengths, frame_lengths)


def test_small_step_chunking_is_invisible(monkeypatch, seed):
    rng = np.random.default_rng(seed)
    waves = torch.from_numpy(np.stack([recorded_like(9000, rng) for _ in range(3)]))
    lengths = torch.tensor([9000, 7000, 4000])
    whole, _ = fbank(waves, lengths)
    monkeypatch.setattr(fbank_module, "_FRAMES_PER_STEP", 7)  # 2 frames per step for B = 3
    chunked, _ = fbank(waves, lengths)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-5)


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"\(2, 3, 4\)"):
        fbank(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="floating"):
        fbank(torch.ones(2, 400, dtype=torch.int16))
    with pytest.raises(ValueError, match=r"lengths must have shape \(2,\)"):
        fbank(torch.randn(2, 400), torch.tensor([400]))
    with pytest.raises(ValueError, match="401"):
        fbank(torch.randn(2, 400), torch.tensor([400, 401]))
    with pytest.raises(ValueError, match="-1"):
        fbank(torch.randn(2, 400), [400, -1])
    with pytest.raises(ValueError, match="must have 2 entries"):
        fbank(torch.randn(2, 400), [400])
    with pytest.raises(ValueError, match="integers"):
        fbank(torch.randn(2, 400), torch.tensor([400.0, 3.0]))
