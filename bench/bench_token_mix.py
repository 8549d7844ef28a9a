"""Token mixing: `token_mix` (Triton on CUDA, the torch twin on CPU) vs plain eager PyTorch, a
per-row loop over the mixed rows as one would write it in a data pipeline.

Sizes and inputs: `benchlib.token_mix` (GPU B=64 rows of 30 s at 16 kHz; CPU B=16 x 10 s; two
teachers, 50 Hz x 16 codebooks and 25 Hz x 8 codebooks). Mixing probability 0.1 (SPEAR.md section 7)
and 1.0 (every row mixed: the heaviest case).
"""
from __future__ import annotations

import pytest
import torch
from benchlib.measure import synchronize
from benchlib.token_mix import TEACHERS, eager_token_mix, make_inputs

from kernels.token_mix import token_mix


@pytest.mark.parametrize("prob", [0.1, 1.0])
@pytest.mark.parametrize("contender", ["token_mix", "eager"])
def test_token_mix_speed(benchmark, device, peak_memory, machine, contender, prob):
    waves, lengths, plan, targets, sizes = make_inputs(device, prob)
    rates = tuple(rate for rate, _ in TEACHERS)
    if contender == "token_mix":
        def run():
            out = token_mix(waves, lengths, plan, targets, rates, seed=1234)
            synchronize(device)
            return out
    else:
        generator = torch.Generator(device=device).manual_seed(1234)

        def run():
            out = eager_token_mix(waves, plan, targets, rates, generator)
            synchronize(device)
            return out

    run()  # warm-up (Triton compilation on GPU)
    benchmark.group = f"token_mix prob={prob}"
    benchmark.extra_info.update(sizes)
    benchmark.extra_info["teachers"] = [list(t) for t in TEACHERS]
    benchmark.extra_info["machine"] = machine
    benchmark.extra_info["peak_memory_bytes"] = peak_memory(run)
    benchmark.pedantic(run, rounds=10, warmup_rounds=1)
