"""Token mixing (kernels/token_mix.py): the Triton kernels (under TRITON_INTERPRET=1 here) and the
torch twin against each other and against a float64 by-hand reference written from SPEAR.md
section 7, plus the plan drawer, validation, torch.compile and AOT compilation for sm_80 / sm_90."""
from __future__ import annotations

import math

import pytest
import torch

from kernels._backend import HAS_TRITON
from kernels.token_mix import (
    IGNORE_INDEX,
    TokenMixPlan,
    draw_token_mix_plan,
    hash_uniforms,
    teacher_key,
    token_mix,
    token_mix_torch,
)
from kernels.oracles import token_mix_float64
from kernels.oracles import uniforms_clear_of_beta as uniforms_away_from

SR = 16000
RATES = (50.0, 25.0)  # two teachers: 320 and 640 samples per frame

needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")


# ------------------------------------------------------------------------------------------------
# Inputs and the by-hand reference
# ------------------------------------------------------------------------------------------------


def make_batch(gen: torch.Generator, lengths: list[int], dtype=torch.float32, codebooks=(3, 2)):
    """Random waves (B, L) with zeroed padding, per-row random scales, and two teachers' targets
    whose frames past each row's audio are ignored (-100)."""
    B, L = len(lengths), max(lengths)
    lens = torch.tensor(lengths)
    scale = torch.rand(B, 1, generator=gen) * 2 + 0.1  # (B, 1) rows of different loudness
    waves = torch.randn(B, L, generator=gen) * scale
    waves = waves.masked_fill(torch.arange(L)[None, :] >= lens[:, None], 0.0).to(dtype)
    targets = []
    for rate, n in zip(RATES, codebooks):
        hop = SR / rate
        T = math.ceil(L / hop)
        tgt = torch.randint(0, 256, (B, T, n), generator=gen)
        valid_frames = torch.ceil(lens / hop).long()  # (B,)
        tgt = tgt.masked_fill(torch.arange(T)[None, :, None] >= valid_frames[:, None, None], IGNORE_INDEX)
        targets.append(tgt)
    return waves, lens, tuple(targets)


def make_plan(partner, offset, length, snr) -> TokenMixPlan:
    return TokenMixPlan(
        torch.tensor(partner, dtype=torch.int64),
        torch.tensor(offset, dtype=torch.int64),
        torch.tensor(length, dtype=torch.int64),
        torch.tensor(snr, dtype=torch.float32),
    )


def by_hand(waves, plan, targets, rates, uniforms):
    """Float64 loops straight from the spec: powers, gain, beta = g^2 Q / (P + g^2 Q), frames by
    centre, aligned partner frame by the partner sample under the centre. Returns (waves float64,
    targets, gain, beta)."""
    w = waves.double()
    out = w.clone()
    B = w.shape[0]
    gain = [0.0] * B
    beta = [0.0] * B
    for b in range(B):
        p, o, n, snr = (plan[0][b].item(), plan[1][b].item(), plan[2][b].item(), plan[3][b].item())
        if p < 0 or n == 0:
            continue
        P = sum(v * v for v in w[b, o:o + n].tolist())
        Q = sum(v * v for v in w[p, :n].tolist())
        if P == 0 or Q == 0:
            continue
        g = math.sqrt(P * 10 ** (-snr / 10) / Q)
        gain[b] = g
        beta[b] = g * g * Q / (P + g * g * Q)
        out[b, o:o + n] = w[b, o:o + n] + g * w[p, :n]
    out_targets = []
    for tgt, rate, uni in zip(targets, rates, uniforms):
        new = tgt.clone()
        hop = SR / rate
        T, N = tgt.shape[1:]
        for b in range(B):
            p, o, n = plan[0][b].item(), plan[1][b].item(), plan[2][b].item()
            if beta[b] == 0.0:
                continue
            for f in range(T):
                centre = (f + 0.5) * hop
                if not o <= centre < o + n:
                    continue
                g_frame = math.floor((centre - o) / hop)
                for c in range(N):
                    mine, theirs = tgt[b, f, c].item(), tgt[p, g_frame, c].item()
                    if uni[b, f, c].item() < beta[b] and mine != IGNORE_INDEX and theirs != IGNORE_INDEX:
                        new[b, f, c] = theirs
        out_targets.append(new)
    return out, tuple(out_targets), torch.tensor(gain, dtype=torch.float64), torch.tensor(beta, dtype=torch.float64)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def expected_beta(plan: TokenMixPlan) -> torch.Tensor:
    return 1.0 / (1.0 + 10 ** (plan.snr_db.double() / 10))


