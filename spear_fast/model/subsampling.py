"""Conv2d subsampling: 128-bin fbank at 100 Hz -> model dimension at 50 Hz (or 25 Hz).

Three 3x3 convolutions (padding 1, GELU after each) over (time, frequency), then a linear
projection of (channels x 32 frequency bins) to d:
    conv1: 1 -> C/8 channels, stride (1, 1)              100 Hz, 128 bins
    conv2: C/8 -> C,          stride (2, 2)               50 Hz,  64 bins
    conv3: C -> C,            stride (time_stride/2, 2)   50 or 25 Hz, 32 bins
A stride-2 conv with kernel 3 and padding 1 maps L frames to ceil(L / 2) = (L + 1) // 2, so the
output length is `subsampled_lengths(L, time_stride)`, applied once (50 Hz) or twice (25 Hz).

Padding independence: before every conv, frames at or beyond each utterance's length are zeroed,
which is exactly what the conv's own zero padding gives a lone utterance, so an utterance's output
does not depend on how much padding follows it. No batch statistics are used (no BatchNorm).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from spear_fast.model.config import FBANK_DIM, SubsamplingConfig


def subsampled_lengths(lengths: torch.Tensor | int, time_stride: int) -> torch.Tensor | int:
    """Output frames for input frame counts `lengths` (an int, or any int tensor): ceil(L/2) per stride-2
    stage."""
    if time_stride not in (2, 4):
        raise ValueError(f"time_stride must be 2 or 4, got {time_stride}")
    out = (lengths + 1) // 2
    if time_stride == 4:
        out = (out + 1) // 2
    return out


def _time_mask(lengths: torch.Tensor, num_frames: int) -> torch.Tensor:
    """(B, T) bool, True on frames before each length."""
    return torch.arange(num_frames, device=lengths.device)[None, :] < lengths[:, None]


class Conv2dSubsampling(nn.Module):
    """(feats (B, T, 128), lengths (B,)) -> (x (B, T', d), lengths (B,))."""

    def __init__(self, config: SubsamplingConfig, dim: int):
        super().__init__()
        channels = config.channels
        self.time_stride = config.time_stride
        self.conv1 = nn.Conv2d(1, channels // 8, kernel_size=3, stride=1, padding=1)
        self.conv2 = nn.Conv2d(channels // 8, channels, kernel_size=3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(channels, channels, kernel_size=3, stride=(config.time_stride // 2, 2), padding=1)
        self.out_freq = FBANK_DIM // 4  # 128 -> 64 -> 32 bins
        self.proj = nn.Linear(channels * self.out_freq, dim)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if feats.dim() != 3 or feats.shape[-1] != FBANK_DIM:
            raise ValueError(f"feats must be (B, T, {FBANK_DIM}), got {tuple(feats.shape)}")
        x = feats.unsqueeze(1)  # (B, 1, T, 128)
        for conv, stride in ((self.conv1, 1), (self.conv2, 2), (self.conv3, self.time_stride // 2)):
            # zero frames past each utterance's end: they then act like the conv's own zero padding
            x = x * _time_mask(lengths, x.shape[2])[:, None, :, None].to(x.dtype)  # (B, C, T_l, F_l)
            x = F.gelu(conv(x))
            if stride == 2:
                lengths = (lengths + 1) // 2
        batch, channels, frames, freq = x.shape
        x = x.permute(0, 2, 1, 3).reshape(batch, frames, channels * freq)  # (B, T', C * 32)
        x = self.dropout(self.proj(x))  # (B, T', d)
        return x, lengths
