"""Training-time waveform augmentation: token mixing (SPEAR.md section 7) and noise mixing.

Token mixing: `kernels.token_mix` mixes another clip of the batch into ~mixing.token_mix_prob of the
clips at an SNR in [snr_min_db, snr_max_db] over a partial or full overlap, and swaps each (frame,
codebook) target token inside the overlap for the partner's with probability beta.
Noise mixing (targets unchanged): ~mixing.noise_prob of the clips get noise added over their valid
samples at an SNR in [noise_snr_min_db, noise_snr_max_db]: white Gaussian noise, or ("batch") another
clip of the batch through the same kernel with no targets to swap.
Both draw everything from the given CPU generator and seed, so a step's augmentation is reproducible
(resume gives the same batches). Never used in evaluation: the trainer calls this only for training.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import torch

from kernels.token_mix import TokenMixPlan, draw_token_mix_plan, token_mix
from spear_fast.train.config import MixingConfig


class AugmentResult(NamedTuple):
    waves: torch.Tensor  # (B, L)
    targets: dict[str, torch.Tensor]  # teacher -> (B, T, N) int64, tokens swapped where mixed
    token_mixed: int  # rows that got a partner mixed in
    noised: int  # rows that got noise


def _noise_gaussian(waves: torch.Tensor, lengths: torch.Tensor, rows: torch.Tensor, snr_db: torch.Tensor,
                    generator: torch.Generator) -> torch.Tensor:
    """Add white noise to `rows` (bool (B,)) at `snr_db` (B,) over each row's valid samples."""
    batch, num_samples = waves.shape
    valid = torch.arange(num_samples, device=waves.device)[None, :] < lengths[:, None]  # (B, L)
    power = (waves.float() ** 2 * valid).sum(1) / lengths.clamp(min=1)  # (B,) mean power of the clip
    noise = torch.randn(batch, num_samples, generator=generator).to(waves.device)  # (B, L) unit power
    scale = torch.sqrt(power * 10.0 ** (-snr_db.to(waves.device) / 10.0))  # (B,) noise std for the SNR
    scale = torch.where(rows.to(waves.device), scale, torch.zeros_like(scale))
    return (waves.float() + noise * scale[:, None] * valid).to(waves.dtype)


def augment_batch(waves: torch.Tensor, lengths: torch.Tensor, targets: Mapping[str, torch.Tensor],
                  frame_rates: Mapping[str, float], config: MixingConfig, generator: torch.Generator,
                  seed: int) -> AugmentResult:
    """waves (B, L) float, lengths (B,) samples, targets: teacher -> (B, T, N) int (-100 = ignore),
    frame_rates: teacher -> Hz. Returns the augmented batch (inputs are not modified)."""
    names = list(targets)
    out_targets = dict(targets)
    token_mixed = noised = 0
    if config.token_mix_prob > 0 and waves.shape[0] >= 2:
        plan = draw_token_mix_plan(lengths, generator, prob=config.token_mix_prob,
                                   snr_range=(config.snr_min_db, config.snr_max_db),
                                   overlap_range=(config.overlap_min, config.overlap_max),
                                   full_overlap_prob=config.full_overlap_prob)
        token_mixed = int((plan.partner >= 0).sum())
        if token_mixed:
            result = token_mix(waves, lengths, plan, tuple(targets[n] for n in names),
                               tuple(float(frame_rates[n]) for n in names), seed)
            waves = result.waves
            out_targets = dict(zip(names, result.targets))
    if config.noise_prob > 0:
        batch = waves.shape[0]
        chosen = torch.rand(batch, generator=generator) < config.noise_prob  # (B,)
        snr = config.noise_snr_min_db + torch.rand(batch, generator=generator, dtype=torch.float64) * (
            config.noise_snr_max_db - config.noise_snr_min_db)  # (B,)
        if config.noise_kind == "gaussian":
            noised = int(chosen.sum())
            if noised:
                waves = _noise_gaussian(waves, lengths, chosen, snr, generator)
        elif batch >= 2:
            # another clip of the batch over the whole primary (clipped to the partner's length)
            partner = (torch.rand(batch, generator=generator) * (batch - 1)).long().clamp(max=batch - 2)  # (B,)
            partner = partner + (partner >= torch.arange(batch)).long()  # skip the row itself
            host_lengths = lengths.cpu()
            overlap = torch.minimum(host_lengths, host_lengths[partner])  # (B,)
            chosen &= overlap > 0
            noised = int(chosen.sum())
            if noised:
                device = lengths.device
                plan = TokenMixPlan(partner=torch.where(chosen, partner, -1).to(device),
                                    offset=torch.zeros(batch, dtype=torch.int64, device=device),
                                    length=torch.where(chosen, overlap, 0).to(device),
                                    snr_db=snr.float().to(device))
                waves = token_mix(waves, lengths, plan, (), (), seed + 1).waves
    return AugmentResult(waves=waves, targets=out_targets, token_mixed=token_mixed, noised=noised)
