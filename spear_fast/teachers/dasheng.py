"""Dasheng (base 768-d/12 layers, 0.6B 1280-d/32, 1.2B 1536-d/40) in our own code.

The official `dasheng` package (0.0.9: dasheng/train/models.py AudioTransformerMAE_Encoder and
dasheng/pretrained/pretrained.py Dasheng) needs torchaudio, which does not load here. This module
rebuilds the same network with the SAME parameter and buffer names, so an official checkpoint
({"model": state_dict, "config": kwargs}, e.g. dasheng_12b.pt) loads with strict=True:
  front_end.0 = torchaudio MelSpectrogram(sr 16000, n_fft 512, win 512, hop 160, f 0-8000 Hz,
                64 mels, HTK scale, no filter norm, power 2, center=True, reflect padding)
                (buffers front_end.0.spectrogram.window, front_end.0.mel_scale.fb),
  front_end.1 = AmplitudeToDB(power, top_db=120), init_bn.1 = BatchNorm2d over the mel bins,
  patch_embed.proj = Conv2d 64x4 / stride 64x4 (40 ms patches -> 25 Hz), time/freq_pos_embed,
  blocks.N.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2, ls2.gamma}, norm.
Inputs longer than target_length mel frames (1008 = 10.08 s) are split, in patch space, into chunks
of target_length // 4 patches that run through the transformer independently and are concatenated,
as upstream's forward_spectrogram does.

Two deliberate differences from upstream, both needed so that padding cannot change a clip's
frames; each gives upstream's own result for the clip run alone (batch of one, no x_length):
  * each clip's STFT is reflect-padded at ITS end, not at the padded batch's end;
  * top_db clamps at (the clip's max dB - 120); torchaudio's AmplitudeToDB takes that max over the
    whole (B, F, T) batch (it packs a 3-D input as channels), which mixes clips.
Attention masks the keys past the clip's patch count, like upstream's x_length mask, but counts the
patches the clip alone would give, (L // 160 + 1) // 4, rather than upstream's floor(L / 640).
"""
from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from spear_fast.config import field
from spear_fast.errors import UserError
from spear_fast.sample_rate import SAMPLE_RATE

from .base import Teacher
from .spec import check_no_options_left, pop_dtype

# The published variants (dasheng/pretrained/pretrained.py), used to fill a checkpoint config that
# lacks them (upstream passes them as keyword arguments instead of storing them).
VARIANTS = {768: (12, 12), 1280: (32, 16), 1536: (40, 24)}  # embed_dim -> (depth, num_heads)


