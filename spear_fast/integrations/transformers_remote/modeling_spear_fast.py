"""A spear-fast student for transformers' AutoModel (remote code, self-contained), called like the
SPEAR authors' released checkpoints:

    model = AutoModel.from_pretrained(folder, trust_remote_code=True)    # eval mode
    with torch.no_grad():
        out = model(audio, audio_lens)          # audio (B, L) or (L,) float 16 kHz in [-1, 1]
    out["encoder_out"]        (B, T, C) the last layer (after the final norm)
    out["encoder_out_lens"]   (B,) valid frames
    out["hidden_states"]      tuple of num_layers + 1 (B, T, C): the front end's output, then every
                              Transformer layer (s3prl's order; the last one is encoder_out)
Frames past a clip's length are zero. The 128-bin log-mel fbank is computed inside the model.

This file is copied verbatim beside model.safetensors by `spear export` and imports torch, numpy and
transformers only, so it runs where spear-fast is not installed. It re-states spear-fast's fbank
(spear_fast/audio/fbank.py) and student (spear_fast/model/{subsampling,attention,student}.py) with
SDPA attention on the padded batch; spear-fast's tests check that both give the same outputs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_spear_fast import SpearFastConfig

# ---------------------------------------------------------------------------------------------
# fbank: lhotse's Fbank(FbankConfig(num_mel_bins=128)) (see spear_fast/audio/fbank.py for the why)
SAMPLE_RATE = 16000  # spear_fast.sample_rate's value, re-stated: this file runs without spear-fast
FBANK_DIM = 128
FRAME_LENGTH = 400  # 25 ms
FRAME_SHIFT = 160  # 10 ms
FFT_SIZE = 512
PREEMPHASIS = 0.97
LOW_FREQ = 20.0
HIGH_FREQ = SAMPLE_RATE / 2 - 400.0
POVEY_EXPONENT = 0.85
ENERGY_FLOOR = float(np.finfo(np.float32).eps)
PAD_VALUE = math.log(1e-10)
_LEFT_CONTEXT = (FRAME_LENGTH - FRAME_SHIFT) // 2  # samples before frame 0's centre (snip_edges=False)
_FRAMES_PER_STEP = 4096  # frames computed at once over the batch (bounds the working set)
# Float input peaking above this is not a [-1, 1] wave: int16 PCM cast to float peaks in the thousands.
MAX_FLOAT_PEAK = 64.0


def _mel_banks() -> torch.Tensor:
    """(257, 128) float32 Kaldi triangular mel filters, the Nyquist bin weighted 0."""
    def to_mel(freq):
        return 1127.0 * np.log(1 + freq / 700)

    mel_low, mel_high = to_mel(LOW_FREQ), to_mel(HIGH_FREQ)
    delta = (mel_high - mel_low) / (FBANK_DIM + 1)
    bins = torch.arange(FBANK_DIM).unsqueeze(1)  # (M, 1)
    left = mel_low + bins * delta
    center = mel_low + (bins + 1.0) * delta
    right = mel_low + (bins + 2.0) * delta
    fft_freqs = (SAMPLE_RATE / FFT_SIZE) * torch.arange(float(FFT_SIZE // 2))  # (256,)
    fft_mel = torch.from_numpy(np.asarray(to_mel(fft_freqs.numpy()), dtype=np.float32)).unsqueeze(0)  # (1, 256)
    up = (fft_mel - left) / (center - left)
    down = (right - fft_mel) / (right - center)
    weights = F.pad(torch.clamp_min(torch.minimum(up, down), 0.0), (0, 1))  # (M, 257)
    return weights.T.contiguous().to(torch.float32)


def _mirror(positions: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Kaldi's edge reflection of sample positions (1, P) into [0, length) for lengths (B, 1)."""
    period = 2 * lengths
    folded = torch.remainder(positions, period)
    return torch.where(folded >= lengths, period - 1 - folded, folded)  # (B, P)