# A plan exercising: a cycle (0 <-> 1, both mixed: read-before-write), a partial overlap at a delay,
# a full-length overlap, an unmixed row, a partner shorter than the primary, odd lengths.
LENGTHS = [997, 801, 640, 513, 997]
PLAN = ([1, 0, -1, 4, 2], [133, 0, 0, 0, 301], [401, 801, 0, 513, 640], [-4.5, 3.25, 0.0, 0.5, -1.0])


# ------------------------------------------------------------------------------------------------
# Correctness against the by-hand reference, and Triton vs twin parity
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 1e-2)])
@pytest.mark.parametrize("path", ["twin", pytest.param("triton", marks=needs_triton)])
def test_matches_by_hand_with_explicit_uniforms(seed, path, dtype, tol):
    gen = torch.Generator().manual_seed(seed)
    waves, lens, targets = make_batch(gen, LENGTHS, dtype)
    plan = make_plan(*PLAN)
    uniforms = uniforms_away_from(gen, targets, expected_beta(plan) * (plan.partner >= 0))
    ref_w, ref_t, ref_g, ref_b = by_hand(waves, plan, targets, RATES, uniforms)
    if path == "triton":
        out = token_mix(waves, lens, plan, targets, RATES, seed, uniforms=uniforms, use_triton=True)
    else:
        out = token_mix_torch(waves, lens, plan, targets, RATES, seed, uniforms=uniforms)
    assert out.waves.dtype == dtype and out.waves.shape == waves.shape
    assert rel_err(out.waves, ref_w) < tol
    assert rel_err(out.gain, ref_g) < 1e-5 and rel_err(out.beta, ref_b) < 1e-5
    for got, want in zip(out.targets, ref_t):
        assert got.dtype == want.dtype
        assert torch.equal(got, want)
    # Something actually happened: some tokens swapped, and each swap came from the partner.
    assert sum(int((g != t).sum()) for g, t in zip(out.targets, targets)) > 0


def test_float64_oracle_matches_by_hand(seed):
    """kernels.oracles.token_mix_float64 (one row at a time, vectorised over frames; what the GPU
    check compares the kernels with at full size) against the per-entry loops above."""
    gen = torch.Generator().manual_seed(seed)
    waves, lens, targets = make_batch(gen, LENGTHS, codebooks=(3, 5))
    waves[4, 301:941] = 0.0  # row 4's overlap window silent: no mixing, no swaps
    plan = make_plan(*PLAN)
    uniforms = tuple(torch.rand(t.shape, generator=gen) for t in targets)  # any draws: both take the same
    want_w, want_t, want_g, want_b = by_hand(waves, plan, targets, RATES, uniforms)
    got_w, got_t, got_g, got_b = token_mix_float64(waves, plan, targets, RATES, uniforms, sample_rate=SR)
    assert got_w.dtype == torch.float64 and rel_err(got_w, want_w) < 1e-12
    assert rel_err(got_g, want_g) < 1e-12 and rel_err(got_b, want_b) < 1e-12
    assert got_g[4] == 0 and got_g[0] > 0
    for got, want, original in zip(got_t, want_t, targets):
        assert torch.equal(got, want)
        assert not torch.equal(got, original)  # the plan swaps tokens in both teachers