@dataclasses.dataclass
class DashengConfig:
    """AudioTransformerMAE_Encoder's keyword arguments that shape the inference network."""
    patch_size: tuple[int, int] = field((64, 4), "(mel bins, frames) per patch")
    patch_stride: tuple[int, int] = field((64, 4), "(mel bins, frames) between patch starts")
    embed_dim: int = field(768, "Transformer width")
    depth: int = field(12, "Transformer blocks")
    num_heads: int = field(12, "attention heads")
    mlp_ratio: float = field(4.0, "MLP hidden width / embed_dim")
    qkv_bias: bool = field(True, "bias on the attention's qkv projection")
    init_values: float | None = field(None, "LayerScale init; None = no LayerScale (no ls*.gamma keys)")
    target_length: int = field(1008, "mel frames per chunk (10.08 s)")
    pooling: str = field("mean", '"token" adds cls_token/token_pos_embed (dropped from our frames)')
    n_fft: int = field(512, "FFT size of the spectrogram")
    n_mels: int = field(64, "mel bins")
    hop_size: int = field(160, "samples between spectrogram frames")
    win_size: int = field(512, "Hann window length in samples")
    f_min: int = field(0, "lowest mel filter edge (Hz)")
    f_max: int = field(8000, "highest mel filter edge (Hz)")
    center: bool = field(True, "reflect-pad each clip by n_fft // 2 at both ends")
    top_db: float = field(120.0, "dB floor below each clip's peak")

    # training-only arguments of the official class: accepted and ignored
    IGNORED = frozenset({"drop_rate", "attn_drop_rate", "time_patch_out", "freq_patch_out", "eval_avg",
                         "group_masking", "block_type", "attention_type", "norm_layer", "act_layer"})

    @classmethod
    def from_checkpoint(cls, config: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> "DashengConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, value in config.items():
            if key in known:
                values[key] = tuple(value) if key in ("patch_size", "patch_stride") else value
            elif key not in cls.IGNORED:
                warnings.warn(f"dasheng checkpoint config key {key!r} is not used by this implementation")
        for key in ("block_type", "attention_type"):
            if config.get(key, "Block" if key == "block_type" else "Attention") not in ("Block", "Attention"):
                raise UserError(f"dasheng checkpoint config {key}={config[key]!r} is not supported")
        if "embed_dim" not in values and "patch_embed.proj.weight" in state_dict:
            values["embed_dim"] = int(state_dict["patch_embed.proj.weight"].shape[0])
        if "depth" not in values:
            values["depth"] = len({k.split(".")[1] for k in state_dict if k.startswith("blocks.")})
        if "num_heads" not in values:
            if values.get("embed_dim") not in VARIANTS:
                raise UserError(f"dasheng checkpoint config lacks num_heads and embed_dim "
                                f"{values.get('embed_dim')} is not a published variant {sorted(VARIANTS)}")
            values["num_heads"] = VARIANTS[values["embed_dim"]][1]
        if "init_values" not in values and any(k.endswith("ls1.gamma") for k in state_dict):
            raise UserError("dasheng checkpoint has LayerScale weights (ls1.gamma) but its config has no init_values")
        return cls(**values)


def hz_to_mel_htk(freq: torch.Tensor) -> torch.Tensor:
    return 2595.0 * torch.log10(1.0 + freq / 700.0)


def mel_to_hz_htk(mel: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def htk_mel_filterbank(n_freqs: int, f_min: float, f_max: float, n_mels: int, sample_rate: int) -> torch.Tensor:
    """(n_freqs, n_mels) triangular filters, torchaudio.functional.melscale_fbanks(norm=None, mel_scale="htk")."""
    all_freqs = torch.linspace(0, sample_rate // 2, n_freqs, dtype=torch.float64)  # (n_freqs,)
    m_pts = torch.linspace(float(hz_to_mel_htk(torch.tensor(float(f_min), dtype=torch.float64))),
                           float(hz_to_mel_htk(torch.tensor(float(f_max), dtype=torch.float64))),
                           n_mels + 2, dtype=torch.float64)
    f_pts = mel_to_hz_htk(m_pts)  # (n_mels + 2,)
    f_diff = f_pts[1:] - f_pts[:-1]  # (n_mels + 1,)
    slopes = f_pts[None, :] - all_freqs[:, None]  # (n_freqs, n_mels + 2)
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    return torch.clamp(torch.minimum(down, up), min=0.0).float()


class _Spectrogram(nn.Module):
    """Holds the window buffer under torchaudio's name (front_end.0.spectrogram.window)."""

    def __init__(self, win_size: int):
        super().__init__()
        self.register_buffer("window", torch.hann_window(win_size))


class _MelScale(nn.Module):
    """Holds the filterbank buffer under torchaudio's name (front_end.0.mel_scale.fb)."""

    def __init__(self, fb: torch.Tensor):
        super().__init__()
        self.register_buffer("fb", fb)


class MelFrontEnd(nn.Module):
    """Power mel spectrogram of each clip, reflect-padded at the clip's own ends."""

    def __init__(self, cfg: DashengConfig, sample_rate: int = SAMPLE_RATE):
        super().__init__()
        self.n_fft, self.hop, self.win, self.center = cfg.n_fft, cfg.hop_size, cfg.win_size, cfg.center
        self.spectrogram = _Spectrogram(cfg.win_size)
        self.mel_scale = _MelScale(htk_mel_filterbank(cfg.n_fft // 2 + 1, cfg.f_min, cfg.f_max, cfg.n_mels, sample_rate))

    def num_frames(self, lengths: torch.Tensor) -> torch.Tensor:
        if self.center:
            return lengths // self.hop + 1
        return torch.clamp((lengths - self.n_fft) // self.hop + 1, min=0)

    def forward(self, waves: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """waves (B, L), lengths (B,) -> power mel (B, n_mels, T), T = frames of the longest clip."""
        batch, max_len = waves.shape
        lengths = lengths.to(waves.device)
        if self.center:
            pad = self.n_fft // 2
            # Reflect-pad every clip at its own ends: position p in [-pad, L_max + pad) reads sample
            # |p| on the left and 2 (L_b - 1) - p past the clip's end (torch.nn.functional.pad "reflect").
            pos = torch.arange(-pad, max_len + pad, device=waves.device)[None, :].expand(batch, -1)  # (B, L + 2 pad)
            last = (lengths - 1)[:, None]  # (B, 1)
            idx = pos.abs()
            idx = torch.where(idx > last, 2 * last - idx, idx).clamp(0, max_len - 1)
            waves = torch.gather(waves, 1, idx)  # (B, L + 2 pad)
        spec = torch.stft(waves, self.n_fft, self.hop, self.win, window=self.spectrogram.window,
                          center=False, return_complex=True)  # (B, n_fft/2 + 1, T)
        power = spec.real.square() + spec.imag.square()
        mel = torch.matmul(power.transpose(1, 2), self.mel_scale.fb).transpose(1, 2)  # (B, n_mels, T)
        return mel[:, :, : int(self.num_frames(lengths).max())]


class _AmplitudeToDB(nn.Module):
    """10 log10(max(x, 1e-10)), floored per clip at (its max over valid frames - top_db)."""

    def __init__(self, top_db: float):
        super().__init__()
        self.top_db = top_db

    def forward(self, mel: torch.Tensor, num_frames: torch.Tensor) -> torch.Tensor:
        db = 10.0 * torch.log10(torch.clamp(mel, min=1e-10))  # (B, F, T)
        valid = torch.arange(db.shape[-1], device=db.device)[None, None, :] < num_frames.to(db.device)[:, None, None]
        peak = db.masked_fill(~valid, float("-inf")).amax(dim=(1, 2), keepdim=True)  # (B, 1, 1)
        return torch.maximum(db, peak - self.top_db)


class _MelAxisToChannels(nn.Module):
    """(B, C, F, T) <-> (B, F, C, T): einops' Rearrange('b c f t -> b f c t') in init_bn."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2)


class AudioPatchEmbed(nn.Module):
    def __init__(self, cfg: DashengConfig):
        super().__init__()
        self.proj = nn.Conv2d(1, cfg.embed_dim, kernel_size=cfg.patch_size, stride=cfg.patch_stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)  # (B, 1, F, T) -> (B, C, F', T')


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_values: float):
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dasheng: embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        """x (B, N, C); keep (B, N) bool, True for keys that may be attended to."""
        batch, n, c = x.shape
        qkv = self.qkv(x).reshape(batch, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, H, N, C/H)
        mask = None if keep is None else keep[:, None, None, :]  # (B, 1, 1, N)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, N, C/H)
        return self.proj(out.transpose(1, 2).reshape(batch, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, cfg: DashengConfig):
        super().__init__()
        dim = cfg.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, cfg.num_heads, cfg.qkv_bias)
        self.ls1 = LayerScale(dim, cfg.init_values) if cfg.init_values else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio))
        self.ls2 = LayerScale(dim, cfg.init_values) if cfg.init_values else nn.Identity()

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), keep))
        return x + self.ls2(self.mlp(self.norm2(x)))


class DashengModel(nn.Module):
    """The Dasheng encoder with the official state-dict names; forward gives the last layer."""

    def __init__(self, cfg: DashengConfig):
        super().__init__()
        if cfg.n_mels != cfg.patch_size[0] or cfg.patch_size[0] != cfg.patch_stride[0]:
            raise UserError(f"dasheng: only one patch row over all mel bins is supported, got n_mels "
                            f"{cfg.n_mels}, patch_size {cfg.patch_size}, patch_stride {cfg.patch_stride}")
        self.cfg = cfg
        self.front_end = nn.Sequential(MelFrontEnd(cfg), _AmplitudeToDB(cfg.top_db))
        self.init_bn = nn.Sequential(_MelAxisToChannels(), nn.BatchNorm2d(cfg.n_mels, momentum=0.01), _MelAxisToChannels())
        self.patch_embed = AudioPatchEmbed(cfg)
        if cfg.pooling == "token":
            self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
            self.token_pos_embed = nn.Parameter(torch.randn(1, cfg.embed_dim) * 0.02)
        grid_t = cfg.target_length // cfg.patch_stride[1]
        self.time_pos_embed = nn.Parameter(torch.randn(1, cfg.embed_dim, 1, grid_t) * 0.02)
        self.freq_pos_embed = nn.Parameter(torch.randn(1, cfg.embed_dim, 1, 1) * 0.02)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        self.patches_per_chunk = grid_t

    def num_patches(self, lengths: torch.Tensor) -> torch.Tensor:
        """Patches (output frames) of clips of `lengths` samples."""
        return self.front_end[0].num_frames(lengths) // self.cfg.patch_stride[1]

    def spectrogram(self, waves: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, L) -> normalised log-mel (B, 1, n_mels, T), float32 (no autocast, like upstream)."""
        with torch.autocast(waves.device.type, enabled=False):
            mel = self.front_end[0](waves.float(), lengths)  # (B, F, T)
            db = self.front_end[1](mel, self.front_end[0].num_frames(lengths))
            return self.init_bn(db[:, None])  # (B, 1, F, T)

    def forward_chunk(self, x: torch.Tensor, keep: torch.Tensor | None, final_norm: bool = True) -> torch.Tensor:
        """x (B, C, 1, t) patch embeddings of one chunk -> (B, t, C) after all blocks (+ the final
        LayerNorm when final_norm, as the official output)."""
        t = x.shape[-1]
        x = x + self.time_pos_embed[:, :, :, :t] + self.freq_pos_embed
        x = x.flatten(2).transpose(1, 2)  # (B, t, C)
        if self.cfg.pooling == "token":
            cls = (self.cls_token + self.token_pos_embed[:, None, :]).expand(x.shape[0], -1, -1)
            x = torch.cat([cls, x], dim=1)
            if keep is not None:
                keep = torch.cat([keep.new_ones(keep.shape[0], 1), keep], dim=1)
        for block in self.blocks:
            x = block(x, keep)
        if final_norm:
            x = self.norm(x)
        return x[:, 1:] if self.cfg.pooling == "token" else x

    def forward_spectrogram(self, spec: torch.Tensor, num_patches: torch.Tensor | None = None,
                            final_norm: bool = True) -> torch.Tensor:
        """spec (B, 1, F, T) -> (B, T // 4, C): chunks of patches_per_chunk run independently."""
        x = self.patch_embed(spec)  # (B, C, 1, T')
        keep_all = None
        if num_patches is not None:
            keep_all = torch.arange(x.shape[-1], device=x.device)[None, :] < num_patches.to(x.device)[:, None]  # (B, T')
        outputs = []
        for start in range(0, x.shape[-1], self.patches_per_chunk):
            chunk = x[..., start : start + self.patches_per_chunk]
            keep = None
            if keep_all is not None:
                keep = keep_all[:, start : start + self.patches_per_chunk]
                # A chunk wholly past a clip's end: let its (discarded) rows attend everywhere, not to nothing.
                keep = keep | ~keep.any(dim=1, keepdim=True)
            outputs.append(self.forward_chunk(chunk, keep, final_norm))
        return torch.cat(outputs, dim=1)

    def forward(self, waves: torch.Tensor, lengths: torch.Tensor, final_norm: bool = True) -> torch.Tensor:
        return self.forward_spectrogram(self.spectrogram(waves, lengths), self.num_patches(lengths), final_norm)


def load_dasheng_checkpoint(path: str | Path) -> DashengModel:
    """An official Dasheng .pt ({"model": state_dict, "config": kwargs}) -> DashengModel (strict)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"dasheng teacher: {str(path)!r} is not a local file (the official .pt checkpoint; "
                        "nothing is downloaded)")
    try:
        dump = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling refuses anything but tensors and plain containers
        raise UserError(f"dasheng teacher: {path} is not a loadable torch checkpoint ({err})") from None
    if not isinstance(dump, dict) or "model" not in dump or "config" not in dump:
        keys = sorted(dump) if isinstance(dump, dict) else type(dump).__name__
        raise UserError(f"dasheng teacher: {path} must hold {{'model': state_dict, 'config': kwargs}}, got {keys}")
    state = dump["model"]
    model = DashengModel(DashengConfig.from_checkpoint(dict(dump["config"]), state))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise UserError(f"dasheng teacher: {path} does not match the Dasheng architecture: {err}") from None
    return model


class DashengTeacher(Teacher):
    """Dasheng frames at 25 Hz; layer = number of transformer blocks run (default: all, + final norm)."""

    def __init__(self, model: DashengModel, layer: int | None = None, name: str = "dasheng",
                 device: str | torch.device = "cpu", autocast_dtype: torch.dtype | None = torch.bfloat16):
        super().__init__(device, autocast_dtype)
        depth = len(model.blocks)
        layer = depth if layer is None else layer
        if not isinstance(layer, int) or not 1 <= layer <= depth:
            raise UserError(f"dasheng teacher: layer must be an integer in [1, {depth}], got {layer!r}")
        model.blocks = model.blocks[:layer]  # nothing above the chosen layer is ever run
        self.model = model.to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.depth, self.layer, self.name = depth, layer, name
        self.dim = model.cfg.embed_dim
        self.frame_rate = SAMPLE_RATE / (model.cfg.hop_size * model.cfg.patch_stride[1])  # 25 Hz
        # one patch needs patch_stride[1] mel frames: L // hop + 1 >= 4
        self.min_samples = max(model.cfg.hop_size * (model.cfg.patch_stride[1] - 1), model.cfg.n_fft // 2 + 1)

    @classmethod
    def from_spec(cls, path: str | None, layer, options: dict[str, str], device) -> "DashengTeacher":
        if not path:
            raise UserError("dasheng teacher needs its checkpoint: 'dasheng:/path/to/dasheng_12b.pt'")
        autocast_dtype = pop_dtype(options)
        check_no_options_left("dasheng", options)
        model = load_dasheng_checkpoint(path)
        return cls(model, layer=layer, name=f"dasheng:{Path(path).stem}", device=device, autocast_dtype=autocast_dtype)

    def _encode(self, waves: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        num_patches = self.model.num_patches(lengths)  # (B,)
        # blocks were cut to `layer`; the final LayerNorm belongs to the last layer's output only
        return self.model(waves, lengths, final_norm=self.layer == self.depth), num_patches
