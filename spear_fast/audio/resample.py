"""Sample-rate conversion with an anti-aliased resampler (libsoxr through the `soxr` package).

soxr's "HQ" preset is a linear-phase polyphase filter with a passband to ~91 % of the lower Nyquist
frequency and > 120 dB of stop-band attenuation (measured: a tone above the new Nyquist frequency
comes out ~140 dB down), which is far below 16-bit quantisation noise.
"""
from __future__ import annotations

import numpy as np
import soxr
import torch

# soxr quality preset: "HQ" (20-bit precision, ~125+ dB rejection) is the library's default and costs a
# fraction of the decode time; "VHQ" (28-bit) buys nothing audible for 16-bit-era material.
SOXR_QUALITY = "HQ"


def resample(wave: torch.Tensor | np.ndarray, orig_sr: int, new_sr: int) -> torch.Tensor:
    """Resample `wave` (L,) or (C, L) from `orig_sr` to `new_sr` Hz.

    Returns a float32 torch tensor on the input's device ((L',) or (C, L')). The work runs on the CPU
    (libsoxr); CUDA input is copied there and back. Equal rates return the input as float32 unchanged.
    """
    if int(orig_sr) != orig_sr or int(new_sr) != new_sr or orig_sr <= 0 or new_sr <= 0:
        raise ValueError(f"resample: sample rates must be positive integers, got orig_sr={orig_sr}, new_sr={new_sr}")
    device = wave.device if isinstance(wave, torch.Tensor) else torch.device("cpu")
    array = wave.detach().cpu().numpy() if isinstance(wave, torch.Tensor) else np.asarray(wave)
    if array.ndim not in (1, 2):
        raise ValueError(f"resample: expected a wave of shape (L,) or (C, L), got shape {tuple(array.shape)}")
    if array.dtype not in (np.float32, np.float64):
        array = array.astype(np.float32)
    if orig_sr == new_sr:
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(device)
    if array.shape[-1] == 0:
        out = np.zeros(array.shape[:-1] + (0,), dtype=np.float32)
        return torch.from_numpy(out).to(device)
    # soxr takes (frames,) or (frames, channels).
    signal = np.ascontiguousarray(array.T)  # (L,) or (L, C)
    out = soxr.resample(signal, int(orig_sr), int(new_sr), quality=SOXR_QUALITY)  # (L',) or (L', C)
    out = np.ascontiguousarray(out.T, dtype=np.float32)  # (L',) or (C, L')
    return torch.from_numpy(out).to(device)