@needs_triton
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 1e-2)])
def test_triton_matches_twin_with_seed(seed, dtype, tol):
    gen = torch.Generator().manual_seed(seed)
    waves, lens, targets = make_batch(gen, LENGTHS, dtype)
    plan = make_plan(*PLAN)
    triton_out = token_mix(waves, lens, plan, targets, RATES, seed, use_triton=True)
    twin_out = token_mix_torch(waves, lens, plan, targets, RATES, seed)
    assert rel_err(triton_out.waves, twin_out.waves) < tol
    assert rel_err(triton_out.gain, twin_out.gain) < 1e-5
    assert torch.equal(triton_out.beta, twin_out.beta)  # beta is a function of the SNR only
    for a, b in zip(triton_out.targets, twin_out.targets):
        assert torch.equal(a, b)  # same hash, same beta -> the same swaps, bit for bit


def test_cpu_dispatch_is_the_twin(seed):
    gen = torch.Generator().manual_seed(seed)
    waves, lens, targets = make_batch(gen, LENGTHS)
    plan = make_plan(*PLAN)
    a = token_mix(waves, lens, plan, targets, RATES, seed, use_triton=False)
    b = token_mix_torch(waves, lens, plan, targets, RATES, seed)
    assert torch.equal(a.waves, b.waves) and all(torch.equal(x, y) for x, y in zip(a.targets, b.targets))


def test_unchecked_call_matches_the_checked_one(seed):
    """check=False (the trainer's call, with a plan drawn from the same lengths) skips the checks only."""
    gen = torch.Generator().manual_seed(seed)
    waves, lens, targets = make_batch(gen, LENGTHS)
    plan = draw_token_mix_plan(lens, gen, prob=1.0, check=False)
    a = token_mix(waves, lens, plan, targets, RATES, seed)
    b = token_mix(waves, lens, plan, targets, RATES, seed, check=False)
    assert torch.equal(a.waves, b.waves) and all(torch.equal(x, y) for x, y in zip(a.targets, b.targets))
    assert torch.equal(a.gain, b.gain) and torch.equal(a.beta, b.beta)


@pytest.mark.parametrize("path", ["twin", pytest.param("triton", marks=needs_triton)])
def test_achieved_snr_and_untouched_outside(seed, path):
    gen = torch.Generator().manual_seed(seed)
    waves, lens, targets = make_batch(gen, LENGTHS)
    plan = make_plan(*PLAN)
    run = (lambda **kw: token_mix(**kw, use_triton=True)) if path == "triton" else token_mix_torch
    out = run(waves=waves, lengths=lens, plan=plan, targets=targets, frame_rates=RATES, seed=seed)
    added = out.waves.double() - waves.double()  # (B, L) = g * partner inside the overlap
    for b, (p, o, n, snr) in enumerate(zip(*PLAN)):
        inside = torch.zeros(waves.shape[1], dtype=torch.bool)
        if p >= 0:
            inside[o:o + n] = True
        assert torch.equal(out.waves[b, ~inside], waves[b, ~inside])  # bit-exact outside
        if p < 0:
            assert out.gain[b] == 0 and out.beta[b] == 0
            assert all(torch.equal(t[b], s[b]) for t, s in zip(out.targets, targets))
            continue
        primary = waves[b, o:o + n].double()
        achieved = 10 * math.log10((primary**2).sum().item() / (added[b, o:o + n] ** 2).sum().item())
        assert abs(achieved - snr) < 1e-3
        # The partner's power share in the mixture's overlap equals beta.
        partner_power = (added[b, o:o + n] ** 2).sum().item()
        share = partner_power / (partner_power + (primary**2).sum().item())
        assert abs(share - out.beta[b].item()) < 1e-5
        # Frames whose centre is outside the overlap keep their tokens.
        for tgt, new, rate in zip(targets, out.targets, RATES):
            hop = SR / rate
            centres = (torch.arange(tgt.shape[1]) + 0.5) * hop
            outside = (centres < o) | (centres >= o + n)
            assert torch.equal(new[b, outside], tgt[b, outside])


