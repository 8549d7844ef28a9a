"""128-bin log-mel fbank: `spear_fast.audio.fbank` on a padded batch (one call) vs lhotse's
`Fbank(FbankConfig(num_mel_bins=128))` (the recipe's reference) called per utterance, the way a
data pipeline computes features clip by clip. Same device for both (lhotse's `device` option).

Sizes: B=16 clips of 5-10 s at 16 kHz (one full 10 s); on a GPU B=64 x 30 s.
"""
from __future__ import annotations

import pytest
import torch

from spear_fast.audio import SAMPLE_RATE, fbank

lhotse = pytest.importorskip("lhotse", reason="lhotse is the reference contender (test extra)")


def make_inputs(device: torch.device):
    batch, seconds = (64, 30.0) if device.type == "cuda" else (16, 10.0)
    generator = torch.Generator().manual_seed(0)
    max_len = int(seconds * SAMPLE_RATE)
    lengths = torch.randint(max_len // 2, max_len + 1, (batch,), generator=generator)
    lengths[0] = max_len
    waves = 0.1 * torch.randn(batch, max_len, generator=generator)
    waves = waves.masked_fill(torch.arange(max_len)[None, :] >= lengths[:, None], 0.0)
    sizes = {"B": batch, "max_seconds": seconds, "audio_seconds": float(lengths.sum()) / SAMPLE_RATE}
    return waves.to(device), lengths.to(device), sizes


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@pytest.mark.parametrize("contender", ["spear_fast_batched", "lhotse_per_utterance"])
def test_fbank_speed(benchmark, device, peak_memory, machine, contender):
    waves, lengths, sizes = make_inputs(device)
    if contender == "spear_fast_batched":
        def run():
            out = fbank(waves, lengths)
            sync(device)
            return out
    else:
        extractor = lhotse.Fbank(lhotse.FbankConfig(num_mel_bins=128, device=str(device)))
        clips = [waves[b, : int(lengths[b])] for b in range(waves.shape[0])]

        def run():
            out = [extractor.extract(clip, SAMPLE_RATE) for clip in clips]
            sync(device)
            return out

    run()  # warm-up
    benchmark.group = "fbank 128 bins"
    benchmark.extra_info.update(sizes)
    benchmark.extra_info["machine"] = machine
    benchmark.extra_info["peak_memory_bytes"] = peak_memory(run)
    benchmark.pedantic(run, rounds=10, warmup_rounds=1)
