"""Attention backends for variable-length batches, and rotary position embeddings.

Three backends compute the same bidirectional attention, each utterance attending only to itself:
  flash     flash-attn `flash_attn_varlen_func` on packed tokens (cu_seqlens); CUDA, fp16/bf16
            (fp32 inputs are cast to bf16 for the call and the result cast back).
  xformers  `memory_efficient_attention` with a BlockDiagonalMask over packed tokens; CUDA.
  sdpa      torch `scaled_dot_product_attention` on the padded (B, T) batch with a key-padding mask;
            any device.
"auto" picks flash, then xformers, on CUDA when importable, else sdpa. Packed backends take
(N, H, hd) tensors (N = total valid tokens); sdpa takes (B, T, H, hd). Query rows at padded positions
(sdpa) still see their utterance's keys, so their outputs stay finite (lengths are >= 1).
"""
from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from spear_fast.errors import UserError
from spear_fast.lengths import frame_indices, host_lengths

BACKENDS = ("auto", "flash", "xformers", "sdpa")


class AttentionBackendUnavailable(UserError):
    """An explicitly requested attention backend cannot run here."""


def _importable(module: str) -> bool:
    if module in sys.modules:  # already imported (find_spec rejects modules without a __spec__)
        return True
    return importlib.util.find_spec(module) is not None


def flash_available() -> bool:
    return _importable("flash_attn")


def xformers_available() -> bool:
    return _importable("xformers")


def backend_unavailable_reason(name: str, device: torch.device) -> str | None:
    """Why backend `name` cannot run on `device` (None when it can)."""
    if name not in BACKENDS:
        return f"unknown attention backend {name!r}; choose one of {list(BACKENDS)}"
    if name == "flash":
        if not flash_available():
            return "flash-attn is not installed (pip install 'spear-fast[gpu]')"
        if device.type != "cuda":
            return f"flash-attn needs CUDA tensors, got device {device}"
    if name == "xformers":
        if not xformers_available():
            return "xformers is not installed (pip install 'spear-fast[gpu]')"
        if device.type != "cuda":
            return f"the xformers backend needs CUDA tensors, got device {device}"
    return None


def resolve_backend(name: str, device: torch.device) -> str:
    """The concrete backend ("flash" | "xformers" | "sdpa") for a requested name on a device."""
    if name == "auto":
        for candidate in ("flash", "xformers"):
            if backend_unavailable_reason(candidate, device) is None:
                return candidate
        return "sdpa"
    reason = backend_unavailable_reason(name, device)
    if reason is not None:
        raise AttentionBackendUnavailable(f"attention backend {name!r} unavailable: {reason}")
    return name


def is_packed(backend: str) -> bool:
    """Whether the backend runs on packed tokens (N, ...) rather than the padded batch (B, T, ...)."""
    return backend in ("flash", "xformers")