def test_swap_rate_matches_beta_twin(seed):
    """Over many draws the empirical swap rate is beta (binomial, 5 sigma)."""
    gen = torch.Generator().manual_seed(seed)
    B, L, T, N = 8, 16000 * 4, 200, 16  # 4 s rows at 50 Hz
    waves = torch.randn(B, L, generator=gen)
    lens = torch.full((B,), L)
    targets = torch.randint(0, 256, (B, T, N), generator=gen)
    snr = torch.rand(B, generator=gen) * 10 - 5
    plan = TokenMixPlan(torch.roll(torch.arange(B), 1), torch.zeros(B, dtype=torch.long), lens.clone(), snr)
    out = token_mix_torch(waves, lens, plan, (targets,), (50.0,), seed)
    partner_tokens = targets[plan.partner]  # full overlap, zero offset: frame f aligns with f
    differ = partner_tokens != targets  # (B, T, N) entries where a swap is visible
    swapped = out.targets[0] == partner_tokens
    assert torch.equal(out.targets[0][~swapped], targets[~swapped])  # no other values appear
    for b in range(B):
        n = int(differ[b].sum())
        rate = (swapped[b] & differ[b]).sum().item() / n
        beta = out.beta[b].item()
        assert abs(beta - 1 / (1 + 10 ** (snr[b].item() / 10))) < 1e-6
        assert abs(rate - beta) < 5 * math.sqrt(beta * (1 - beta) / n)


@needs_triton
def test_swap_rate_matches_beta_triton(seed):
    gen = torch.Generator().manual_seed(seed)
    B, L, T, N = 3, 16000, 50, 16  # 800 tokens a row: several program blocks
    waves = torch.randn(B, L, generator=gen)
    lens = torch.full((B,), L)
    targets = torch.randint(0, 256, (B, T, N), generator=gen)
    plan = make_plan([1, 0, 0], [0, 0, 4001], [L, L, 8000], [0.0, -3.0, 1.0])
    out = token_mix(waves, lens, plan, (targets,), (50.0,), seed, use_triton=True)
    twin = token_mix_torch(waves, lens, plan, (targets,), (50.0,), seed)
    assert torch.equal(out.targets[0], twin.targets[0])  # bit-exact across blocks and offsets
    partner_tokens = targets[plan.partner]
    differ = partner_tokens != targets
    swapped = (out.targets[0] == partner_tokens) & differ
    for b in range(2):  # rows 0 and 1: full overlap at offset 0, frame f aligns with frame f
        n = int(differ[b].sum())
        beta = out.beta[b].item()
        assert abs(swapped[b].sum().item() / n - beta) < 5 * math.sqrt(beta * (1 - beta) / n)


def test_hash_uniforms_are_uniform_and_distinct_per_key():
    """Kolmogorov-Smirnov against U(0, 1) (critical value 1.95 / sqrt(n) at alpha = 0.1 %), and
    different seeds / teachers / rows give uncorrelated draws."""
    flat = torch.arange(50_000)[None, :]
    rows = torch.arange(4)[:, None]
    u = hash_uniforms(teacher_key(12345, 0), rows, flat)  # (4, 50000)
    assert u.min() >= 0 and u.max() < 1
    values, _ = u.flatten().double().sort()
    n = values.numel()
    ecdf = torch.arange(1, n + 1, dtype=torch.float64) / n
    assert (ecdf - values).abs().max().item() < 1.95 / math.sqrt(n)
    others = [u[1], hash_uniforms(teacher_key(12346, 0), rows, flat)[0], hash_uniforms(teacher_key(12345, 1), rows, flat)[0]]
    for other in others:
        corr = torch.corrcoef(torch.stack([u[0], other]).double())[0, 1].abs().item()
        assert corr < 5 / math.sqrt(flat.numel())
    assert teacher_key(2**40 + 7, 0) != teacher_key(7, 0)  # the high half of the seed counts


# ------------------------------------------------------------------------------------------------
# Edge cases
# ------------------------------------------------------------------------------------------------


def edge_paths():
    return ["twin", pytest.param("triton", marks=needs_triton)]


def run_path(path, *args, **kwargs):
    if path == "triton":
        return token_mix(*args, **kwargs, use_triton=True)
    return token_mix_torch(*args, **kwargs)


