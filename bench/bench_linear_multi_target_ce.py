"""Masked multi-target CE fused with the head's linear layer, forward + backward.

Contenders: `linear_multi_target_ce` (Triton on CUDA, the chunked torch twin on CPU), the torch twin
on CUDA too, and the plain way: nn.Linear over all frames -> fp32 (F, N*K) logits -> F.cross_entropy
per (frame, codebook) -> mean over codebooks, weighted by frame.

Sizes and inputs: `benchlib.ce` (GPU F=30,000 frames, d=1024, N=24 codebooks, K=256; CPU F=4,000,
d=512, N=8, K=256).
"""
from __future__ import annotations

import pytest
import torch
from benchlib.ce import make_inputs, plain_loss, sizes_for

from kernels.linear_multi_target_ce import (
    linear_multi_target_ce,
    linear_multi_target_ce_torch,
)


def fused_loss(hidden, weight, bias, targets, frame_weights):
    return linear_multi_target_ce(hidden, weight, targets, frame_weights, bias)


def twin_loss(hidden, weight, bias, targets, frame_weights):
    return linear_multi_target_ce_torch(hidden, weight, targets, frame_weights, bias)


CONTENDERS = {"fused": fused_loss, "torch_twin": twin_loss, "plain": plain_loss}


def dtypes_for(device: torch.device) -> list[torch.dtype]:
    return [torch.float32, torch.bfloat16] if device.type == "cuda" else [torch.float32]


@pytest.mark.parametrize("dtype_name", ["float32", "bfloat16"])
@pytest.mark.parametrize("contender", list(CONTENDERS))
def test_linear_multi_target_ce_fwd_bwd(benchmark, device, peak_memory, machine, contender, dtype_name):
    dtype = getattr(torch, dtype_name)
    if dtype not in dtypes_for(device):
        pytest.skip(f"{dtype_name} is benchmarked on CUDA only (CPU GEMMs run in fp32)")
    if contender == "torch_twin" and device.type != "cuda":
        pytest.skip("on CPU the fused op IS the torch twin (see 'fused')")
    sizes = sizes_for(device)
    hidden, weight, bias, targets, frame_weights = make_inputs(device, dtype, sizes)
    loss_fn = CONTENDERS[contender]

    def run():
        loss = loss_fn(hidden, weight, bias, targets, frame_weights)
        grads = torch.autograd.grad(loss, (hidden, weight, bias))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return loss.detach(), grads

    loss, grads = run()  # warm-up (and Triton compile)
    want = plain_loss(hidden, weight, bias, targets, frame_weights).detach()
    assert torch.allclose(loss.double(), want.double(), rtol=1e-2), (float(loss), float(want))
    del loss, grads, want

    benchmark.group = f"linear_multi_target_ce fwd+bwd {dtype_name} F={sizes['F']}"
    benchmark.extra_info.update(sizes)
    benchmark.extra_info["dtype"] = dtype_name
    benchmark.extra_info["machine"] = machine
    benchmark.extra_info["peak_memory_bytes"] = peak_memory(run)
    benchmark.pedantic(run, rounds=5, warmup_rounds=1)
