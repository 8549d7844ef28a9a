"""How good a quantiser is on a set of frames: relative reconstruction error and codebook usage."""
from __future__ import annotations

import math

import torch
from torch import Tensor


def relative_error(frames: Tensor, reconstructed: Tensor) -> float:
    """sum ||x_hat - x||^2 / sum ||x - mean(x)||^2 over frames (B, D), in float64."""
    if frames.shape != reconstructed.shape or frames.ndim != 2:
        raise ValueError(f"relative_error: frames {tuple(frames.shape)} vs reconstructed {tuple(reconstructed.shape)}")
    x = frames.detach().double()
    num = (reconstructed.detach().double() - x).square().sum()
    den = (x - x.mean(dim=0)).square().sum()
    return float(num / den.clamp_min(1e-30))


def usage_entropy(tokens: Tensor, codebook_size: int) -> Tensor:
    """(B, N) tokens -> (N,) entropy in bits of each codebook's index histogram (max log2 K)."""
    if tokens.ndim != 2:
        raise ValueError(f"usage_entropy: tokens must be (B, N), got {tuple(tokens.shape)}")
    num_codebooks = tokens.shape[1]
    counts = torch.zeros(num_codebooks, codebook_size, dtype=torch.float64)
    counts.scatter_add_(1, tokens.t().long(), torch.ones(tokens.t().shape, dtype=torch.float64))
    probs = counts / counts.sum(dim=1, keepdim=True).clamp_min(1.0)
    logs = torch.where(probs > 0, probs.log2(), torch.zeros_like(probs))
    return -(probs * logs).sum(dim=1)


def evaluate(quantizer, frames: Tensor, refine_iters: int = 5, batch_size: int = 4096) -> dict:
    """Encode + decode `frames` (B, D) in input space; relative error measured in the quantiser's
    (normalised) space, where it is fitted. Returns rel_error, entropy_bits (N,), max_entropy_bits."""
    tokens, normalized = [], []
    for start in range(0, frames.shape[0], batch_size):
        chunk = frames[start : start + batch_size]
        tokens.append(quantizer.encode(chunk, refine_iters))
        normalized.append(quantizer.normalize(chunk.float()))
    tokens_all = torch.cat(tokens)
    x = torch.cat(normalized)
    with torch.no_grad():
        recon = quantizer.decode(tokens_all, normalized=True)
    return {
        "rel_error": relative_error(x, recon),
        "entropy_bits": usage_entropy(tokens_all, quantizer.codebook_size),
        "max_entropy_bits": math.log2(quantizer.codebook_size),
        "frames": int(frames.shape[0]),
    }
