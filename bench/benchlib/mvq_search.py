"""The eager ways of computing `kernels.mvq_search`'s (B, N, K) squared-error table, and its inputs.

  cdist       torch.cdist between the per-codebook targets (B, N, D) and the codebooks, squared;
  explicit    the definition, (t - C)^2 summed over D, i.e. the (B, N, K, D) tensor, built in frame
              chunks (EXPLICIT_CHUNK frames) because the whole of it (~34 GB fp32 at B=2000, N=16,
              K=256, D=1024) would not fit beside its square.
Each returns (errors (B, N, K), per-codebook argmin (B, N)).
"""
from __future__ import annotations

import torch

NUM_CODEBOOKS, NUM_CENTERS, DIM = 16, 256, 1024  # SPEAR's MVQ: N = 16 codebooks of K = 256, 1024-d teacher
GPU_FRAMES, CPU_FRAMES = 2000, 128  # CPU scaled down so a suite runs in under a minute on 2 cores
EXPLICIT_CHUNK = {"cuda": 64, "cpu": 8}  # frames per chunk: 64 x 16 x 256 x 1024 fp32 = 1 GiB per temporary


def make_problem(batch: int, num_codebooks: int, num_centers: int, dim: int, *, indexed: bool,
                 device: torch.device, dtype: torch.dtype = torch.float32, seed: int = 0):
    """frames (B, D), centers (N, K, D) scaled by 0.25, indexes (B, N) int64 or None; random normal."""
    generator = torch.Generator().manual_seed(seed)
    frames = torch.randn(batch, dim, generator=generator)
    centers = torch.randn(num_codebooks, num_centers, dim, generator=generator) * 0.25
    indexes = torch.randint(0, num_centers, (batch, num_codebooks), generator=generator) if indexed else None
    frames, centers = frames.to(device, dtype), centers.to(device, dtype)
    return frames, centers, None if indexes is None else indexes.to(device)


def per_codebook_targets(frames, centers, indexes):
    """t (B, N, D): the frame itself, or C[n, z_n] - e with e = sum_m C[m, z_m] - x."""
    if indexes is None:
        return frames.unsqueeze(1).expand(-1, centers.shape[0], -1)
    current = centers[torch.arange(centers.shape[0], device=frames.device).unsqueeze(0), indexes]  # (B, N, D)
    residual = current.sum(dim=1) - frames  # (B, D)
    return current - residual.unsqueeze(1)


def by_cdist(frames, centers, indexes):
    targets = per_codebook_targets(frames, centers, indexes).transpose(0, 1)  # (N, B, D)
    errors = torch.cdist(targets, centers).square_().transpose(0, 1)  # (B, N, K)
    return errors, errors.argmin(dim=-1)


def by_explicit(frames, centers, indexes, chunk):
    targets = per_codebook_targets(frames, centers, indexes)  # (B, N, D)
    errors = torch.empty(*targets.shape[:2], centers.shape[1], device=frames.device)  # (B, N, K)
    for start in range(0, targets.shape[0], chunk):
        diff = targets[start : start + chunk].unsqueeze(2) - centers.unsqueeze(0)  # (b, N, K, D)
        errors[start : start + chunk] = diff.square_().sum(dim=-1)
    return errors, errors.argmin(dim=-1)
