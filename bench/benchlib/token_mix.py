"""Inputs of `kernels.token_mix` and the plain eager way of doing the same: a Python loop over the
mixed rows, torch ops per row, torch.rand for the draws (as one would write it in a data pipeline).

Sizes: GPU B=64 rows of 30 s at 16 kHz; CPU B=16 x 10 s. Two teachers: 50 Hz x 16 codebooks and
25 Hz x 8 codebooks (SPEAR's WavLM and Dasheng token layouts).
"""
from __future__ import annotations

import math

import torch

from kernels import IGNORE_INDEX
from kernels.token_mix import TokenMixPlan, draw_token_mix_plan

SAMPLE_RATE = 16000
TEACHERS = ((50.0, 16), (25.0, 8))  # (frame rate Hz, codebooks)


def batch_shape_for(device: torch.device) -> tuple[int, float]:
    """(rows, seconds per row) of the measured batch."""
    return (64, 30.0) if device.type == "cuda" else (16, 10.0)


def eager_token_mix(waves, plan: TokenMixPlan, targets, frame_rates, generator):
    """The plain way: a Python loop over mixed rows, torch ops per row, torch.rand for the draws."""
    out_waves = waves.clone()
    out_targets = [t.clone() for t in targets]
    for b in range(waves.shape[0]):
        p = int(plan.partner[b])
        n = int(plan.length[b])
        if p < 0 or n == 0:
            continue
        o = int(plan.offset[b])
        x = waves[b, o:o + n].float()
        y = waves[p, :n].float()
        P, Q = (x * x).sum(), (y * y).sum()
        if P.item() == 0 or Q.item() == 0:
            continue
        g = torch.sqrt(P / Q * 10 ** (-float(plan.snr_db[b]) / 10))
        out_waves[b, o:o + n] = (x + g * y).to(waves.dtype)
        beta = g * g * Q / (P + g * g * Q)
        for tgt, new, rate in zip(targets, out_targets, frame_rates):
            hop = SAMPLE_RATE / rate
            start = min(max(math.ceil(o / hop - 0.5), 0), tgt.shape[1])
            end = min(max(math.ceil((o + n) / hop - 0.5), start), tgt.shape[1])
            mine, theirs = tgt[b, start:end], tgt[p, : end - start]
            u = torch.rand(mine.shape, device=tgt.device, generator=generator)
            swap = (u < beta) & (mine != IGNORE_INDEX) & (theirs != IGNORE_INDEX)
            new[b, start:end] = torch.where(swap, theirs, mine)
    return out_waves, out_targets


def make_inputs(device: torch.device, prob: float, *, batch: int | None = None, seconds: float | None = None,
                teachers: tuple[tuple[float, int], ...] = TEACHERS, dtype: torch.dtype = torch.float32,
                seed: int = 0):
    """(waves (B, L), lengths (B,), plan, targets (one (B, T_i, N_i) per teacher), sizes dict).
    Row lengths are uniform in [L/2, L] (row 0 full), padding zeroed and its frames ignored (-100);
    the plan is drawn with mixing probability `prob`. batch/seconds default to batch_shape_for(device)."""
    default_batch, default_seconds = batch_shape_for(device)
    batch = default_batch if batch is None else batch
    seconds = default_seconds if seconds is None else seconds
    gen = torch.Generator().manual_seed(seed)
    L = int(seconds * SAMPLE_RATE)
    lengths = torch.randint(L // 2, L + 1, (batch,), generator=gen)
    lengths[0] = L
    waves = torch.randn(batch, L, generator=gen)
    waves = waves.masked_fill(torch.arange(L)[None, :] >= lengths[:, None], 0.0)
    targets = []
    for rate, n in teachers:
        T = math.ceil(seconds * rate)
        tgt = torch.randint(0, 256, (batch, T, n), generator=gen)
        valid = torch.ceil(lengths * rate / SAMPLE_RATE).long()
        targets.append(tgt.masked_fill(torch.arange(T)[None, :, None] >= valid[:, None, None], IGNORE_INDEX))
    plan = draw_token_mix_plan(lengths, gen, prob=prob)

    def move(t: torch.Tensor) -> torch.Tensor:
        return t.to(device)

    sizes = dict(B=batch, seconds=seconds, mixed_rows=int((plan.partner >= 0).sum()), prob=prob)
    return (waves.to(device, dtype), move(lengths), TokenMixPlan(*map(move, plan)), tuple(map(move, targets)), sizes)