@pytest.mark.parametrize("path", edge_paths())
def test_silent_partner_silent_primary_zero_length(seed, path):
    gen = torch.Generator().manual_seed(seed)
    waves, lens, targets = make_batch(gen, [999, 700, 999, 640, 333])
    waves[1] = 0.0  # silent partner of row 0
    waves[2, 100:500] = 0.0  # row 2's overlap window silent (silent primary)
    # row 0 <- silent 1; row 2 (silent window) <- 3; row 3: zero-length overlap with an offset past
    # its end; row 4 <- 0 at an odd offset reaching the last sample.
    plan = make_plan([1, -1, 3, 4, 0], [10, 0, 100, 5000, 1], [600, 0, 400, 0, 332], [1.0, 0.0, 2.0, 0.0, -2.0])
    out = run_path(path, waves, lens, plan, targets, RATES, seed)
    assert torch.isfinite(out.waves).all() and torch.isfinite(out.gain).all() and torch.isfinite(out.beta).all()
    for b in range(4):
        assert out.gain[b] == 0 and out.beta[b] == 0
        assert torch.equal(out.waves[b], waves[b])
        assert all(torch.equal(t[b], s[b]) for t, s in zip(out.targets, targets))
    assert out.gain[4] > 0 and 0 < out.beta[4] < 1
    assert not torch.equal(out.waves[4, 1:333], waves[4, 1:333])


@pytest.mark.parametrize("path", edge_paths())
def test_single_row_and_empty_targets(seed, path):
    gen = torch.Generator().manual_seed(seed)
    waves = torch.randn(1, 171, generator=gen)
    lens = torch.tensor([171])
    empty = torch.empty((1, 0, 4), dtype=torch.int64)
    plan = make_plan([-1], [0], [0], [0.0])
    out = run_path(path, waves, lens, plan, (empty,), (50.0,), seed)
    assert torch.equal(out.waves, waves) and out.targets[0].shape == (1, 0, 4)
    # a single row can never be mixed by the drawer
    drawn = draw_token_mix_plan(lens, torch.Generator().manual_seed(seed), prob=1.0)
    assert drawn.partner.tolist() == [-1]


@pytest.mark.parametrize("path", edge_paths())
def test_empty_batch(path):
    waves = torch.empty(0, 160)
    out = run_path(path, waves, torch.empty(0, dtype=torch.long), make_plan([], [], [], []),
                   (torch.empty(0, 1, 2, dtype=torch.long),), (50.0,), 0)
    assert out.waves.shape == (0, 160) and out.targets[0].shape == (0, 1, 2) and out.gain.shape == (0,)


@pytest.mark.parametrize("path", edge_paths())
def test_ignored_tokens_never_swap_in_or_out(seed, path):
    gen = torch.Generator().manual_seed(seed)
    waves, lens, targets = make_batch(gen, [960, 960])
    t = targets[0].clone()
    t[1] = IGNORE_INDEX  # the partner is all ignored: nothing may come in
    t[0, 5:10] = IGNORE_INDEX  # ignored primary frames stay ignored
    plan = make_plan([1, 0], [0, 0], [960, 960], [-5.0, -5.0])
    uniforms = (torch.zeros_like(t, dtype=torch.float32),)  # every draw below beta
    out = run_path(path, waves, lens, plan, (t,), (50.0,), seed, uniforms=uniforms)
    assert torch.equal(out.targets[0][0], t[0])
    assert torch.equal(out.targets[0][1], t[1])


def test_int32_int16_targets_and_bf16_twin(seed):
    gen = torch.Generator().manual_seed(seed)
    waves, lens, targets = make_batch(gen, LENGTHS)
    plan = make_plan(*PLAN)
    ref = token_mix_torch(waves, lens, plan, targets, RATES, seed)
    for dtype in (torch.int32, torch.int16):
        out = token_mix_torch(waves, lens, plan, tuple(t.to(dtype) for t in targets), RATES, seed)
        assert all(o.dtype == dtype and torch.equal(o.long(), r) for o, r in zip(out.targets, ref.targets))
    out = token_mix_torch(waves.bfloat16(), lens, plan, targets, RATES, seed)
    assert out.waves.dtype == torch.bfloat16 and rel_err(out.waves, ref.waves) < 1e-2


