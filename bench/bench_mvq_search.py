"""Op 1 (kernels/mvq_search.py) against the plain-PyTorch ways of computing the same table.

Each contender returns the (B, N, K) squared errors and the per-codebook argmin:
  mvq_search  the op (Triton on CUDA, the chunked torch twin on CPU);
  cdist, explicit   the eager ways (`benchlib.mvq_search`).
Groups "mvq_search-plain" (no indexes: nearest centre to the frame) and "mvq_search-indexed" (the
swap-error table of an MVQ refine pass). GPU: B=2000, N=16, K=256, D=1024; CPU: B=128.

    python -m pytest bench/bench_mvq_search.py --benchmark-only
"""
from __future__ import annotations

import pytest
import torch
from benchlib.mvq_search import (
    CPU_FRAMES,
    DIM,
    EXPLICIT_CHUNK,
    GPU_FRAMES,
    NUM_CENTERS,
    NUM_CODEBOOKS,
    by_cdist,
    by_explicit,
    make_problem,
)
from benchlib.measure import synchronize

from kernels.mvq_search import mvq_search

def by_op(frames, centers, indexes):
    result = mvq_search(frames, centers, indexes)
    return result.errors, result.best


@pytest.mark.parametrize("contender", ["mvq_search", "cdist", "explicit"])
@pytest.mark.parametrize("mode", ["plain", "indexed"])
def test_mvq_search(benchmark, device, peak_memory, machine, mode, contender):
    batch = GPU_FRAMES if device.type == "cuda" else CPU_FRAMES
    frames, centers, indexes = make_problem(batch, NUM_CODEBOOKS, NUM_CENTERS, DIM, indexed=mode == "indexed",
                                            device=device)

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
