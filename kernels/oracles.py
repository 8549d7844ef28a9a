"""Float64 oracles of the three ops: each op's definition written the plainest way, in float64, with
no chunking, no fusion and none of the kernels' helpers. The tests and the GPU check
(`bench/gpu_check.py`) hold the Triton kernels and the torch twins to these.

- linear_multi_target_ce_float64: full (F, N*K) logits, F.cross_entropy per (frame, codebook)
- mvq_search_errors_explicit / mvq_search_errors_float64: the (B, N, K) swap-error table, by the
  definition (materialises (B, N, K, D): small sizes) or through ||t||^2 + ||c||^2 - 2<t, c>
  (float64 makes the cancellation harmless: any size that fits)
- token_mix_float64: powers, gain, beta and the swaps of kernels/token_mix.py's docstring, per row

They run on the inputs' device (float64 GEMMs on a GPU are fast enough for the GPU check's sizes).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from kernels._targets import IGNORE_INDEX
from kernels.token_mix import TokenMixPlan


def linear_multi_target_ce_float64(hidden, weight, targets, frame_weights, bias=None, reduction="sum"):
    """float64: full (F, N*K) logits, F.cross_entropy per (frame, codebook), mean over N, weighted."""
    num_frames, num_codebooks = targets.shape
    K = weight.shape[0] // num_codebooks
    logits = hidden.double() @ weight.double().t()  # (F, N*K)
    if bias is not None:
        logits = logits + bias.double()
    ce = F.cross_entropy(
        logits.reshape(num_frames * num_codebooks, K), targets.reshape(-1).long(),
        ignore_index=-100, reduction="none",
    ).view(num_frames, num_codebooks)  # (F, N)
    per_frame = frame_weights.double() * ce.sum(1) / num_codebooks  # (F,)
    return per_frame.sum() if reduction == "sum" else per_frame


def mvq_search_targets_float64(frames: torch.Tensor, centers: torch.Tensor, indexes: torch.Tensor | None) -> torch.Tensor:
    """Per-codebook targets t (B, N, D) in float64: x, or C[n, z_n] - e with e = sum_m C[m, z_m] - x."""
    x = frames.double()  # (B, D)
    c = centers.double()  # (N, K, D)
    num_codebooks = c.shape[0]
    if indexes is None:
        return x.unsqueeze(1).expand(-1, num_codebooks, -1)
    rows = torch.arange(num_codebooks, device=c.device).unsqueeze(0)  # (1, N)
    current = c[rows, indexes.long()]  # (B, N, D) C[n, z_bn]
    residual = current.sum(dim=1) - x  # (B, D) e
    return current - residual.unsqueeze(1)


def mvq_search_errors_explicit(frames, centers, indexes=None) -> torch.Tensor:
    """errors (B, N, K) float64 by the definition: materialises (B, N, K, D), small sizes only."""
    t = mvq_search_targets_float64(frames, centers, indexes)  # (B, N, D)
    return (t.unsqueeze(2) - centers.double().unsqueeze(0)).square().sum(dim=-1)


def mvq_search_errors_float64(frames, centers, indexes=None) -> torch.Tensor:
    """errors (B, N, K) float64 via ||t||^2 + ||c||^2 - 2<t, c> (float64 makes the cancellation
    harmless); for realistic sizes where (B, N, K, D) would not fit."""
    t = mvq_search_targets_float64(frames, centers, indexes).transpose(0, 1)  # (N, B, D)
    c = centers.double()  # (N, K, D)
    out = t.square().sum(-1, keepdim=True) + c.square().sum(-1).unsqueeze(1) - 2 * torch.bmm(t, c.transpose(1, 2))
    return out.transpose(0, 1)  # (B, N, K)


def uniforms_clear_of_beta(generator: torch.Generator, targets: Sequence[torch.Tensor],
                           beta: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Explicit swap draws (one per targets tensor, on its device) kept 1e-3 away from each row's
    beta (B,), so an fp32 against a float64 beta cannot flip a swap. Drawn on the CPU from `generator`."""
    out = []
    for tgt in targets:
        u = torch.rand(tgt.shape, generator=generator)
        b = beta.detach().cpu().float()[:, None, None]
        near = (u - b).abs() < 1e-3
        out.append(torch.where(near, (b + 2e-3) % 1.0, u).to(tgt.device))
    return tuple(out)


def token_mix_float64(waves: torch.Tensor, plan: TokenMixPlan, targets: Sequence[torch.Tensor],
                      frame_rates: Sequence[float], uniforms: Sequence[torch.Tensor], sample_rate: int = 16000):
    """The token-mixing definition (kernels/token_mix.py's docstring) in float64, one row at a time.

    P, Q = the primary's and the partner's power over the overlap, g = sqrt(P 10^(-snr/10) / Q),
    beta = g^2 Q / (P + g^2 Q); out = primary + g * partner inside the overlap. Frame f of a teacher
    with hop h = sample_rate / rate is inside when its centre (f + 1/2) h lies in [offset, offset +
    length); its partner frame is floor(((f + 1/2) h - offset) / h); entry (f, n) takes the partner's
    token when uniforms[b, f, n] < beta and neither token is ignored. Silent primary or partner,
    unmixed rows, zero-length overlaps: g = beta = 0, row unchanged.
    Returns (waves (B, L) float64, targets tuple, gain (B,) float64, beta (B,) float64).
    """
    partner, offset, length, snr = (t.detach().cpu() for t in plan)
    w = waves.double()
    out = w.clone()
    B = w.shape[0]
    gain = torch.zeros(B, dtype=torch.float64)
    beta = torch.zeros(B, dtype=torch.float64)
    for b in range(B):
        p, o, n = int(partner[b]), int(offset[b]), int(length[b])
        if p < 0 or n == 0:
            continue
        primary, other = w[b, o:o + n], w[p, :n]
        P, Q = float(primary.square().sum()), float(other.square().sum())
        if P == 0.0 or Q == 0.0:
            continue
        g = math.sqrt(P * 10.0 ** (-float(snr[b]) / 10.0) / Q)
        gain[b] = g
        beta[b] = g * g * Q / (P + g * g * Q)
        out[b, o:o + n] = primary + g * other
    out_targets = []
    for tgt, rate, uni in zip(targets, frame_rates, uniforms):
        new = tgt.clone()
        hop = sample_rate / rate
        num_frames = tgt.shape[1]
        centre = (torch.arange(num_frames, dtype=torch.float64, device=tgt.device) + 0.5) * hop  # (T,)
        for b in range(B):
            if beta[b] == 0.0:
                continue
            p, o, n = int(partner[b]), int(offset[b]), int(length[b])
            inside = (centre >= o) & (centre < o + n)  # (T,)
            source = torch.floor((centre - o) / hop).long().clamp(0, num_frames - 1)  # (T,) partner frame
            mine, theirs = tgt[b], tgt[p][source]  # (T, N) each
            swap = (inside[:, None] & (uni[b] < beta[b]) & (mine != IGNORE_INDEX) & (theirs != IGNORE_INDEX))
            new[b] = torch.where(swap, theirs, mine)
        out_targets.append(new)
    return out, tuple(out_targets), gain, beta
