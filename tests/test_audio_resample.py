"""spear_fast.audio.resample: anti-aliasing and in-band fidelity, measured against by-hand sinusoids."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from spear_fast.audio import resample

# A proper resampler rejects energy above the new Nyquist frequency by far more than 16-bit audio's
# ~96 dB dynamic range; soxr HQ measures ~140 dB. The bound leaves room for other builds of libsoxr.
MIN_REJECTION_DB = 100.0


def tone(freq: float, sr: int, seconds: float, amplitude: float = 0.5, phase: float = 0.0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return amplitude * np.sin(2 * np.pi * freq * t + phase)


def middle(x: np.ndarray, sr: int) -> np.ndarray:
    """Drop 0.1 s at each end (filter start-up)."""
    cut = sr // 10
    return x[cut:-cut]


def fit_sinusoid(x: np.ndarray, freq: float, sr: int, start: int) -> tuple[float, float]:
    """Least-squares amplitude of a sinusoid at `freq` and the rms of what it leaves unexplained."""
    t = (start + np.arange(len(x))) / sr
    basis = np.stack([np.sin(2 * np.pi * freq * t), np.cos(2 * np.pi * freq * t)], axis=1)
    coeffs, *_ = np.linalg.lstsq(basis, x, rcond=None)
    residual = x - basis @ coeffs
    return float(np.hypot(*coeffs)), float(np.sqrt(np.mean(residual**2)))


@pytest.mark.parametrize("orig_sr", [44100, 48000, 22050, 32000])
def test_tones_above_new_nyquist_are_rejected(orig_sr, seed):
    rng = np.random.default_rng(seed)
    for freq in (8600.0, rng.uniform(9000, orig_sr / 2 - 500)):
        wave = tone(freq, orig_sr, 1.0, amplitude=0.9, phase=rng.uniform(0, 6))
        out = resample(torch.from_numpy(wave).float(), orig_sr, 16000).numpy().astype(np.float64)
        rms_in = 0.9 / np.sqrt(2)
        rms_out = np.sqrt(np.mean(middle(out, 16000) ** 2))
        attenuation_db = 20 * np.log10(rms_in / max(rms_out, 1e-30))
        assert attenuation_db > MIN_REJECTION_DB, f"{freq:.0f} Hz at {orig_sr} Hz: only {attenuation_db:.1f} dB"


@pytest.mark.parametrize("orig_sr, max_freq", [(44100, 7000.0), (48000, 7000.0), (8000, 3500.0), (22050, 7000.0)])
def test_in_band_tone_keeps_frequency_and_amplitude(orig_sr, max_freq, seed):
    rng = np.random.default_rng(seed)
    freq = rng.uniform(100.0, max_freq)
    amplitude = rng.uniform(0.1, 0.9)
    wave = tone(freq, orig_sr, 1.0, amplitude=amplitude, phase=rng.uniform(0, 6))
    out = resample(torch.from_numpy(wave).float(), orig_sr, 16000)
    assert out.dtype == torch.float32
    assert out.shape == (round(len(wave) * 16000 / orig_sr),)
    cut = 1600
    fitted, residual = fit_sinusoid(out.numpy()[cut:-cut].astype(np.float64), freq, 16000, cut)
    assert fitted == pytest.approx(amplitude, rel=2e-3)  # passband ripple well under 0.02 dB
    assert residual < 1e-3 * amplitude  # a shifted frequency would leave a large residual
    # Upsampling must not create images: the 8 kHz case's spectrum above 4 kHz stays empty.
    if orig_sr == 8000:
        spectrum = np.abs(np.fft.rfft(out.numpy()[cut:-cut] * np.hanning(len(out) - 2 * cut)))
        freqs = np.fft.rfftfreq(len(out) - 2 * cut, 1 / 16000)
        assert spectrum[freqs > 4100].max() < 1e-5 * spectrum.max()


def test_shapes_devices_and_identity(seed):
    rng = np.random.default_rng(seed)
    stereo = torch.from_numpy(rng.standard_normal((2, 4410)).astype(np.float32))
    out = resample(stereo, 44100, 16000)
    assert out.shape == (2, 1600)
    torch.testing.assert_close(out[1], resample(stereo[1], 44100, 16000), rtol=0, atol=1e-6)
    same = resample(stereo[0].double(), 16000, 16000)
    assert same.dtype == torch.float32 and torch.equal(same, stereo[0])
    assert resample(np.zeros(0, dtype=np.float32), 44100, 16000).shape == (0,)


def test_bad_arguments():
    with pytest.raises(ValueError, match="positive integers"):
        resample(torch.randn(100), 0, 16000)
    with pytest.raises(ValueError, match="positive integers"):
        resample(torch.randn(100), 44100.5, 16000)
    with pytest.raises(ValueError, match=r"\(2, 3, 4\)"):
        resample(torch.randn(2, 3, 4), 44100, 16000)