def test_seed_determinism(seed):
    gen = torch.Generator().manual_seed(seed)
    waves, lens, targets = make_batch(gen, [16000, 12001, 16000])  # ~1000 draws in the overlaps
    plan = make_plan([1, 2, 0], [0, 4000, 1], [12001, 8000, 15999], [0.0, 1.0, -1.0])
    a = token_mix_torch(waves, lens, plan, targets, RATES, seed)
    b = token_mix_torch(waves, lens, plan, targets, RATES, seed)
    c = token_mix_torch(waves, lens, plan, targets, RATES, seed + 1)
    assert all(torch.equal(x, y) for x, y in zip(a.targets, b.targets))
    assert any(not torch.equal(x, y) for x, y in zip(a.targets, c.targets))
    assert torch.equal(a.waves, c.waves)  # the seed drives the swaps only


# ------------------------------------------------------------------------------------------------
# Validation
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(partner=[7, 0, -1, 4, 2]), r"row 0: plan.partner must be -1 or a row in \[0, 5\), found 7"),
        (dict(partner=[1, 1, -1, 4, 2]), r"row 1: plan.partner must be another row.*found 1"),
        (dict(length=[-3, 801, 0, 513, 640]), r"row 0: plan.length must be >= 0, found -3"),
        (dict(offset=[133, 0, 0, 0, 400]), r"row 4: plan.offset \+ plan.length must be <= the row's length, found 1040"),
        (dict(offset=[-1, 0, 0, 0, 301]), r"row 0: plan.offset must be >= 0, found -1"),
        (dict(length=[401, 801, 0, 513, 900], offset=[133, 0, 0, 0, 0]), r"row 4: plan.length must be <= the partner's length, found 900"),
    ],
)
def test_invalid_plan_names_row_and_value(change, message):
    gen = torch.Generator().manual_seed(0)
    waves, lens, targets = make_batch(gen, LENGTHS)
    fields = dict(zip(("partner", "offset", "length", "snr"), PLAN))
    fields.update(change)
    plan = make_plan(fields["partner"], fields["offset"], fields["length"], fields["snr"])
    with pytest.raises(ValueError, match=message):
        token_mix(waves, lens, plan, targets, RATES, 0)


def test_invalid_shapes_and_dtypes():
    gen = torch.Generator().manual_seed(0)
    waves, lens, targets = make_batch(gen, LENGTHS)
    plan = make_plan(*PLAN)
    with pytest.raises(ValueError, match=r"waves must be \(B, L\), found shape \(4985,\)"):
        token_mix(waves.flatten(), lens, plan, targets, RATES, 0)
    with pytest.raises(ValueError, match=r"lengths must be \(5,\).*found shape \(4,\)"):
        token_mix(waves, lens[:4], plan, targets, RATES, 0)
    with pytest.raises(ValueError, match=r"row 1: lengths must lie in \[0, 997\], found 2000"):
        token_mix(waves, torch.tensor([997, 2000, 640, 513, 997]), plan, targets, RATES, 0)
    with pytest.raises(ValueError, match=r"2 targets tensors but 1 frame_rates"):
        token_mix(waves, lens, plan, targets, RATES[:1], 0)
    with pytest.raises(ValueError, match=r"targets\[1\] must be int64, int32 or int16.*torch.float32"):
        token_mix(waves, lens, plan, (targets[0], targets[1].float()), RATES, 0)
    with pytest.raises(ValueError, match=r"targets\[0\] must be \(5, T, N\), found shape \(5, 4\)"):
        token_mix(waves, lens, plan, (targets[0][..., 0], targets[1]), RATES, 0)
    with pytest.raises(ValueError, match=r"frame_rates\[1\] must be a positive number of Hz, found -25.0"):
        token_mix(waves, lens, plan, targets, (50.0, -25.0), 0)
    with pytest.raises(ValueError, match=r"uniforms\[0\] must be a float tensor of shape"):
        token_mix(waves, lens, plan, targets, RATES, 0, uniforms=(targets[0], targets[1].float()))
    with pytest.raises(ValueError, match=r"waves must be float32, float16 or bfloat16, found torch.float64"):
        token_mix(waves.double(), lens, plan, targets, RATES, 0)


