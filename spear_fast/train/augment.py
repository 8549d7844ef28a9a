"""Training-time waveform augmentation: token mixing (SPEAR.md section 7) and noise mixing.

Token mixing: `kernels.token_mix` mixes another clip of the batch into ~mixing.token_mix_prob of the
clips at an SNR in [snr_min_db, snr_max_db] over a partial or full overlap, and swaps each (frame,
codebook) target token inside the overlap for the partner's with probability beta.
Noise mixing (targets unchanged): ~mixing.noise_prob of the clips get noise added over their valid
samples at an SNR in [noise_snr_min_db, noise_snr_max_db]: white Gaussian noise, or ("batch") another
clip of the batch through the same kernel with no targets to swap.
Both draw everything from the given CPU generator and seed, so a step's augmentation is reproducible
(resume gives the same batches). The plans are drawn on the host from the lengths, so with lengths
as Python ints nothing is read back from the device (spear_fast.lengths); token mixing then always
runs the kernel, which leaves unmixed rows as they are. Never used in evaluation: the trainer calls
this only for training.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import torch

from kernels.token_mix import TokenMixPlan, draw_token_mix_plan, token_mix
from spear_fast.lengths import Lengths, device_lengths, host_lengths
from spear_fast.train.config import MixingConfig


class AugmentResult(NamedTuple):
    waves: torch.Tensor  # (B, L)
    targets: dict[str, torch.Tensor]  # teacher -> (B, T, N) int64, tokens swapped where mixed
    partner: torch.Tensor | None  # (B,) int64 on the CPU, the token-mixing partner of each row (-1: none)
    noised: int  # rows that got noise

    @property
    def token_mixed(self) -> int:
        """Rows that got a partner mixed in."""
        return 0 if self.partner is None else int((self.partner >= 0).sum())


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


def augment_batch(waves: torch.Tensor, lengths: Lengths, targets: Mapping[str, torch.Tensor],
                  frame_rates: Mapping[str, float], config: MixingConfig, generator: torch.Generator,
                  seed: int) -> AugmentResult:
    """waves (B, L) float, lengths (B,) samples (valid: collation's), targets: teacher -> (B, T, N) int
    (-100 = ignore), frame_rates: teacher -> Hz. Returns the augmented batch (inputs are not modified)."""
    names = list(targets)
    out_targets = dict(targets)
    host = torch.tensor(host_lengths(lengths), dtype=torch.int64)  # (B,) on the CPU, where plans are drawn
    lengths = device_lengths(lengths, waves.device)
    mix_partner = None
    noised = 0
    if config.token_mix_prob > 0 and waves.shape[0] >= 2:
        plan = draw_token_mix_plan(host, generator, prob=config.token_mix_prob,
                                   snr_range=(config.snr_min_db, config.snr_max_db),
                                   overlap_range=(config.overlap_min, config.overlap_max),
                                   full_overlap_prob=config.full_overlap_prob, check=False)
        result = token_mix(waves, lengths, plan, tuple(targets[n] for n in names),
                           tuple(float(frame_rates[n]) for n in names), seed, check=False)
        waves = result.waves
        out_targets = dict(zip(names, result.targets))
        mix_partner = plan.partner
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
            overlap = torch.minimum(host, host[partner])  # (B,)
            chosen &= overlap > 0
            noised = int(chosen.sum())
            if noised:
                plan = TokenMixPlan(partner=torch.where(chosen, partner, -1),
                                    offset=torch.zeros(batch, dtype=torch.int64),
                                    length=torch.where(chosen, overlap, 0), snr_db=snr.float())  # on the host
                waves = token_mix(waves, lengths, plan, (), (), seed + 1, check=False).waves
    return AugmentResult(waves=waves, targets=out_targets, partner=mix_partner, noised=noised)