@dataclass
class SequenceLayout:
    """Where the valid tokens of a padded (B, T) batch are; built once per forward pass."""

    lengths: torch.Tensor  # (B,) int64 valid tokens per utterance
    num_frames: int  # T, the padded length
    valid: torch.Tensor  # (B, T) bool, True on valid tokens
    indices: torch.Tensor  # (N,) int64 flat indices (b * T + t) of the valid tokens, in order
    cu_seqlens: torch.Tensor  # (B + 1,) int32 cumulative lengths (packed backends)
    max_seqlen: int  # longest utterance
    packed_positions: torch.Tensor  # (N,) int64 position of each valid token inside its utterance
    seqlens: list[int]  # the lengths on the host (packed backends; empty for sdpa)

    @classmethod
    def from_lengths(cls, lengths: torch.Tensor, num_frames: int, packed: bool = True,
                     host: Sequence[int] | None = None) -> SequenceLayout:
        """packed=False skips the packed-only fields: sdpa does not use them. They are built from the
        lengths on the host: `host` (Python ints), else read from `lengths` (a device sync)."""
        positions = torch.arange(num_frames, device=lengths.device)  # (T,)
        valid = positions[None, :] < lengths[:, None]  # (B, T)
        if not packed:
            empty = lengths.new_zeros(0)
            return cls(lengths=lengths, num_frames=num_frames, valid=valid, indices=empty,
                       cu_seqlens=empty.to(torch.int32), max_seqlen=num_frames, packed_positions=empty, seqlens=[])
        seqlens = host_lengths(lengths if host is None else host)
        indices = frame_indices(seqlens, num_frames, lengths.device)  # (N,)
        cu_seqlens = F.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)  # (B + 1,)
        return cls(lengths=lengths, num_frames=num_frames, valid=valid, indices=indices,
                   cu_seqlens=cu_seqlens, max_seqlen=max(seqlens, default=0),
                   packed_positions=indices % num_frames, seqlens=seqlens)

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, ...) -> (N, ...) valid tokens."""
        return x.reshape(-1, *x.shape[2:]).index_select(0, self.indices)

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        """(N, ...) -> (B, T, ...) with zeros at padded positions."""
        batch = self.lengths.shape[0]
        out = x.new_zeros(batch * self.num_frames, *x.shape[1:])
        return out.index_copy(0, self.indices, x).reshape(batch, self.num_frames, *x.shape[1:])


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: SequenceLayout, backend: str,
              dropout_p: float = 0.0) -> torch.Tensor:
    """Bidirectional attention inside each utterance. Packed backends: q, k, v (N, H, hd) -> (N, H, hd);
    sdpa: (B, T, H, hd) -> (B, T, H, hd)."""
    if backend == "sdpa":
        if q.dim() != 4:
            raise ValueError(f"sdpa attention expects (B, T, H, hd) tensors, got {tuple(q.shape)}")
        mask = layout.valid[:, None, None, :]  # (B, 1, 1, T) True = attend to this key
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             attn_mask=mask, dropout_p=dropout_p)  # (B, H, T, hd)
        return out.transpose(1, 2)
    if q.dim() != 3:
        raise ValueError(f"{backend} attention expects packed (N, H, hd) tensors, got {tuple(q.shape)}")
    if backend == "flash":
        from flash_attn import flash_attn_varlen_func

        dtype = q.dtype
        if dtype not in (torch.float16, torch.bfloat16):  # flash-attn computes in half precision only
            q, k, v = (t.to(torch.bfloat16) for t in (q, k, v))
        out = flash_attn_varlen_func(q, k, v, layout.cu_seqlens, layout.cu_seqlens, layout.max_seqlen,
                                     layout.max_seqlen, dropout_p=dropout_p, causal=False)  # (N, H, hd)
        return out.to(dtype)
    if backend == "xformers":
        from xformers.ops import fmha

        bias = fmha.BlockDiagonalMask.from_seqlens(layout.seqlens)
        out = fmha.memory_efficient_attention(q[None], k[None], v[None], attn_bias=bias, p=dropout_p)
        return out[0]  # (N, H, hd)
    raise ValueError(f"unknown attention backend {backend!r}; choose one of {list(BACKENDS[1:])}")


class RotaryEmbedding(torch.nn.Module):
    """Rotary position embedding (rotate-half form): position p rotates channel pair (i, i + hd/2) by
    p * base^(-2i/hd). Computed from positions on the fly, so any length works."""

    def __init__(self, head_dim: int, base: float):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary head_dim must be even, got {head_dim}")
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)  # (hd/2,)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def tables(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (P, 1, hd/2) fp32 for positions (P,); broadcast over heads."""
        angles = positions.to(torch.float32)[:, None] * self.inv_freq[None, :]  # (P, hd/2)
        return angles.cos()[:, None, :], angles.sin()[:, None, :]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (..., P, H, hd) rotated by cos/sin (P, 1, hd/2)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half].float(), x[..., half:].float()
    out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    return out.to(x.dtype)
