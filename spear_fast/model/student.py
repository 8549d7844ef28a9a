"""The SPEAR student: fbank -> Conv2d subsampling -> pre-LN Transformer (rotary) -> all layer outputs.

    student = SpearStudent(tiny())
    out = student(feats, feat_lengths, time_mask=masking.time_mask)  # StudentOutput
    out.hidden  (B, T', d)   final block output after the final norm
    out.lengths (B,)         valid output frames, subsampled_lengths(feat_lengths, time_stride)
    out.layers  tuple of num_layers (B, T', d): the residual stream after each block; the last entry
                is `hidden` (after the final norm), as in HuggingFace wav2vec2/HuBERT. Empty when
                forward(..., return_layers=False).
    out.embedding (B, T', d) the Transformer's input (front-end output; None without return_layers)
Outputs at padded positions are zero. Packed attention backends (flash, xformers) run the whole
encoder on the valid tokens only; sdpa runs it on the padded batch with a key-padding mask.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from spear_fast.config import check
from spear_fast.model.attention import (
    RotaryEmbedding,
    SequenceLayout,
    apply_rotary,
    attention,
    is_packed,
    resolve_backend,
)
from spear_fast.lengths import Lengths, device_lengths, host_lengths
from spear_fast.model.config import FBANK_DIM, EncoderConfig, StudentConfig
from spear_fast.model.subsampling import Conv2dSubsampling, subsampled_lengths


class StudentOutput(NamedTuple):
    hidden: torch.Tensor  # (B, T', d)
    lengths: torch.Tensor  # (B,) int64
    layers: tuple[torch.Tensor, ...]  # num_layers x (B, T', d)
    # (B, T', d) the Transformer's input (the front end's output; s3prl's hidden_states[0]), zero past
    # lengths; None when return_layers=False
    embedding: torch.Tensor | None = None


def make_norm(kind: str, dim: int) -> nn.Module:
    if kind == "layernorm":
        return nn.LayerNorm(dim)
    if kind == "rmsnorm":
        return nn.RMSNorm(dim)
    raise ValueError(f"unknown norm {kind!r}; choose layernorm or rmsnorm")


class SelfAttention(nn.Module):
    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.dim // config.num_heads
        self.qkv = nn.Linear(config.dim, 3 * config.dim)
        self.out = nn.Linear(config.dim, config.dim)
        self.attention_dropout = config.attention_dropout

    def forward(self, x: torch.Tensor, layout: SequenceLayout, backend: str, cos: torch.Tensor,
                sin: torch.Tensor) -> torch.Tensor:
        # x: (B, T, d) for sdpa, (N, d) for packed backends; "..." below stands for either
        qkv = self.qkv(x).unflatten(-1, (3, self.num_heads, self.head_dim))  # (..., 3, H, hd)
        q, k, v = qkv.unbind(-3)  # each (..., H, hd)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        dropout = self.attention_dropout if self.training else 0.0
        y = attention(q, k, v, layout, backend, dropout_p=dropout)  # (..., H, hd)
        return self.out(y.flatten(-2))  # (..., d)


class FeedForward(nn.Module):
    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.swiglu = config.ffn_activation == "swiglu"
        self.up = nn.Linear(config.dim, (2 if self.swiglu else 1) * config.ffn_dim)
        self.down = nn.Linear(config.ffn_dim, config.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(x)  # (..., ffn) or (..., 2 ffn)
        if self.swiglu:
            gate, value = h.chunk(2, dim=-1)
            h = F.silu(gate) * value
        else:
            h = F.gelu(h)
        return self.down(h)  # (..., d)


class TransformerBlock(nn.Module):
    """Pre-LN: x + drop(attn(norm(x))), then x + drop(ffn(norm(x)))."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.attn_norm = make_norm(config.norm, config.dim)
        self.attn = SelfAttention(config)
        self.ffn_norm = make_norm(config.norm, config.dim)
        self.ffn = FeedForward(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, layout: SequenceLayout, backend: str, cos: torch.Tensor,
                sin: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.attn_norm(x), layout, backend, cos, sin))
        return x + self.dropout(self.ffn(self.ffn_norm(x)))


