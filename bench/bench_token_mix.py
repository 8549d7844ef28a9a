"""Token mixing: `token_mix` (Triton on CUDA, the torch twin on CPU) vs plain eager PyTorch, a
per-row loop over the mixed rows as one would write it in a data pipeline.

Sizes: GPU B=64 rows of 30 s at 16 kHz (the issue's realistic batch); CPU scaled to B=16 x 10 s so
the suite stays short. Two teachers: 50 Hz x 16 codebooks and 25 Hz x 8 codebooks. Mixing
probability 0.1 (SPEAR.md section 7) and 1.0 (every row mixed: the heaviest case).
"""
from __future__ import annotations

import math

import pytest
import torch

from kernels.token_mix import IGNORE_INDEX, TokenMixPlan, draw_token_mix_plan, token_mix

SAMPLE_RATE = 16000
TEACHERS = ((50.0, 16), (25.0, 8))  # (frame rate Hz, codebooks)


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


def make_inputs(device: torch.device, prob: float):
    B, seconds = (64, 30.0) if device.type == "cuda" else (16, 10.0)
    gen = torch.Generator().manual_seed(0)
    L = int(seconds * SAMPLE_RATE)
    lengths = torch.randint(L // 2, L + 1, (B,), generator=gen)
    lengths[0] = L
    waves = torch.randn(B, L, generator=gen)
    waves = waves.masked_fill(torch.arange(L)[None, :] >= lengths[:, None], 0.0)
    targets = []
    for rate, n in TEACHERS:
        T = math.ceil(seconds * rate)
        tgt = torch.randint(0, 256, (B, T, n), generator=gen)
        valid = torch.ceil(lengths * rate / SAMPLE_RATE).long()
        targets.append(tgt.masked_fill(torch.arange(T)[None, :, None] >= valid[:, None, None], IGNORE_INDEX))
    plan = draw_token_mix_plan(lengths, gen, prob=prob)
    def move(t: torch.Tensor) -> torch.Tensor:
        return t.to(device)

    return (move(waves), move(lengths), TokenMixPlan(*map(move, plan)), tuple(map(move, targets)),
            dict(B=B, seconds=seconds, mixed_rows=int((plan.partner >= 0).sum()), prob=prob))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@pytest.mark.parametrize("prob", [0.1, 1.0])
@pytest.mark.parametrize("contender", ["token_mix", "eager"])
def test_token_mix_speed(benchmark, device, peak_memory, machine, contender, prob):
    waves, lengths, plan, targets, sizes = make_inputs(device, prob)
    rates = tuple(rate for rate, _ in TEACHERS)
    if contender == "token_mix":
        def run():
            out = token_mix(waves, lengths, plan, targets, rates, seed=1234)
            sync(device)
            return out
    else:
        generator = torch.Generator(device=device).manual_seed(1234)

        def run():
            out = eager_token_mix(waves, plan, targets, rates, generator)
            sync(device)
            return out

    run()  # warm-up (Triton compilation on GPU)
    benchmark.group = f"token_mix prob={prob}"
    benchmark.extra_info.update(sizes)
    benchmark.extra_info["teachers"] = [list(t) for t in TEACHERS]
    benchmark.extra_info["machine"] = machine
    benchmark.extra_info["peak_memory_bytes"] = peak_memory(run)
    benchmark.pedantic(run, rounds=10, warmup_rounds=1)
