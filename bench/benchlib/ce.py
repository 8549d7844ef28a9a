"""Inputs of `linear_multi_target_ce` and the plain way of computing the same loss.

Sizes: GPU F=30,000 frames, d=1024, N=24 codebooks, K=256 (a large student's speech + audio heads
over ~10 minutes of 50 Hz frames); CPU scaled to F=4,000, d=512, N=8, K=256 so the suites stay short.
Frames: 10 % padding (weight 0, targets -100), the rest weighted alpha = 0.5, 5 % of the other
targets ignored.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

K = 256
ALPHA = 0.5  # SPEAR's frame weight: alpha on masked frames, 1 - alpha on the others (equal at 0.5)


def sizes_for(device: torch.device) -> dict[str, int]:
    if device.type == "cuda":
        return {"F": 30_000, "d": 1024, "N": 24, "K": K}
    return {"F": 4_000, "d": 512, "N": 8, "K": K}


def make_inputs(device: torch.device, dtype: torch.dtype, sizes: dict[str, int], *, seed: int = 0,
                with_bias: bool = True, random_weights: bool = False):
    """(hidden (F, d), weight (N*K, d), bias (N*K,) or None, targets (F, N), frame_weights (F,)):
    hidden/weight/bias in `dtype` with requires_grad. Frame weights are ALPHA on every frame that is
    not padding, or with random_weights uniform in [0.1, 1.1) (what the loss must weight exactly)."""
    gen = torch.Generator().manual_seed(seed)
    num_frames, dim, num_codebooks, num_classes = sizes["F"], sizes["d"], sizes["N"], sizes.get("K", K)
    hidden = torch.randn(num_frames, dim, generator=gen)
    weight = torch.randn(num_codebooks * num_classes, dim, generator=gen) / dim**0.5
    bias = 0.1 * torch.randn(num_codebooks * num_classes, generator=gen)
    targets = torch.randint(0, num_classes, (num_frames, num_codebooks), generator=gen)
    targets[torch.rand(num_frames, num_codebooks, generator=gen) < 0.05] = -100
    frame_weights = torch.full((num_frames,), ALPHA)
    if random_weights:
        frame_weights = torch.rand(num_frames, generator=gen) + 0.1
    padding = torch.rand(num_frames, generator=gen) < 0.10
    frame_weights[padding] = 0.0
    targets[padding] = -100
    params = [t.to(device=device, dtype=dtype).requires_grad_(True) for t in (hidden, weight, bias)]
    if not with_bias:
        params[2] = None
    return (*params, targets.to(device), frame_weights.to(device))


def plain_loss(hidden, weight, bias, targets, frame_weights):
    """nn.Linear + F.cross_entropy over all frames (fp32 logits), then masking and weighting."""
    num_frames, num_codebooks = targets.shape
    num_classes = weight.shape[0] // num_codebooks
    logits = F.linear(hidden, weight, bias).float()  # (F, N*K)
    ce = F.cross_entropy(
        logits.view(num_frames * num_codebooks, num_classes), targets.reshape(-1), ignore_index=-100,
        reduction="none",
    ).view(num_frames, num_codebooks)  # (F, N)
    return (frame_weights * ce.mean(1)).sum()