# ------------------------------------------------------------------------------------------------
# The plan drawer
# ------------------------------------------------------------------------------------------------


def test_draw_plan_ranges_and_probability(seed):
    gen = torch.Generator().manual_seed(seed)
    B = 4000
    lens = torch.randint(1000, 48000, (B,), generator=gen)
    prob, full_prob, snr_range, overlap_range = 0.3, 0.4, (-5.0, 5.0), (0.2, 0.5)
    plan = draw_token_mix_plan(lens, torch.Generator().manual_seed(seed), prob, snr_range, overlap_range, full_prob)
    again = draw_token_mix_plan(lens, torch.Generator().manual_seed(seed), prob, snr_range, overlap_range, full_prob)
    assert all(torch.equal(a, b) for a, b in zip(plan, again))
    mixed = plan.partner >= 0
    n = int(mixed.sum())
    assert abs(n / B - prob) < 5 * math.sqrt(prob * (1 - prob) / B)
    assert plan.partner.dtype == plan.offset.dtype == plan.length.dtype == torch.int64
    assert plan.snr_db.dtype == torch.float32
    rows = torch.arange(B)[mixed]
    partner, offset, length, snr = (t[mixed] for t in plan)
    assert (partner != rows).all() and (partner >= 0).all() and (partner < B).all()
    assert (snr >= snr_range[0]).all() and (snr <= snr_range[1]).all() and snr.std() > 2.0
    own, theirs = lens[rows], lens[partner]
    assert (offset >= 0).all() and (offset + length <= own).all() and (length <= theirs).all() and (length > 0).all()
    full = length == torch.minimum(own, theirs)
    frac = length.double() / own.double()
    partial_ok = (frac >= overlap_range[0] - 1 / own) & (frac <= overlap_range[1] + 1 / own)
    assert (full | partial_ok).all()
    # The full-length share is full_prob plus the partial draws clipped by a short partner.
    clipped = (torch.round(overlap_range[0] * own.double()) > theirs).double().mean().item()
    share = full.double().mean().item()
    assert full_prob - 0.07 <= share <= full_prob + clipped + 0.07  # ~5 sigma at ~1200 mixed rows
    # Delays spread over the allowed range (not always 0).
    slack = own - length
    assert (offset[slack > 1000] > 0).double().mean() > 0.9
    # Unmixed rows are inert.
    assert (plan.length[~mixed] == 0).all() and (plan.offset[~mixed] == 0).all()
    # And a drawn plan is valid for token_mix.
    waves = torch.randn(8, 3000, generator=gen)
    small = draw_token_mix_plan(torch.randint(1, 3001, (8,), generator=gen), gen, prob=1.0)
    token_mix_torch(waves, torch.full((8,), 3000), small, (), (), seed)


def test_draw_plan_rejects_bad_arguments():
    lens = torch.tensor([100, 200])
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match=r"prob must be in \[0, 1\], found 1.5"):
        draw_token_mix_plan(lens, gen, prob=1.5)
    with pytest.raises(ValueError, match=r"overlap_range .* found \(0.6, 0.2\)"):
        draw_token_mix_plan(lens, gen, overlap_range=(0.6, 0.2))
    with pytest.raises(ValueError, match=r"lengths must be \(B,\), found shape \(1, 2\)"):
        draw_token_mix_plan(lens[None], gen)
    no_mix = draw_token_mix_plan(lens, gen, prob=0.0)
    assert (no_mix.partner == -1).all()


# ------------------------------------------------------------------------------------------------
# torch.compile and AOT compilation
# ------------------------------------------------------------------------------------------------


