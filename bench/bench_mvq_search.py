"""Op 1 (kernels/mvq_search.py) against the plain-PyTorch ways of computing the same table.

Each contender returns the (B, N, K) squared errors and the per-codebook argmin:
  mvq_search  the op (Triton on CUDA, the chunked torch twin on CPU);
  cdist       torch.cdist between the per-codebook targets (B, N, D) and the codebooks, squared;
  explicit    the definition, (t - C)^2 summed over D, i.e. the (B, N, K, D) tensor, built in frame
              chunks (EXPLICIT_CHUNK frames) because the whole of it (~34 GB fp32 at the GPU size)
              would not fit beside its square.
Groups "mvq_search-plain" (no indexes: nearest centre to the frame) and "mvq_search-indexed" (the
swap-error table of an MVQ refine pass). GPU: B=2000, N=16, K=256, D=1024; CPU: B=128.

    python -m pytest bench/bench_mvq_search.py --benchmark-only
"""
from __future__ import annotations

import pytest
import torch

from kernels.mvq_search import mvq_search

NUM_CODEBOOKS, NUM_CENTERS, DIM = 16, 256, 1024  # SPEAR's MVQ: N = 16 codebooks of K = 256, 1024-d teacher
GPU_FRAMES, CPU_FRAMES = 2000, 128  # CPU scaled down so the file runs in under a minute on 2 cores
EXPLICIT_CHUNK = {"cuda": 64, "cpu": 8}  # frames per chunk: 64 x 16 x 256 x 1024 fp32 = 1 GiB per temporary


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


def by_op(frames, centers, indexes):
    result = mvq_search(frames, centers, indexes)
    return result.errors, result.best


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@pytest.mark.parametrize("contender", ["mvq_search", "cdist", "explicit"])
@pytest.mark.parametrize("mode", ["plain", "indexed"])
def test_mvq_search(benchmark, device, peak_memory, machine, mode, contender):
    generator = torch.Generator(device=device).manual_seed(0)
    batch = GPU_FRAMES if device.type == "cuda" else CPU_FRAMES
    frames = torch.randn(batch, DIM, device=device, generator=generator)
    centers = torch.randn(NUM_CODEBOOKS, NUM_CENTERS, DIM, device=device, generator=generator) * 0.25
    indexes = None
    if mode == "indexed":
        indexes = torch.randint(0, NUM_CENTERS, (batch, NUM_CODEBOOKS), device=device, generator=generator)

    def run():
        if contender == "mvq_search":
            out = by_op(frames, centers, indexes)
        elif contender == "cdist":
            out = by_cdist(frames, centers, indexes)
        else:
            out = by_explicit(frames, centers, indexes, EXPLICIT_CHUNK[device.type])
        synchronize(device)
        return out

    if contender == "mvq_search":
        run()  # warm-up: Triton compile + autotune on CUDA; the custom op's one-off imports on CPU
    # One call measures the peak memory (and warms the others up); its result is checked against the op.
    outputs = []
    peak_bytes = peak_memory(lambda: outputs.append(run()))
    errors, best = outputs.pop()
    reference_errors = by_op(frames, centers, indexes)[0] if contender != "mvq_search" else errors
    scale = reference_errors.abs().max()
    assert (errors - reference_errors).abs().max() <= 1e-4 * scale, "contenders disagree"
    assert torch.equal(best, errors.argmin(dim=-1))

    benchmark.group = f"mvq_search-{mode}"
    benchmark.extra_info.update(
        machine=machine,
        peak_memory_bytes=peak_bytes,
        B=batch,
        N=NUM_CODEBOOKS,
        K=NUM_CENTERS,
        D=DIM,
        dtype="float32",
        mode=mode,
    )
    if contender == "explicit":  # seconds per call on a CPU: one round there, three on a GPU
        benchmark.pedantic(run, rounds=3 if device.type == "cuda" else 1, iterations=1, warmup_rounds=0)
    else:
        benchmark(run)