class SpearStudent(nn.Module):
    def __init__(self, config: StudentConfig):
        super().__init__()
        check(config)
        self.config = config
        enc = config.encoder
        # The learned vector that replaces time-masked fbank frames (SPEAR.md section 5); initialised
        # U(0, 1) like wav2vec2/HuBERT's mask embedding.
        self.mask_embedding = nn.Parameter(torch.empty(FBANK_DIM).uniform_())
        self.subsampling = Conv2dSubsampling(config.subsampling, enc.dim)
        self.rotary = RotaryEmbedding(enc.dim // enc.num_heads, enc.rope_base)
        self.blocks = nn.ModuleList(TransformerBlock(enc) for _ in range(enc.num_layers))
        self.final_norm = make_norm(enc.norm, enc.dim)
        self._init_weights()

    def _init_weights(self) -> None:
        """GPT-2 style: linear weights N(0, 0.02), biases 0, residual output projections scaled by
        1/sqrt(2 * num_layers) so the residual stream's variance does not grow with depth."""
        residual_std = 0.02 / math.sqrt(2 * self.config.encoder.num_layers)
        for block in self.blocks:
            for linear in (block.attn.qkv, block.attn.out, block.ffn.up, block.ffn.down):
                std = residual_std if linear in (block.attn.out, block.ffn.down) else 0.02
                nn.init.normal_(linear.weight, std=std)
                nn.init.zeros_(linear.bias)

    @property
    def frame_rate(self) -> float:
        return self.config.frame_rate

    @property
    def dim(self) -> int:
        return self.config.encoder.dim

    def output_lengths(self, feat_lengths: Lengths) -> Lengths:
        """Output frames per clip, as the input came: a tensor, or Python ints."""
        stride = self.config.subsampling.time_stride
        if isinstance(feat_lengths, torch.Tensor):
            return subsampled_lengths(feat_lengths, stride)
        return [subsampled_lengths(n, stride) for n in feat_lengths]

    def forward(self, feats: torch.Tensor, feat_lengths: Lengths, time_mask: torch.Tensor | None = None,
                return_layers: bool = True, check: bool = True) -> StudentOutput:
        """feats (B, T, 128) fbank, feat_lengths (B,) int in [1, T], time_mask (B, T) bool or None:
        True frames are replaced by the learned mask vector (padding must not be masked).
        return_layers=False leaves `layers` empty (training needs only `hidden`; saves num_layers
        (B, T', d) copies). feat_lengths may be Python ints: the packed backends' layout is then
        built without reading the device. check=False skips the input checks (a batch built to shape)."""
        backend = resolve_backend(self.config.encoder.attention, feats.device)
        packed = is_packed(backend)
        if check:
            self._check(feats, feat_lengths, time_mask)
        # output lengths on the host, for the packed layout
        host = self.output_lengths(host_lengths(feat_lengths)) if packed else None
        feat_lengths = device_lengths(feat_lengths, feats.device)
        if time_mask is not None:
            time_mask = time_mask.to(feats.device)
            feats = torch.where(time_mask[..., None], self.mask_embedding.to(feats.dtype), feats)  # (B, T, 128)

        x, lengths = self.subsampling(feats, feat_lengths)  # (B, T', d), (B,)
        layout = SequenceLayout.from_lengths(lengths, x.shape[1], packed=packed, host=host)
        if packed:
            x = layout.pack(x)  # (N, d)
            positions = layout.packed_positions  # (N,)
        else:
            positions = torch.arange(x.shape[1], device=x.device)  # (T',)
        cos, sin = self.rotary.tables(positions)  # (P, 1, hd/2)

        valid = layout.valid[..., None]  # (B, T', 1)
        embedding = None
        if return_layers:
            embedding = layout.unpack(x) if packed else x.masked_fill(~valid, 0.0)  # (B, T', d)
        layers = []
        for index, block in enumerate(self.blocks):
            x = block(x, layout, backend, cos, sin)
            last = index == len(self.blocks) - 1
            if return_layers or last:
                out = self.final_norm(x) if last else x
                # back to (B, T', d) with zeros on padding
                layers.append(layout.unpack(out) if packed else out.masked_fill(~valid, 0.0))
        return StudentOutput(hidden=layers[-1], lengths=lengths, layers=tuple(layers) if return_layers else (),
                             embedding=embedding)

    @staticmethod
    def _check(feats: torch.Tensor, feat_lengths: Lengths, time_mask: torch.Tensor | None) -> None:
        if feats.dim() != 3 or feats.shape[-1] != FBANK_DIM or not feats.is_floating_point():
            raise ValueError(f"feats must be a float (B, T, {FBANK_DIM}) tensor, got {tuple(feats.shape)} "
                             f"{feats.dtype}")
        batch, num_frames, _ = feats.shape
        if isinstance(feat_lengths, torch.Tensor) and (feat_lengths.shape != (batch,)
                                                       or feat_lengths.is_floating_point()):
            raise ValueError(f"feat_lengths must be an integer ({batch},) tensor, got {tuple(feat_lengths.shape)} "
                             f"{feat_lengths.dtype}")
        host = host_lengths(feat_lengths)
        if len(host) != batch:
            raise ValueError(f"feat_lengths must have {batch} values, got {len(host)}")
        if batch == 0 or min(host) < 1 or max(host) > num_frames:
            raise ValueError(f"feat_lengths must lie in [1, {num_frames}] (T of feats {tuple(feats.shape)}), "
                             f"got {host}")
        if time_mask is not None and (time_mask.shape != (batch, num_frames) or time_mask.dtype != torch.bool):
            raise ValueError(f"time_mask must be a bool ({batch}, {num_frames}) tensor, got "
                             f"{tuple(time_mask.shape)} {time_mask.dtype}")