def fbank(waves: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """waves (B, L) float32 in [-1, 1], lengths (B,) int64 -> (feats (B, T, 128) padded with PAD_VALUE,
    frame lengths (B,) = round(L / 160), halves up)."""
    batch, max_len = waves.shape
    device = waves.device
    frame_lengths = (lengths + FRAME_SHIFT // 2) // FRAME_SHIFT  # (B,)
    total = int(frame_lengths.max())
    feats = torch.full((batch, total, FBANK_DIM), PAD_VALUE, dtype=torch.float32, device=device)
    window = torch.hann_window(FRAME_LENGTH, periodic=False, dtype=torch.float32).pow(POVEY_EXPONENT).to(device)
    banks = _mel_banks().to(device)
    safe_lengths = lengths.clamp_min(1)[:, None]  # (B, 1)
    step = max(1, _FRAMES_PER_STEP // batch)
    for t0 in range(0, total, step):
        t1 = min(total, t0 + step)
        positions = torch.arange(t0 * FRAME_SHIFT - _LEFT_CONTEXT, (t1 - 1) * FRAME_SHIFT - _LEFT_CONTEXT
                                 + FRAME_LENGTH, device=device)  # (P,)
        samples = torch.gather(waves, 1, _mirror(positions[None, :], safe_lengths))  # (B, P)
        frames = samples.unfold(1, FRAME_LENGTH, FRAME_SHIFT)  # (B, t1 - t0, 400)
        frames = frames - frames.mean(dim=-1, keepdim=True)  # DC offset removed per frame
        scaled = frames * PREEMPHASIS
        frames[..., 1:] -= scaled[..., :-1]  # pre-emphasis; the first sample's predecessor is itself
        frames[..., :1] -= scaled[..., :1]
        frames *= window
        spectrum = torch.fft.rfft(frames, n=FFT_SIZE, dim=-1)  # (B, t, 257)
        power = spectrum.real.square() + spectrum.imag.square()
        chunk = torch.matmul(power, banks).clamp_min(ENERGY_FLOOR).log()  # (B, t, 128)
        valid = torch.arange(t0, t1, device=device)[None, :] < frame_lengths[:, None]  # (B, t)
        feats[:, t0:t1] = chunk.masked_fill_(~valid[..., None], PAD_VALUE)
    return feats, frame_lengths


def check_audio(audio, audio_lens, sampling_rate: int | None, min_samples: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's input as (waves (B, L) float32, lengths (B,) int64); ValueError naming what was
    expected for anything else (a wrong sample rate, stereo, empty or integer audio, bad lengths)."""
    if sampling_rate is not None and int(sampling_rate) != SAMPLE_RATE:
        raise ValueError(f"spear-fast model: expected {SAMPLE_RATE} Hz audio, got sampling_rate={sampling_rate}; "
                         f"resample it to {SAMPLE_RATE} Hz first")
    if isinstance(audio, np.ndarray):
        audio = torch.from_numpy(audio)
    if not isinstance(audio, torch.Tensor):
        raise ValueError(f"spear-fast model: audio must be a torch.Tensor or numpy array, got {type(audio).__name__}")
    if not audio.is_floating_point():
        raise ValueError(f"spear-fast model: expected float audio in [-1, 1], got dtype {audio.dtype} "
                         f"(integer PCM: divide int16 samples by 32768)")
    if audio.dim() == 1:
        audio = audio[None]
    if audio.dim() != 2:
        raise ValueError(f"spear-fast model: expected mono audio (B, samples) or (samples,), got shape "
                         f"{tuple(audio.shape)} (average the channels of multi-channel audio)")
    batch, max_len = audio.shape
    if batch == 0 or max_len == 0:
        raise ValueError(f"spear-fast model: audio is empty, shape {tuple(audio.shape)}")
    if audio_lens is None:
        lengths = torch.full((batch,), max_len, dtype=torch.int64)
    else:
        lengths = torch.as_tensor(audio_lens).reshape(-1)
        if lengths.shape != (batch,) or lengths.is_floating_point():
            raise ValueError(f"spear-fast model: audio_lens must hold {batch} integer length(s), got "
                             f"{tuple(torch.as_tensor(audio_lens).shape)} {lengths.dtype}")
        lengths = lengths.to("cpu", torch.int64)
    if int(lengths.min()) < min_samples or int(lengths.max()) > max_len:
        raise ValueError(f"spear-fast model: clip lengths must lie in [{min_samples}, {max_len}] samples (at least "
                         f"one {1000 * min_samples / SAMPLE_RATE:g} ms frame), got {lengths.tolist()}")
    valid = torch.arange(max_len, device=audio.device)[None, :] < lengths.to(audio.device)[:, None]  # (B, L)
    waves = audio.float().masked_fill(~valid, 0.0)
    if not bool(torch.isfinite(waves).all()):
        raise ValueError("spear-fast model: audio contains NaN or Inf")
    peak = float(waves.abs().max())
    if peak > MAX_FLOAT_PEAK:
        raise ValueError(f"spear-fast model: expected float audio in [-1, 1], got a peak of {peak:g} "
                         f"(integer PCM as floats? divide int16 samples by 32768)")
    return waves, lengths


# ---------------------------------------------------------------------------------------------
# The student: Conv2d subsampling -> pre-LN Transformer with rotary embeddings


class Conv2dSubsampling(nn.Module):
    """(feats (B, T, 128), lengths (B,)) -> (x (B, T', d), lengths (B,)); frames past a length are
    zeroed before every conv, so padding never changes a clip's output."""

    def __init__(self, channels: int, time_stride: int, dim: int, dropout: float):
        super().__init__()
        self.time_stride = time_stride
        self.conv1 = nn.Conv2d(1, channels // 8, kernel_size=3, stride=1, padding=1)
        self.conv2 = nn.Conv2d(channels // 8, channels, kernel_size=3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(channels, channels, kernel_size=3, stride=(time_stride // 2, 2), padding=1)
        self.proj = nn.Linear(channels * (FBANK_DIM // 4), dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = feats.unsqueeze(1)  # (B, 1, T, 128)
        for conv, stride in ((self.conv1, 1), (self.conv2, 2), (self.conv3, self.time_stride // 2)):
            keep = torch.arange(x.shape[2], device=x.device)[None, :] < lengths[:, None]  # (B, T_l)
            x = x * keep[:, None, :, None].to(x.dtype)
            x = F.gelu(conv(x))
            if stride == 2:
                lengths = (lengths + 1) // 2
        batch, channels, frames, freq = x.shape
        x = x.permute(0, 2, 1, 3).reshape(batch, frames, channels * freq)  # (B, T', C * 32)
        return self.dropout(self.proj(x)), lengths


def _norm(kind: str, dim: int) -> nn.Module:
    if kind == "layernorm":
        return nn.LayerNorm(dim)
    if kind == "rmsnorm":
        return nn.RMSNorm(dim)
    raise ValueError(f"unknown norm {kind!r}; expected layernorm or rmsnorm")


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, T, H, hd) rotated pairwise (i, i + hd/2) by cos/sin (T, 1, hd/2)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half].float(), x[..., half:].float()
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, attention_dropout: float):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.attention_dropout = attention_dropout

    def forward(self, x, key_mask, cos, sin):
        qkv = self.qkv(x).unflatten(-1, (3, self.num_heads, self.head_dim))  # (B, T, 3, H, hd)
        q, k, v = qkv.unbind(-3)  # each (B, T, H, hd)
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        dropout = self.attention_dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           attn_mask=key_mask, dropout_p=dropout)  # (B, H, T, hd)
        return self.out(y.transpose(1, 2).flatten(-2))  # (B, T, d)


class FeedForward(nn.Module):
    def __init__(self, dim: int, ffn_dim: int, activation: str):
        super().__init__()
        self.swiglu = activation == "swiglu"
        self.up = nn.Linear(dim, (2 if self.swiglu else 1) * ffn_dim)
        self.down = nn.Linear(ffn_dim, dim)

    def forward(self, x):
        h = self.up(x)
        if self.swiglu:
            gate, value = h.chunk(2, dim=-1)
            h = F.silu(gate) * value
        else:
            h = F.gelu(h)
        return self.down(h)


class TransformerBlock(nn.Module):
    def __init__(self, encoder: dict):
        super().__init__()
        dim = encoder["dim"]
        self.attn_norm = _norm(encoder["norm"], dim)
        self.attn = SelfAttention(dim, encoder["num_heads"], encoder["attention_dropout"])
        self.ffn_norm = _norm(encoder["norm"], dim)
        self.ffn = FeedForward(dim, encoder["ffn_dim"], encoder["ffn_activation"])
        self.dropout = nn.Dropout(encoder["dropout"])

    def forward(self, x, key_mask, cos, sin):
        x = x + self.dropout(self.attn(self.attn_norm(x), key_mask, cos, sin))
        return x + self.dropout(self.ffn(self.ffn_norm(x)))


@dataclass
class SpearFastOutput(ModelOutput):
    encoder_out: torch.FloatTensor | None = None  # (B, T, C)
    encoder_out_lens: torch.LongTensor | None = None  # (B,)
    hidden_states: tuple[torch.FloatTensor, ...] | None = None  # num_layers + 1 x (B, T, C)


class SpearFastModel(PreTrainedModel):
    config_class = SpearFastConfig
    base_model_prefix = "spear_fast"
    main_input_name = "audio"
    # the learned vector that replaces masked fbank frames in pre-training; unused here
    _keys_to_ignore_on_load_unexpected = [r"^mask_embedding$"]

    def __init__(self, config: SpearFastConfig):
        super().__init__(config)
        student = config.student
        sub, enc = student["subsampling"], student["encoder"]
        self.subsampling = Conv2dSubsampling(sub["channels"], sub["time_stride"], enc["dim"], sub["dropout"])
        self.blocks = nn.ModuleList(TransformerBlock(enc) for _ in range(enc["num_layers"]))
        self.final_norm = _norm(enc["norm"], enc["dim"])
        self.head_dim = enc["dim"] // enc["num_heads"]
        self.rope_base = float(enc["rope_base"])
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """Random initialisation (only for weights a checkpoint does not provide)."""
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
            nn.init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    def _rotary_tables(self, num_frames: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (T, 1, hd/2) float32: position p rotates pair i by p * base^(-2i/hd)."""
        inv_freq = self.rope_base ** (-torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim)
        angles = torch.arange(num_frames, device=device).to(torch.float32)[:, None] * inv_freq.to(device)[None, :]
        return angles.cos()[:, None, :], angles.sin()[:, None, :]

    def forward(self, audio, audio_lens=None, sampling_rate: int | None = None, **kwargs) -> SpearFastOutput:
        """audio (B, L) or (L,) float 16 kHz in [-1, 1]; audio_lens (B,) valid samples (None: all of L)."""
        if kwargs:
            raise ValueError(f"spear-fast model: unexpected arguments {sorted(kwargs)}; call model(audio, audio_lens)")
        param = next(self.parameters())
        waves, lengths = check_audio(audio, audio_lens, sampling_rate, self.config.min_samples)
        waves, lengths = waves.to(param.device), lengths.to(param.device)
        feats, feat_lengths = fbank(waves, lengths)  # (B, T, 128), (B,)
        x, out_lengths = self.subsampling(feats.to(param.dtype), feat_lengths)  # (B, T', d), (B,)
        valid = torch.arange(x.shape[1], device=x.device)[None, :] < out_lengths[:, None]  # (B, T')
        key_mask = valid[:, None, None, :]  # (B, 1, 1, T') True = attend to this key
        cos, sin = self._rotary_tables(x.shape[1], x.device)
        hidden = [x.masked_fill(~valid[..., None], 0.0)]
        for index, block in enumerate(self.blocks):
            x = block(x, key_mask, cos, sin)
            out = self.final_norm(x) if index == len(self.blocks) - 1 else x
            hidden.append(out.masked_fill(~valid[..., None], 0.0))
        return SpearFastOutput(encoder_out=hidden[-1], encoder_out_lens=out_lengths, hidden_states=tuple(hidden))
