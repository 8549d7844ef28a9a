"""The MVQ quantiser: N codebooks of K centres each; a frame is coded by one centre per codebook and
reconstructed as their SUM (direct-sum / multi-codebook VQ, SPEAR.md section 3).

Parameters are those of the reference (`multi_quantization.Quantizer`, PyPI 0.1.1), under the same
names, so weights move between the two without change:
  centers (N, K, D) times exp(SCALE_SPEED * centers_scale); to_logits: Linear(D, N*K) applied to
  x * exp(SCALE_SPEED * logits_scale), the per-codebook argmax of which is the encoder's first guess.

Normalisation (optional): per-dimension statistics `norm_mean`, `norm_std` (D,) live inside the
quantiser and are applied as (x - norm_mean) / norm_std before fitting AND before encoding;
`decode` maps back. `norm_std` as stored already includes the guard: norm_std = std + NORM_EPS,
computed once when fitting. (The reference recipe divided by std + 1e-5 when fitting but by std when
encoding; here there is one formula, used everywhere.)

Tokens: uint8 (..., N), one index per byte, for every K <= 256 (K = 16 included: the reference packs
two 16-entry indexes per byte; we do not, so that the token layout does not depend on K and token
stores always hold (T, N)). `decode` takes what `encode` emits (any integer dtype, (..., N)).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .encode import DEFAULT_CHUNK_BYTES, GramCache, compute_indexes

from spear_fast.atomic import atomic_open
from spear_fast.config import check, field
from spear_fast.errors import UserError

SCALE_SPEED = 10.0  # the reference's `scale_speed`: the log-scales are multiplied by this before exp()
NORM_EPS = 1e-5  # added to the per-dimension std once, when the statistics are computed
FORMAT_VERSION = 1
MAX_CODEBOOK_SIZE = 256  # tokens are stored as uint8


def is_power_of_two(n: int) -> bool:
    return n > 0 and (n & (n - 1)) == 0


@dataclass(frozen=True)
class QuantizerConfig:
    dim: int = field(doc="D, the frame dimension", ge=1)
    num_codebooks: int = field(doc="N, a power of two")
    codebook_size: int = field(256, f"K, a power of two <= {MAX_CODEBOOK_SIZE} (uint8 tokens)")
    normalized: bool = field(False, "whether norm_mean / norm_std are applied")

    def __post_init__(self) -> None:
        check(self)

    def validate(self) -> None:
        if not is_power_of_two(self.num_codebooks):
            raise ValueError(f"Quantizer: num_codebooks must be a power of two, got {self.num_codebooks}")
        if not is_power_of_two(self.codebook_size) or self.codebook_size > MAX_CODEBOOK_SIZE:
            raise ValueError(
                f"Quantizer: codebook_size must be a power of two <= {MAX_CODEBOOK_SIZE} (uint8 tokens), "
                f"got {self.codebook_size}"
            )


def check_frames(x: Tensor, dim: int, what: str = "frames") -> None:
    """ValueError unless x is a floating (..., dim) tensor of finite values (naming where they are not)."""
    if not torch.is_floating_point(x):
        raise ValueError(f"{what}: expected a floating-point tensor, got dtype {x.dtype}")
    if x.ndim < 1 or x.shape[-1] != dim:
        raise ValueError(f"{what}: expected shape (..., {dim}), got {tuple(x.shape)}")
    finite = torch.isfinite(x.reshape(-1, dim)).all(dim=1)  # (B,)
    if not bool(finite.all()):
        bad_rows = torch.nonzero(~finite).flatten()
        num_values = int((~torch.isfinite(x)).sum())
        first = bad_rows[:5].tolist()
        raise ValueError(
            f"{what}: {num_values} NaN/Inf values in {bad_rows.numel()} of {finite.numel()} frames "
            f"(shape {tuple(x.shape)}); first bad frame rows (flattened over leading dims): {first}"
        )


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_open(path, "wb") as handle:
        handle.write(data)


class Quantizer(nn.Module):
    """N x K multi-codebook quantiser of D-dimensional frames (see the module docstring)."""

    def __init__(self, dim: int, num_codebooks: int, codebook_size: int = 256, normalized: bool = False) -> None:
        super().__init__()
        self.config = QuantizerConfig(dim, num_codebooks, codebook_size, normalized)
        self.dim, self.num_codebooks, self.codebook_size = dim, num_codebooks, codebook_size
        self.to_logits = nn.Linear(dim, num_codebooks * codebook_size)
        # As the reference: centres start as a copy of the logits' weight rows.
        self.centers = nn.Parameter(self.to_logits.weight.detach().clone().reshape(num_codebooks, codebook_size, dim))
        self.logits_scale = nn.Parameter(torch.zeros(()))
        self.centers_scale = nn.Parameter(torch.zeros(()))
        self.register_buffer("norm_mean", torch.zeros(dim))  # (D,)
        self.register_buffer("norm_std", torch.ones(dim))  # (D,), includes NORM_EPS
        self._gram = GramCache()

    # ---------------------------------------------------------------- parameters
    @property
    def normalized(self) -> bool:
        return self.config.normalized

    def set_normalization(self, mean: Tensor | None, std: Tensor | None) -> None:
        """Store per-dimension stats; `std` must already include NORM_EPS (see `normalization_stats`).
        None, None switches normalisation off."""
        if mean is None or std is None:
            self.config = QuantizerConfig(self.dim, self.num_codebooks, self.codebook_size, False)
            self.norm_mean.zero_()
            self.norm_std.fill_(1.0)
            return
        for name, t in (("mean", mean), ("std", std)):
            if t.shape != (self.dim,):
                raise ValueError(f"set_normalization: {name} must have shape ({self.dim},), got {tuple(t.shape)}")
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"set_normalization: {name} has NaN/Inf values")
        if not bool((std > 0).all()):
            raise ValueError(f"set_normalization: std must be > 0, min is {float(std.min())}")
        with torch.no_grad():
            self.norm_mean.copy_(mean)
            self.norm_std.copy_(std)
        self.config = QuantizerConfig(self.dim, self.num_codebooks, self.codebook_size, True)

    def get_centers(self) -> Tensor:
        """(N, K, D) effective centres, exp(10 * centers_scale) * centers (differentiable)."""
        return (self.centers_scale * SCALE_SPEED).exp() * self.centers

    def logits(self, x: Tensor) -> Tensor:
        """(B, D) normalised frames -> (B, N, K) logits of the first guess (differentiable)."""
        scaled = (self.logits_scale * SCALE_SPEED).exp() * x
        return self.to_logits(scaled).reshape(x.shape[0], self.num_codebooks, self.codebook_size)

    def normalize(self, x: Tensor) -> Tensor:
        if not self.normalized:
            return x
        return (x - self.norm_mean) / self.norm_std

    def denormalize(self, x: Tensor) -> Tensor:
        if not self.normalized:
            return x
        return x * self.norm_std + self.norm_mean

    def gram(self) -> Tensor:
        """(N*K, N*K) Gram matrix of the effective centres, cached until a parameter changes."""
        return self._gram.get(self.centers, self.centers_scale, self.get_centers)

    # ---------------------------------------------------------------- encode / decode
    @torch.no_grad()
    def compute_indexes(self, x: Tensor, refine_iters: int = 5, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Tensor:
        """(B, D) ALREADY-normalised fp32 frames -> (B, N) int64 indexes (argmax + refine passes)."""
        if x.shape[0] == 0:
            return torch.zeros(0, self.num_codebooks, dtype=torch.int64, device=x.device)
        return compute_indexes(
            x, self.get_centers().detach(), self.gram(), self.logits, refine_iters, chunk_bytes=chunk_bytes
        )

    @torch.no_grad()
    def encode(self, x: Tensor, refine_iters: int = 5, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Tensor:
        """(..., D) frames -> uint8 tokens (..., N). Empty input gives empty output."""
        if refine_iters < 0:
            raise ValueError(f"encode: refine_iters must be >= 0, got {refine_iters}")
        check_frames(x, self.dim)
        lead = x.shape[:-1]
        flat = self.normalize(x.reshape(-1, self.dim).to(self.centers.device, torch.float32))
        indexes = self.compute_indexes(flat, refine_iters, chunk_bytes)  # (B, N)
        return indexes.to(torch.uint8).reshape(*lead, self.num_codebooks)

    def decode(self, tokens: Tensor, normalized: bool = False) -> Tensor:
        """Integer tokens (..., N) -> (..., D) reconstructions (in the input space unless normalized=True)."""
        if torch.is_floating_point(tokens) or tokens.is_complex() or tokens.dtype == torch.bool:
            raise ValueError(f"decode: tokens must be an integer tensor, got dtype {tokens.dtype}")
        if tokens.ndim < 1 or tokens.shape[-1] != self.num_codebooks:
            raise ValueError(f"decode: expected tokens of shape (..., {self.num_codebooks}), got {tuple(tokens.shape)}")
        lead = tokens.shape[:-1]
        flat = tokens.reshape(-1, self.num_codebooks).to(self.centers.device, torch.int64)  # (B, N)
        if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= self.codebook_size):
            raise ValueError(
                f"decode: token values must lie in [0, {self.codebook_size}), found [{int(flat.min())}, {int(flat.max())}]"
            )
        offsets = torch.arange(self.num_codebooks, device=flat.device) * self.codebook_size  # (N,)
        table = self.get_centers().reshape(-1, self.dim)  # (N*K, D)
        # Sum of one row per codebook without building (B, N, D).
        recon = nn.functional.embedding_bag(flat + offsets, table, mode="sum")  # (B, D)
        if not normalized:
            recon = self.denormalize(recon)
        return recon.reshape(*lead, self.dim)

    # ---------------------------------------------------------------- merging (trainer phase 2)
    @torch.no_grad()
    def merged_pairs(self) -> "Quantizer":
        """N codebooks of K -> N/2 codebooks of K*K: C'[c, i*K + j] = C[2c, i] + C[2c+1, j], logits
        (weights and biases) summed the same way; scales and normalisation copied."""
        if self.num_codebooks < 2 or self.codebook_size**2 > MAX_CODEBOOK_SIZE:
            raise ValueError(
                f"merged_pairs: needs >= 2 codebooks and K*K <= {MAX_CODEBOOK_SIZE}, "
                f"have N={self.num_codebooks}, K={self.codebook_size}"
            )
        n, k, d = self.num_codebooks, self.codebook_size, self.dim
        out = Quantizer(d, n // 2, k * k, self.normalized).to(self.centers.device)
        centers = self.centers.reshape(n // 2, 2, k, d)  # (N/2, 2, K, D)
        out.centers.copy_((centers[:, 0, :, None, :] + centers[:, 1, None, :, :]).reshape(n // 2, k * k, d))
        weight = self.to_logits.weight.reshape(n // 2, 2, k, d)
        out.to_logits.weight.copy_((weight[:, 0, :, None, :] + weight[:, 1, None, :, :]).reshape(n // 2 * k * k, d))
        bias = self.to_logits.bias.reshape(n // 2, 2, k)
        out.to_logits.bias.copy_((bias[:, 0, :, None] + bias[:, 1, None, :]).reshape(-1))
        out.logits_scale.copy_(self.logits_scale)
        out.centers_scale.copy_(self.centers_scale)
        out.norm_mean.copy_(self.norm_mean)
        out.norm_std.copy_(self.norm_std)
        return out

    # ---------------------------------------------------------------- files
    def fingerprint(self) -> str:
        """16 hex digits identifying the weights (sha256 of config + tensors); for token-store metadata."""
        digest = hashlib.sha256(json.dumps(asdict(self.config), sort_keys=True).encode())
        for name, tensor in sorted(self.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]

    def save(self, path: str | os.PathLike) -> None:
        """One safetensors file; the JSON config sits in its header metadata. Atomic."""
        from safetensors.torch import save

        tensors = {name: t.detach().cpu().contiguous() for name, t in self.state_dict().items()}
        metadata = {"config": json.dumps(asdict(self.config)), "format": "spear_fast.mvq", "version": str(FORMAT_VERSION)}
        _atomic_write_bytes(Path(path), save(tensors, metadata=metadata))

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> "Quantizer":
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise UserError(f"Quantizer.load: no such file {path}")
        try:
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                metadata = handle.metadata() or {}
                tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        except Exception as error:  # safetensors raises its own error types
            raise UserError(f"Quantizer.load: {path} is not a readable safetensors file ({error})") from error
        if metadata.get("format") != "spear_fast.mvq" or "config" not in metadata:
            raise UserError(f"Quantizer.load: {path} has no spear_fast.mvq config in its metadata")
        config = QuantizerConfig(**json.loads(metadata["config"]))
        quantizer = cls(config.dim, config.num_codebooks, config.codebook_size, config.normalized)
        quantizer._load_checked(tensors, str(path))
        return quantizer.to(device)

    def _load_checked(self, tensors: dict[str, Tensor], source: str) -> None:
        expected = self.state_dict()
        missing = sorted(set(expected) - set(tensors))
        unexpected = sorted(set(tensors) - set(expected))
        if missing or unexpected:
            raise UserError(f"{source}: missing tensors {missing}, unexpected tensors {unexpected}")
        for name, tensor in tensors.items():
            if tuple(tensor.shape) != tuple(expected[name].shape):
                raise UserError(f"{source}: {name} has shape {tuple(tensor.shape)}, expected {tuple(expected[name].shape)}")
        with torch.no_grad():
            self.load_state_dict({name: t.to(torch.float32) for name, t in tensors.items()})

    @classmethod
    def from_multi_quantization(cls, source: Any) -> "Quantizer":
        """Import a reference `multi_quantization.Quantizer`: the object, its state dict, or a file
        written by torch.save of either (read with weights_only=True). Same weights -> same tokens."""
        if isinstance(source, (str, os.PathLike)):
            path = Path(source)
            if not path.is_file():
                raise UserError(f"from_multi_quantization: no such file {path}")
            source = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(source, nn.Module):
            source = source.state_dict()
        if not isinstance(source, dict):
            raise ValueError(f"from_multi_quantization: expected a Quantizer, state dict or path, got {type(source)}")
        needed = ["centers", "to_logits.weight", "to_logits.bias", "logits_scale", "centers_scale"]
        missing = [name for name in needed if name not in source]
        if missing:
            raise UserError(f"from_multi_quantization: state dict lacks {missing} (keys: {sorted(source)[:10]})")
        centers = source["centers"]
        if centers.ndim != 3:
            raise UserError(f"from_multi_quantization: centers must be (N, K, D), got {tuple(centers.shape)}")
        n, k, d = centers.shape
        quantizer = cls(d, n, k)
        tensors = {name: source[name] for name in needed}
        tensors["norm_mean"] = torch.zeros(d)
        tensors["norm_std"] = torch.ones(d)
        quantizer._load_checked(tensors, "from_multi_quantization")
        return quantizer

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_codebooks={self.num_codebooks}, codebook_size={self.codebook_size}, normalized={self.normalized}"


def normalization_stats(total: Tensor, total_sq: Tensor, count: int) -> tuple[Tensor, Tensor]:
    """(mean, std + NORM_EPS) from float64 running sums over `count` frames."""
    if count < 2:
        raise UserError(f"normalization_stats: need at least 2 frames, got {count}")
    mean = total / count
    var = (total_sq / count - mean**2).clamp_min(0.0) * (count / (count - 1))
    return mean.float(), (var.sqrt() + NORM_EPS).float()
