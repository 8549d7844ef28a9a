"""The Whisper audio encoder (openai-whisper's AudioEncoder) in torch, with every block's output.

CTranslate2 returns only the encoder's final output. SPEAR distils an intermediate layer of its
speech teacher (WavLM layer 21 of 24), so this module runs the same network from the same
CTranslate2 weights and stops at any block:
  mel (N, n_mels, 2T) -> GELU(conv1, k3 s1 p1) -> GELU(conv2, k3 s2 p1) -> + sinusoidal positions
  -> blocks (pre-LN: x += attn(LN(x)); x += fc2(GELU(fc1(LN(x))))) -> final LayerNorm.
Hidden state k = the output of block k (0 = the conv stem plus positions), before the final
LayerNorm, as transformers' output_hidden_states counts them; "last" = after the final LayerNorm
(what CTranslate2 returns).
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from spear_fast.errors import UserError

from .ct2_weights import read_ct2_variables

LN_EPS = 1e-5  # whisper's nn.LayerNorm default


class WhisperBlock(nn.Module):
    def __init__(self, dim: int, heads: int, ffn_dim: int):
        super().__init__()
        self.heads = heads
        self.attn_norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.qkv = nn.Linear(dim, 3 * dim)  # CTranslate2 fuses q, k, v (k's bias is zero in whisper)
        self.out = nn.Linear(dim, dim)
        self.ffn_norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.fc1 = nn.Linear(dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, frames, dim = x.shape  # (N, T, D)
        qkv = self.qkv(self.attn_norm(x)).view(batch, frames, 3, self.heads, dim // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (N, H, T, D / H)
        attended = F.scaled_dot_product_attention(q, k, v)  # (N, H, T, D / H); whisper's scale = 1/sqrt(D/H)
        x = x + self.out(attended.transpose(1, 2).reshape(batch, frames, dim))
        return x + self.fc2(F.gelu(self.fc1(self.ffn_norm(x))))


class WhisperEncoder(nn.Module):
    def __init__(self, n_mels: int, dim: int, heads: int, num_layers: int, ffn_dim: int, max_frames: int = 1500):
        super().__init__()
        self.conv1 = nn.Conv1d(n_mels, dim, 3, padding=1)
        self.conv2 = nn.Conv1d(dim, dim, 3, stride=2, padding=1)
        self.register_buffer("positions", torch.zeros(max_frames, dim))  # (T_max, D), loaded from the weights
        self.blocks = nn.ModuleList(WhisperBlock(dim, heads, ffn_dim) for _ in range(num_layers))
        self.final_norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.n_mels, self.dim, self.num_layers = n_mels, dim, num_layers

    def forward(self, mel: torch.Tensor, layer: int | str = "last") -> torch.Tensor:
        """mel (N, n_mels, 2T) -> (N, T, D) hidden state `layer` (0..num_layers, or "last")."""
        if mel.dim() != 3 or mel.shape[1] != self.n_mels:
            raise ValueError(f"whisper encoder: mel must be (N, {self.n_mels}, frames), got {tuple(mel.shape)}")
        stop = self.num_layers if layer == "last" else int(layer)
        if not 0 <= stop <= self.num_layers:
            raise ValueError(f"whisper encoder: layer must be 0..{self.num_layers} or 'last', got {layer!r}")
        x = F.gelu(self.conv2(F.gelu(self.conv1(mel)))).transpose(1, 2)  # (N, T, D)
        if x.shape[1] > self.positions.shape[0]:
            raise ValueError(f"whisper encoder: {mel.shape[2]} mel frames exceed the "
                             f"{2 * self.positions.shape[0]} its position table covers")
        x = x + self.positions[: x.shape[1]]
        for block in self.blocks[:stop]:
            x = block(x)
        return self.final_norm(x) if layer == "last" else x

    @classmethod
    def from_ct2(cls, folder: str | Path) -> "WhisperEncoder":
        """Load the encoder of a CTranslate2 Whisper folder (model.bin, WhisperSpec)."""
        path = Path(folder) / "model.bin"
        spec_name, variables = read_ct2_variables(path)
        if spec_name != "WhisperSpec":
            raise UserError(f"{path}: expected a CTranslate2 WhisperSpec model, got {spec_name!r}")
        weights = {name[len("encoder/"):]: t for name, t in variables.items() if name.startswith("encoder/")}
        num_layers = len({m.group(1) for m in map(re.compile(r"layer_(\d+)/").match, weights) if m})
        conv1 = weights["conv1/weight"]  # (D, n_mels, 3)
        positions = weights["position_encodings/encodings"]  # (T_max, D)
        encoder = cls(n_mels=conv1.shape[1], dim=conv1.shape[0], heads=int(weights["num_heads"]),
                      num_layers=num_layers, ffn_dim=weights["layer_0/ffn/linear_0/weight"].shape[0],
                      max_frames=positions.shape[0])
        state = {"conv1.weight": conv1, "conv1.bias": weights["conv1/bias"],
                 "conv2.weight": weights["conv2/weight"], "conv2.bias": weights["conv2/bias"],
                 "positions": positions,
                 "final_norm.weight": weights["layer_norm/gamma"], "final_norm.bias": weights["layer_norm/beta"]}
        ours_of_ct2 = {"self_attention/layer_norm/gamma": "attn_norm.weight", "self_attention/layer_norm/beta": "attn_norm.bias",
                       "self_attention/linear_0/weight": "qkv.weight", "self_attention/linear_0/bias": "qkv.bias",
                       "self_attention/linear_1/weight": "out.weight", "self_attention/linear_1/bias": "out.bias",
                       "ffn/layer_norm/gamma": "ffn_norm.weight", "ffn/layer_norm/beta": "ffn_norm.bias",
                       "ffn/linear_0/weight": "fc1.weight", "ffn/linear_0/bias": "fc1.bias",
                       "ffn/linear_1/weight": "fc2.weight", "ffn/linear_1/bias": "fc2.bias"}
        for i in range(num_layers):
            for theirs, ours in ours_of_ct2.items():
                state[f"blocks.{i}.{ours}"] = weights[f"layer_{i}/{theirs}"]
        encoder.load_state_dict(state, strict=True)
        return encoder.eval()