class _Mixer(torch.nn.Module):
    def forward(self, waves, lengths, partner, offset, length, snr, t50, t25):
        out = token_mix(waves, lengths, TokenMixPlan(partner, offset, length, snr), (t50, t25), RATES, 11)
        return out.waves * 2.0, out.targets[0] + 1, out.targets[1], out.beta


def test_torch_compile_fullgraph(seed):
    gen = torch.Generator().manual_seed(seed)
    waves, lens, targets = make_batch(gen, LENGTHS)
    plan = make_plan(*PLAN)
    compiled = torch.compile(_Mixer(), fullgraph=True, backend="aot_eager")
    got = compiled(waves, lens, *plan, *targets)
    ref = token_mix_torch(waves, lens, plan, targets, RATES, 11)
    assert torch.equal(got[0], ref.waves * 2.0)
    assert torch.equal(got[1], ref.targets[0] + 1) and torch.equal(got[2], ref.targets[1])
    assert torch.equal(got[3], ref.beta)


def test_opcheck_schema_and_fake():
    gen = torch.Generator().manual_seed(1)
    waves, lens, targets = make_batch(gen, LENGTHS)
    args = (waves, lens, *make_plan(*PLAN), list(targets), list(RATES), 3, SR, [], False, False, True)
    torch.library.opcheck(torch.ops.spear.token_mix.default, args, test_utils=("test_schema", "test_faketensor"))


def aot_jobs() -> list:
    """Every config the launcher can pick: 3 wave dtypes x 2 wave kernels, 3 token dtypes x (uniforms
    or the hash), at the GPU block sizes."""
    import importlib

    from kernels._aot import CompileJob

    tm = importlib.import_module("kernels.token_mix")  # the module: `kernels.token_mix` is also the op's name

    plan_ptrs = dict(partner_ptr="*i64", offset_ptr="*i64", length_ptr="*i64")
    jobs = []
    for wave in ("*fp32", "*fp16", "*bf16"):
        power = dict(waves_ptr=wave, **plan_ptrs, power_ptr="*fp32", stride_row="i32", n_chunks="i32",
                     BLOCK="constexpr", ITERS="constexpr")
        jobs.append(CompileJob("_overlap_power_kernel", power, dict(BLOCK=tm._WAVE_BLOCK, ITERS=tm._POWER_ITERS),
                               tm._NUM_WARPS))
        mix = dict(waves_ptr=wave, out_ptr=wave, **plan_ptrs, power_ptr="*fp32", ratio_ptr="*fp32",
                   beta_snr_ptr="*fp32", gain_ptr="*fp32", beta_ptr="*fp32", L="i32", stride_row="i32",
                   n_chunks="i32", BLOCK="constexpr")
        jobs.append(CompileJob("_mix_waves_kernel", mix, dict(BLOCK=tm._WAVE_BLOCK), tm._NUM_WARPS))
    for tokens in ("*i64", "*i32", "*i16"):
        for has_uniforms in (True, False):
            swap = dict(targets_ptr=tokens, out_ptr=tokens, uniforms_ptr="*fp32", partner_ptr="*i64",
                        start_ptr="*i64", end_ptr="*i64", beta_ptr="*fp32", key="i32", T="i32", N="i32",
                        BLOCK="constexpr", HAS_UNIFORMS="constexpr", IGNORE="constexpr")
            constexprs = dict(BLOCK=tm._TARGET_BLOCK, HAS_UNIFORMS=has_uniforms, IGNORE=tm.IGNORE_INDEX)
            jobs.append(CompileJob("_swap_targets_kernel", swap, constexprs, tm._NUM_WARPS))
    return jobs


@needs_triton
def test_aot_compile_every_config():
    from kernels._aot import SHARED_MEMORY_LIMIT, compile_jobs_for_gpu

    jobs = aot_jobs()
    assert len(jobs) == 12  # 6 wave-kernel configs + 6 token-kernel configs
    for capability, shared in compile_jobs_for_gpu("kernels.token_mix", jobs).items():
        assert len(shared) == len(jobs)
        assert all(0 <= s <= SHARED_MEMORY_LIMIT[capability] for s in shared), shared
