"""Span masking (spear_fast/masking.py): coverage statistics, minimum spans, padding, output-rate
mask, channel zeroing, determinism."""
import math

import pytest
import torch

from spear_fast.masking import MaskingConfig, compute_masks, output_rate_mask


def random_batch(generator, batch, frames, min_len):
    lengths = torch.randint(min_len, frames + 1, (batch,), generator=generator)
    feats = torch.randn(batch, frames, 128, generator=generator)
    return feats, lengths


def runs(row: torch.Tensor) -> list[int]:
    """Lengths of the maximal runs of True in a 1-D bool tensor."""
    out, current = [], 0
    for value in row.tolist() + [False]:
        if value:
            current += 1
        elif current:
            out.append(current)
            current = 0
    return out


def test_time_and_channel_coverage_statistics(seed):
    generator = torch.Generator().manual_seed(seed)
    feats, lengths = random_batch(generator, 256, 1000, 400)
    result = compute_masks(feats, lengths, MaskingConfig(), generator)
    # spans of 10 frames starting at rate 0.65 / 10 per frame cover 1 - exp(-0.65) = 47.8 % of frames
    expected_time = 1 - math.exp(-0.65)
    measured = result.time_mask.sum().item() / lengths.sum().item()
    assert measured == pytest.approx(result.time_fraction)
    assert abs(measured - expected_time) < 0.03, measured
    # channels: floor(0.25 * 128 / 20 + u) = 1 span (prob 0.4) or 2 spans (prob 0.6) of 20 bins, starts
    # drawn without replacement from 109 positions; the expected union, enumerated exactly:
    starts = range(128 - 20 + 1)
    pairs = [(a, b) for a in starts for b in starts if a < b]
    union_two = sum(40 - max(0, 20 - (b - a)) for a, b in pairs) / len(pairs)
    expected_channel = (0.4 * 20 + 0.6 * union_two) / 128
    many = compute_masks(torch.randn(4096, 1, 128, generator=generator), torch.ones(4096, dtype=torch.long),
                         MaskingConfig(), generator)
    channel_fraction = many.channel_mask.float().mean().item()
    assert abs(channel_fraction - expected_channel) < 0.01, (channel_fraction, expected_channel)
    # output rate ("any" of the 2 input frames): a bit above the input-rate coverage
    out_lengths = (lengths + 1) // 2
    assert result.output_fraction == pytest.approx(result.output_mask.sum().item() / out_lengths.sum().item())
    assert measured < result.output_fraction < measured + 0.06


def test_spans_are_whole_and_padding_is_never_masked(seed):
    generator = torch.Generator().manual_seed(seed)
    feats, lengths = random_batch(generator, 32, 300, 40)  # >= 40 frames: too few spans to cover it all
    result = compute_masks(feats, lengths, MaskingConfig(), generator)
    valid = torch.arange(300)[None, :] < lengths[:, None]
    assert not (result.time_mask & ~valid).any()
    for b in range(32):
        assert all(run >= 10 for run in runs(result.time_mask[b])), "a span was cut short"
        assert result.time_mask[b].sum() < lengths[b], "an utterance was masked entirely"
    # channel spans: zero on valid frames, untouched elsewhere
    zeroed = result.channel_mask[:, None, :] & valid[:, :, None]  # (B, T, 128)
    assert (result.feats[zeroed] == 0).all()
    torch.testing.assert_close(result.feats[~zeroed], feats[~zeroed], rtol=0, atol=0)
    for b in range(32):
        assert all(run >= 20 for run in runs(result.channel_mask[b]))


@pytest.mark.parametrize("length", [5, 12, 25, 400])
def test_at_least_two_spans(length, seed):
    generator = torch.Generator().manual_seed(seed)
    config = MaskingConfig(time_prob=0.0)  # expected count 0: only the minimum of 2 spans is drawn
    feats = torch.randn(64, length + 3, 128, generator=generator)
    lengths = torch.full((64,), length)
    result = compute_masks(feats, lengths, config, generator)
    span = 10 if length >= 20 else max(1, length // 4)
    counts = result.time_mask.sum(dim=1)
    # two distinct starts of span-long spans: between span + 1 and 2 * span frames masked
    assert ((counts >= span + 1) & (counts <= 2 * span)).all(), counts
    assert not result.time_mask[:, length:].any()


def test_output_rate_mask_any_rule(seed):
    generator = torch.Generator().manual_seed(seed)
    for stride in (2, 4):
        time_mask = torch.rand(5, 23, generator=generator) < 0.3
        lengths = torch.tensor([23, 20, 9, 3, 1])
        time_mask &= torch.arange(23)[None, :] < lengths[:, None]
        out = output_rate_mask(time_mask, lengths, stride)
        out_lengths = [math.ceil(n / 2) if stride == 2 else math.ceil(math.ceil(n / 2) / 2) for n in lengths.tolist()]
        assert out.shape == (5, max(out_lengths))
        for b in range(5):
            for t in range(out.shape[1]):
                window = time_mask[b, t * stride: (t + 1) * stride]
                expected = t < out_lengths[b] and bool(window.any())
                assert bool(out[b, t]) == expected


def test_deterministic_per_seed_and_disabled(seed):
    feats, lengths = random_batch(torch.Generator().manual_seed(seed), 8, 200, 50)
    first = compute_masks(feats, lengths, MaskingConfig(), torch.Generator().manual_seed(seed))
    second = compute_masks(feats, lengths, MaskingConfig(), torch.Generator().manual_seed(seed))
    other = compute_masks(feats, lengths, MaskingConfig(), torch.Generator().manual_seed(seed + 1))
    assert torch.equal(first.time_mask, second.time_mask) and torch.equal(first.channel_mask, second.channel_mask)
    assert torch.equal(first.feats, second.feats)
    assert not torch.equal(first.time_mask, other.time_mask)
    from_ints = compute_masks(feats, lengths.tolist(), MaskingConfig(), torch.Generator().manual_seed(seed))
    assert all(torch.equal(a, b) for a, b in zip(from_ints[:5], first[:5])) and from_ints[5:] == first[5:]
    off = compute_masks(feats, lengths, MaskingConfig(enabled=False), torch.Generator().manual_seed(seed))
    assert not off.time_mask.any() and not off.channel_mask.any() and not off.output_mask.any()
    assert torch.equal(off.feats, feats) and off.time_fraction == 0.0


def test_bad_inputs_raise():
    generator = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match=r"feats must be \(B, T, 128\), got \(2, 10, 64\)"):
        compute_masks(torch.randn(2, 10, 64), torch.tensor([10, 5]), MaskingConfig(), generator)
    with pytest.raises(ValueError, match=r"feat_lengths must lie in \[0, 10\]"):
        compute_masks(torch.randn(2, 10, 128), torch.tensor([10, 11]), MaskingConfig(), generator)
    with pytest.raises(ValueError, match=r"feat_lengths must have 2 values, got 1"):
        compute_masks(torch.randn(2, 10, 128), [10], MaskingConfig(), generator)
    with pytest.raises(ValueError, match="time_prob=1.5 is out of range: must be < 1"):
        compute_masks(torch.randn(2, 10, 128), torch.tensor([10, 5]), MaskingConfig(time_prob=1.5), generator)
