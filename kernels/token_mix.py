"""Token mixing (SPEAR.md section 7): mix a partner clip into part of a primary clip at a target SNR,
and swap the primary's teacher tokens for the partner's with probability beta inside the overlap.

Semantics (the Triton kernels and the torch twin implement exactly this):

* Plan (per row b of the batch): `partner[b]` (-1 = row not mixed), `offset[b]` (first primary sample
  of the overlap), `length[b]` (overlap length; the partner contributes its samples [0, length)),
  `snr_db[b]`. Valid plan, per mixed row: 0 <= partner < B, partner != b, length >= 0, and when
  length > 0: offset >= 0, offset + length <= lengths[b], length <= lengths[partner]. Rows with
  length 0 mix nothing (any offset accepted). Anything else -> ValueError naming the row and value.
* Powers over the overlap window (squares in fp32; summed as fp32 chunk partials added in a fixed
  order by the Triton kernels, deterministic; in float64 by the twin):
  P = sum_j primary[offset + j]^2, Q = sum_j partner[j]^2, j in [0, length). The gain g solves
  g^2 Q = P 10^(-snr/10), i.e. g = sqrt(P / Q * 10^(-snr/10)); the output inside the overlap is
  primary[offset + j] + g * partner[j] (computed in fp32, rounded to the wave dtype once).
* beta = g^2 Q / (P + g^2 Q), the partner's power share after the gain; with g as above this is
  exactly 1 / (1 + 10^(snr/10)), which is how it is computed (in float64, then rounded to fp32), so
  beta never depends on a reduction order and the Triton kernel and the twin swap identical tokens.
* Silent primary or silent partner (P == 0 or Q == 0), zero-length overlap, unmixed row -> g = 0,
  beta = 0: the row's wave and targets are returned unchanged (bit-exact), never NaN.
* Frames: frame f of a teacher at rate r spans samples [f h, (f + 1) h), h = sample_rate / r; it is
  inside the overlap when its centre (f + 1/2) h lies in [offset, offset + length). Those frames
  form the range [start, end) with start = ceil(offset / h - 1/2), end = ceil((offset + length) / h
  - 1/2) (clipped to [0, T]), computed once in float64 on the host for both paths. The partner frame aligned
  with primary frame f is the one holding the partner sample under f's centre: f - start.
* Swap: entry (f, n) of a frame inside the overlap takes the partner's token targets[partner,
  f - start, n] when u < beta, u the entry's uniform draw; entries where the partner's or the
  primary's token is ignored (-100) keep the primary's token (so padding frames must be -100).
* Draws: u = (h >> 8) / 2^24 with h = mix32(mix32((f N + n) ^ key) ^ mix32(key + b)), mix32 the
  lowbias32 integer hash, key a 32-bit hash of (seed, teacher index). The same formula runs in
  Triton (uint32) and torch (int64 with exact 32-bit wrap), so both paths agree bit-exactly for a
  seed. `uniforms` (one (B, T_i, N_i) float tensor per teacher) replaces the draws, for tests.
* Out-of-place and read-before-write: every partner sample and token is read from the INPUT tensors,
  so a row that is itself mixed still lends its original audio and tokens.

Data augmentation only: no autograd (the outputs carry no gradient).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch

from kernels._backend import (
    HAS_TRITON,
    check_same_device,
    interpreting,
    prefer_triton,
    require_triton,
    triton_usable,
)
from kernels._targets import IGNORE_INDEX

TARGET_DTYPES = (torch.int64, torch.int32, torch.int16)  # signed, so -100 (ignore) fits
_MASK32 = 0xFFFFFFFF
# lowbias32 multipliers (C. Wellons' hash-prospector, bias ~0.17): a cheap bijective 32-bit hash.
_MIX_MUL_1 = 0x7FEB352D
_MIX_MUL_2 = 0x846CA68B
_GOLDEN32 = 0x9E3779B9  # 2^32 / phi: spreads the teacher index before hashing

if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _mix32(x):
        """lowbias32 on uint32 lanes (multiplication wraps mod 2^32)."""
        x = x ^ (x >> 16)
        x = x * tl.full(x.shape, 0x7FEB352D, tl.uint32)
        x = x ^ (x >> 15)
        x = x * tl.full(x.shape, 0x846CA68B, tl.uint32)
        x = x ^ (x >> 16)
        return x

    @triton.jit
    def _overlap_power_kernel(
        waves_ptr, partner_ptr, offset_ptr, length_ptr, power_ptr,
        stride_row, n_chunks,
        BLOCK: tl.constexpr, ITERS: tl.constexpr,
    ):
        """Program (row, chunk): partial sums of primary^2 and partner^2 over BLOCK * ITERS samples of
        the row's overlap, written to power[row, chunk, 0:2] (summed over chunks by the launcher,
        so the result does not depend on scheduling)."""
        row = tl.program_id(0)
        chunk = tl.program_id(1)
        partner = tl.load(partner_ptr + row)
        offset = tl.load(offset_ptr + row)
        length = tl.load(length_ptr + row)
        length = tl.where(partner >= 0, length, 0)
        partner = tl.maximum(partner, 0)
        primary_base = waves_ptr + row.to(tl.int64) * stride_row + offset
        partner_base = waves_ptr + partner.to(tl.int64) * stride_row
        acc_primary = tl.zeros((BLOCK,), dtype=tl.float32)
        acc_partner = tl.zeros((BLOCK,), dtype=tl.float32)
        first = chunk.to(tl.int64) * (BLOCK * ITERS)
        for it in tl.static_range(ITERS):
            j = first + it * BLOCK + tl.arange(0, BLOCK)  # (BLOCK,) sample index in the overlap
            inside = j < length
            x = tl.load(primary_base + j, mask=inside, other=0.0).to(tl.float32)
            y = tl.load(partner_base + j, mask=inside, other=0.0).to(tl.float32)
            acc_primary += x * x
            acc_partner += y * y
        out = power_ptr + (row.to(tl.int64) * n_chunks + chunk) * 2
        tl.store(out, tl.sum(acc_primary, axis=0))
        tl.store(out + 1, tl.sum(acc_partner, axis=0))

    @triton.jit
    def _mix_waves_kernel(
        waves_ptr, out_ptr, partner_ptr, offset_ptr, length_ptr, power_ptr, ratio_ptr, beta_snr_ptr,
        gain_ptr, beta_ptr,
        L, stride_row, n_chunks,
        BLOCK: tl.constexpr,
    ):
        """Program (row, block): the row's gain from its overlap powers (chunk partials summed in a
        fixed order), then out[row, t] = waves[row, t] + g * waves[partner, t - offset] inside the
        overlap, waves[row, t] (exact copy) outside; fp32 math, one rounding to the output dtype.
        Block 0 also writes the row's gain and beta (beta_snr where both powers are > 0, else 0)."""
        row = tl.program_id(0)
        block = tl.program_id(1)
        partner = tl.load(partner_ptr + row)
        offset = tl.load(offset_ptr + row)
        length = tl.load(length_ptr + row)
        length = tl.where(partner >= 0, length, 0)
        partner = tl.maximum(partner, 0)
        power_row = power_ptr + row.to(tl.int64) * n_chunks * 2
        p = tl.load(power_row)
        q = tl.load(power_row + 1)
        for c in range(1, n_chunks):
            p += tl.load(power_row + 2 * c)
            q += tl.load(power_row + 2 * c + 1)
        ok = tl.minimum(p, q) > 0.0  # both powers > 0 (they are sums of squares); implies a mixed row
        ratio = tl.load(ratio_ptr + row)  # 10^(-snr/10)
        gain = tl.where(ok, tl.sqrt(p * ratio / tl.where(ok, q, 1.0)), 0.0)
        if block == 0:
            tl.store(gain_ptr + row, gain)
            tl.store(beta_ptr + row, tl.where(ok, tl.load(beta_snr_ptr + row), 0.0))
        t = block * BLOCK + tl.arange(0, BLOCK)  # (BLOCK,) sample index in the row
        in_row = t < L
        x = tl.load(waves_ptr + row.to(tl.int64) * stride_row + t, mask=in_row, other=0.0)
        j = t - offset
        inside = in_row & (j >= 0) & (j < length)
        y = tl.load(waves_ptr + partner.to(tl.int64) * stride_row + j, mask=inside, other=0.0)
        mixed = (x.to(tl.float32) + gain * y.to(tl.float32)).to(x.dtype)
        tl.store(out_ptr + row.to(tl.int64) * L + t, tl.where(inside, mixed, x), mask=in_row)

    @triton.jit
    def _swap_targets_kernel(
        targets_ptr, out_ptr, uniforms_ptr, partner_ptr, start_ptr, end_ptr, beta_ptr,
        key, T, N,
        BLOCK: tl.constexpr, HAS_UNIFORMS: tl.constexpr, IGNORE: tl.constexpr,
    ):
        """Program (row, block) over the row's flattened (T, N) tokens: copy, and inside the overlap's
        frames swap in the partner's aligned token where the entry's uniform draw is below beta."""
        row = tl.program_id(0)
        TN = T * N
        e = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)  # (BLOCK,) flat index f * N + n
        in_row = e < TN
        row_base = row.to(tl.int64) * TN
        token = tl.load(targets_ptr + row_base + e, mask=in_row, other=IGNORE)
        partner = tl.load(partner_ptr + row)
        start = tl.load(start_ptr + row)
        end = tl.load(end_ptr + row)
        beta = tl.load(beta_ptr + row)
        frame = e // N
        # Unmixed rows have start == end (empty range) and beta == 0 (no draw is below it).
        inside = in_row & (frame >= start) & (frame < end)
        partner_e = e - start * N  # flat index of (frame - start, n) in the partner's row
        partner_token = tl.load(
            targets_ptr + tl.maximum(partner, 0).to(tl.int64) * TN + partner_e, mask=inside, other=IGNORE
        )
        if HAS_UNIFORMS:
            u = tl.load(uniforms_ptr + row_base + e, mask=inside, other=1.0)
        else:
            key32 = key.to(tl.uint32)
            row_key = _mix32(key32 + row.to(tl.uint32))
            h = _mix32(_mix32(e.to(tl.uint32) ^ key32) ^ row_key)
            u = (h >> 8).to(tl.float32) * (1.0 / 16777216.0)
        swap = inside & (u < beta) & (partner_token != IGNORE) & (token != IGNORE)
        tl.store(out_ptr + row_base + e, tl.where(swap, partner_token, token), mask=in_row)


class TokenMixPlan(NamedTuple):
    """Per-row mixing plan, all (B,) tensors on the waves' device."""

    partner: torch.Tensor  # int64, partner row or -1 (row not mixed)
    offset: torch.Tensor  # int64, first primary sample of the overlap
    length: torch.Tensor  # int64, overlap length in samples (partner samples [0, length))
    snr_db: torch.Tensor  # float32, primary-to-partner SNR in the overlap after the gain


class TokenMixResult(NamedTuple):
    waves: torch.Tensor  # (B, L) mixed waves, the input dtype
    targets: tuple[torch.Tensor, ...]  # one (B, T_i, N_i) per teacher, the input dtype
    gain: torch.Tensor  # (B,) fp32 gain applied to the partner (0 = row unchanged)
    beta: torch.Tensor  # (B,) fp32 swap probability (0 = row unchanged)


# ---------------------------------------------------------------------------------------------
# Plan drawing
# ---------------------------------------------------------------------------------------------


def draw_token_mix_plan(
    lengths: torch.Tensor,
    generator: torch.Generator,
    prob: float = 0.1,
    snr_range: tuple[float, float] = (-5.0, 5.0),
    overlap_range: tuple[float, float] = (0.2, 0.5),
    full_overlap_prob: float = 0.5,
    *,
    check: bool = True,
) -> TokenMixPlan:
    """Draw a plan for a batch with sample `lengths` (B,) (SPEAR.md section 7).

    Each row is mixed with probability `prob` (never with B < 2, never a row or partner of length
    0); its partner is uniform over the OTHER rows; SNR ~ U(snr_range) dB. With probability
    `full_overlap_prob` the overlap is the full length, min(len_primary, len_partner); otherwise it
    is round(frac * len_primary) with frac ~ U(overlap_range), clipped to the partner's length. The
    overlap starts at a uniform delay in [0, len_primary - length]. Every row consumes the same
    draws whatever its outcome, so a plan depends only on (generator state, lengths). The draws
    come from `generator` on the CPU; the plan lands on lengths' device (CPU lengths give a host plan,
    which `token_mix` reads without a device sync). Unmixed rows: partner -1, offset 0, length 0,
    snr 0. check=False skips the check for negative lengths (it reads them).
    """
    if lengths.dim() != 1:
        raise ValueError(f"draw_token_mix_plan: lengths must be (B,), found shape {tuple(lengths.shape)}")
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"draw_token_mix_plan: prob must be in [0, 1], found {prob}")
    if not 0.0 <= full_overlap_prob <= 1.0:
        raise ValueError(f"draw_token_mix_plan: full_overlap_prob must be in [0, 1], found {full_overlap_prob}")
    if not (0.0 <= overlap_range[0] <= overlap_range[1] <= 1.0):
        raise ValueError(f"draw_token_mix_plan: overlap_range must satisfy 0 <= lo <= hi <= 1, found {overlap_range}")
    if not snr_range[0] <= snr_range[1]:
        raise ValueError(f"draw_token_mix_plan: snr_range must satisfy lo <= hi, found {snr_range}")
    B = lengths.shape[0]
    lens = lengths.detach().to("cpu", torch.int64)  # (B,)
    if check and (lens < 0).any():
        raise ValueError(f"draw_token_mix_plan: negative length {int(lens.min())} in lengths")
    gen = dict(generator=generator, dtype=torch.float64)
    mix_u = torch.rand(B, **gen)
    partner_u = torch.rand(B, **gen)
    snr_u = torch.rand(B, **gen)
    full_u = torch.rand(B, **gen)
    frac_u = torch.rand(B, **gen)
    delay_u = torch.rand(B, **gen)

    rows = torch.arange(B)
    partner = (partner_u * max(B - 1, 1)).long().clamp(max=max(B - 2, 0))  # uniform over B - 1 rows
    partner = partner + (partner >= rows).long()  # skip the row itself
    partner = partner.clamp(max=max(B - 1, 0))
    partner_len = lens[partner] if B > 0 else lens
    frac = overlap_range[0] + frac_u * (overlap_range[1] - overlap_range[0])
    partial = torch.round(frac * lens.double()).long()
    length = torch.where(full_u < full_overlap_prob, lens, partial)
    length = torch.minimum(length, partner_len)  # (B,)
    delay = (delay_u * (lens - length + 1).double()).long()
    offset = torch.minimum(delay, lens - length)  # (B,) guard delay_u * n rounding up to n

    mixed = (mix_u < prob) & (B >= 2) & (length > 0)
    snr = snr_range[0] + snr_u * (snr_range[1] - snr_range[0])
    device = lengths.device
    return TokenMixPlan(
        partner=torch.where(mixed, partner, -1).to(device),
        offset=torch.where(mixed, offset, 0).to(device),
        length=torch.where(mixed, length, 0).to(device),
        snr_db=torch.where(mixed, snr, 0.0).to(device=device, dtype=torch.float32),
    )


# ---------------------------------------------------------------------------------------------
# Shared pieces (both paths): validation, frame ranges, gains, hash keys
# ---------------------------------------------------------------------------------------------


def _mix32_int(x: int) -> int:
    x &= _MASK32
    x ^= x >> 16
    x = (x * _MIX_MUL_1) & _MASK32
    x ^= x >> 15
    x = (x * _MIX_MUL_2) & _MASK32
    return x ^ (x >> 16)


def teacher_key(seed: int, teacher: int) -> int:
    """32-bit key of (seed, teacher index); seeds are taken modulo 2^64."""
    seed &= (1 << 64) - 1
    base = _mix32_int(_mix32_int(seed & _MASK32) ^ (seed >> 32))
    return _mix32_int(base + _GOLDEN32 * (teacher + 1))


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2^32 for int64 x in [0, 2^32) without int64 overflow: split c in 16-bit halves."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & _MASK32


def _mix32_torch(x: torch.Tensor) -> torch.Tensor:
    x = x ^ (x >> 16)
    x = _mul32(x, _MIX_MUL_1)
    x = x ^ (x >> 15)
    x = _mul32(x, _MIX_MUL_2)
    return x ^ (x >> 16)


def hash_uniforms(key: int, rows: torch.Tensor, flat_index: torch.Tensor) -> torch.Tensor:
    """The swap draws, fp32 in [0, 1): rows (R, 1) int64 and flat_index (1, E) (f * N + n) -> (R, E).

    Same formula as the Triton kernel: u = (h >> 8) / 2^24, h = mix32(mix32(e ^ key) ^ mix32(key + b)).
    """
    row_key = _mix32_torch((rows + key) & _MASK32)  # (R, 1)
    h = _mix32_torch(_mix32_torch(flat_index ^ key) ^ row_key)  # (R, E)
    return (h >> 8).to(torch.float32) * (1.0 / 16777216.0)


def _check_inputs(
    waves: torch.Tensor,
    lengths: torch.Tensor,
    plan: Sequence[torch.Tensor],
    targets: Sequence[torch.Tensor],
    frame_rates: Sequence[float],
    sample_rate: int,
    uniforms: Sequence[torch.Tensor] | None,
) -> None:
    """Shapes, dtypes and devices (no data read: usable on fake tensors too)."""
    if waves.dim() != 2:
        raise ValueError(f"token_mix: waves must be (B, L), found shape {tuple(waves.shape)}")
    if waves.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"token_mix: waves must be float32, float16 or bfloat16, found {waves.dtype}")
    B = waves.shape[0]
    names = ("lengths",) + TokenMixPlan._fields
    for name, tensor in zip(names, (lengths, *plan)):
        if tensor.shape != (B,):
            raise ValueError(f"token_mix: {name} must be ({B},) like waves' batch, found shape {tuple(tensor.shape)}")
    for name, tensor in zip(names[:4], (lengths, *plan[:3])):
        if tensor.dtype.is_floating_point or tensor.dtype == torch.bool:
            raise ValueError(f"token_mix: {name} must be an integer tensor, found {tensor.dtype}")
    if len(targets) != len(frame_rates):
        raise ValueError(f"token_mix: {len(targets)} targets tensors but {len(frame_rates)} frame_rates")
    if sample_rate <= 0:
        raise ValueError(f"token_mix: sample_rate must be positive, found {sample_rate}")
    for i, (tgt, rate) in enumerate(zip(targets, frame_rates)):
        if tgt.dim() != 3 or tgt.shape[0] != B:
            raise ValueError(f"token_mix: targets[{i}] must be ({B}, T, N), found shape {tuple(tgt.shape)}")
        if tgt.dtype not in TARGET_DTYPES:
            raise ValueError(
                f"token_mix: targets[{i}] must be int64, int32 or int16 (-100 = ignore), found {tgt.dtype}"
            )
        if tgt.shape[1] * tgt.shape[2] >= 2**31:
            raise ValueError(f"token_mix: targets[{i}] has {tgt.shape[1]} x {tgt.shape[2]} entries per row, over 2^31")
        if not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"token_mix: frame_rates[{i}] must be a positive number of Hz, found {rate}")
    if uniforms is not None:
        if len(uniforms) != len(targets):
            raise ValueError(f"token_mix: {len(uniforms)} uniforms tensors for {len(targets)} targets tensors")
        for i, (uni, tgt) in enumerate(zip(uniforms, targets)):
            if uni.shape != tgt.shape or not uni.dtype.is_floating_point:
                raise ValueError(
                    f"token_mix: uniforms[{i}] must be a float tensor of shape {tuple(tgt.shape)}, "
                    f"found {uni.dtype} {tuple(uni.shape)}"
                )
    # the plan may stay on the host whatever the waves' device (token_mix reads it there)
    tensors = {"waves": waves, "lengths": lengths}
    tensors.update({name: t for name, t in zip(TokenMixPlan._fields, plan) if t.device.type != "cpu"})
    tensors.update({f"targets[{i}]": t for i, t in enumerate(targets)})
    tensors.update({f"uniforms[{i}]": t for i, t in enumerate(uniforms or ())})
    check_same_device("token_mix", **tensors)


class _HostPlan(NamedTuple):
    """The plan on the CPU, unmixed rows normalised: partner -1, length 0, snr 0."""

    partner: torch.Tensor  # (B,) int64
    offset: torch.Tensor  # (B,) int64
    length: torch.Tensor  # (B,) int64, 0 for unmixed rows
    snr_db: torch.Tensor  # (B,) float64


def _plan_on_host(plan: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """partner, offset, length (B,) int64 and snr_db (B,) float64 on the CPU: the op's only device ->
    host transfers, two small ones for a plan on the device, none for a host plan."""
    ints = torch.stack([t.detach().to(torch.int64) for t in plan[:3]]).to("cpu")  # (3, B)
    return (*ints.unbind(0), plan[3].detach().to("cpu", torch.float64))


def _check_plan(lengths: torch.Tensor, plan: Sequence[torch.Tensor], L: int) -> None:
    """Plan values (on the host) against the batch; ValueError naming the row."""
    lens = lengths.detach().to("cpu", torch.int64)
    partner, offset, length, snr = plan
    B = lens.shape[0]

    def fail(mask: torch.Tensor, what: str, values: torch.Tensor) -> None:
        if mask.any():
            row = int(mask.nonzero()[0, 0])
            raise ValueError(f"token_mix: row {row}: {what}, found {values[row].item()}")

    fail((lens < 0) | (lens > L), f"lengths must lie in [0, {L}]", lens)
    fail((partner < -1) | (partner >= B), f"plan.partner must be -1 or a row in [0, {B})", partner)
    rows = torch.arange(B)
    fail(partner == rows, "plan.partner must be another row than the row itself", partner)
    mixed = partner >= 0
    fail(mixed & (length < 0), "plan.length must be >= 0", length)
    active = mixed & (length > 0)
    fail(active & (offset < 0), "plan.offset must be >= 0", offset)
    fail(active & (offset + length > lens), "plan.offset + plan.length must be <= the row's length", offset + length)
    partner_len = lens[partner.clamp(min=0)]
    fail(active & (length > partner_len), "plan.length must be <= the partner's length", length)
    fail(mixed & ~torch.isfinite(snr), "plan.snr_db must be finite", snr)


def _host_plan(plan: Sequence[torch.Tensor]) -> _HostPlan:
    """The plan on the host (`_plan_on_host`) with its unmixed rows normalised; reads no value."""
    partner, offset, length, snr = plan
    active = (partner >= 0) & (length > 0)
    return _HostPlan(torch.where(active, partner, -1), offset, torch.where(active, length, 0),
                     torch.where(active, snr, 0.0))


def overlap_frames(host: _HostPlan, frame_rate: float, sample_rate: int, num_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(start, end) (B,) int64 on the CPU: frames whose centre lies in [offset, offset + length);
    empty for unmixed rows. Float64, shared by both paths."""
    hop = sample_rate / frame_rate  # samples per frame
    active = host.length > 0
    start = torch.ceil(host.offset.double() / hop - 0.5).clamp(0, num_frames).long()
    end = torch.ceil((host.offset + host.length).double() / hop - 0.5).clamp(0, num_frames).long()
    end = torch.maximum(end, start)
    return torch.where(active, start, 0), torch.where(active, end, 0)


def snr_tables(host: _HostPlan) -> tuple[torch.Tensor, torch.Tensor]:
    """(ratio float64, beta_snr float32) (B,) on the CPU, 0 for unmixed rows. ratio = 10^(-snr/10)
    is the partner-to-primary power ratio the gain must reach; beta_snr = 1 / (1 + 10^(snr/10)) =
    g^2 Q / (P + g^2 Q), the swap probability of a row whose powers P, Q are both > 0."""
    active = host.length > 0
    ratio = torch.where(active, torch.pow(10.0, -host.snr_db / 10.0), 0.0)
    beta_snr = torch.where(active, 1.0 / (1.0 + torch.pow(10.0, host.snr_db / 10.0)), 0.0)
    return ratio, beta_snr.float()


# ---------------------------------------------------------------------------------------------
# Triton launcher
# ---------------------------------------------------------------------------------------------

# Tuning: the wave kernels stream memory; 1024 lanes x 4 warps is 8 fp32 lanes (two 16-byte vectors)
# per thread. The power kernel walks 16 blocks (16384 samples) per program: at 30 s x 64 rows fully
# mixed that is 64 x 30 programs, enough for 132 SMs, with few partial sums per row for the mix
# kernel to add up; the mix grid is (B, L / 1024), ~30,000 programs at that size. Interpreting, each
# program instance costs ~10 ms of Python whatever its width, so blocks stay wide enough to keep the
# program count low and narrow enough that tests on ~1000-sample rows still cross block borders.
_WAVE_BLOCK = 1024
_POWER_ITERS = 16
_TARGET_BLOCK = 1024
_NUM_WARPS = 4
_INTERP_WAVE_BLOCK = 256
_INTERP_POWER_ITERS = 2
_INTERP_TARGET_BLOCK = 256


def _kernel_sizes() -> tuple[int, int, int]:
    """(wave block, power-chunk blocks, token block) for this run: GPU sizes, or interpreter sizes."""
    if interpreting():
        return _INTERP_WAVE_BLOCK, _INTERP_POWER_ITERS, _INTERP_TARGET_BLOCK
    return _WAVE_BLOCK, _POWER_ITERS, _TARGET_BLOCK


def _token_mix_triton(
    waves: torch.Tensor,
    host: _HostPlan,
    targets: Sequence[torch.Tensor],
    frame_rates: Sequence[float],
    seed: int,
    sample_rate: int,
    uniforms: Sequence[torch.Tensor] | None,
) -> TokenMixResult:
    """Launches: one power kernel, one mix kernel (which also writes gain and beta), one swap kernel
    per teacher; the (B,) tables go to the device in two copies, nothing comes back."""
    require_triton("token_mix")
    B, L = waves.shape
    device = waves.device
    wave_block, power_iters, target_block = _kernel_sizes()
    if waves.stride(1) != 1:
        waves = waves.contiguous()
    ratio, beta_snr = snr_tables(host)
    frames = [overlap_frames(host, rate, sample_rate, t.shape[1]) for t, rate in zip(targets, frame_rates)]
    ints = torch.stack([host.partner, host.offset, host.length, *(x for f in frames for x in f)])
    ints = ints.to(device, non_blocking=True)
    floats = torch.stack([ratio.float(), beta_snr]).to(device, non_blocking=True)  # (2, B)
    partner, offset, length = ints[0], ints[1], ints[2]  # (B,) each, contiguous rows

    out_waves = torch.empty((B, L), dtype=waves.dtype, device=device)
    gain = torch.empty(B, dtype=torch.float32, device=device)
    beta = torch.empty(B, dtype=torch.float32, device=device)
    max_length = int(host.length.max()) if B > 0 else 0  # longest overlap, read on the host
    n_chunks = max(triton.cdiv(max_length, wave_block * power_iters), 1)
    powers = torch.empty((B, n_chunks, 2), dtype=torch.float32, device=device)  # chunk partials
    if B > 0:
        _overlap_power_kernel[(B, n_chunks)](
            waves, partner, offset, length, powers, waves.stride(0), n_chunks,
            BLOCK=wave_block, ITERS=power_iters, num_warps=_NUM_WARPS,
        )
        _mix_waves_kernel[(B, max(triton.cdiv(L, wave_block), 1))](
            waves, out_waves, partner, offset, length, powers, floats[0], floats[1], gain, beta,
            L, waves.stride(0), n_chunks,
            BLOCK=wave_block, num_warps=_NUM_WARPS,
        )

    out_targets = []
    for i, tgt in enumerate(targets):
        tgt = tgt.contiguous()
        _, T, N = tgt.shape
        out = torch.empty_like(tgt)
        start, end = ints[3 + 2 * i], ints[4 + 2 * i]
        uni = uniforms[i].to(torch.float32).contiguous() if uniforms is not None else beta  # unread
        key = teacher_key(seed, i)
        key_i32 = key - (1 << 32) if key >= (1 << 31) else key  # same 32 bits, fits an i32 argument
        if B > 0 and T * N > 0:
            _swap_targets_kernel[(B, triton.cdiv(T * N, target_block))](
                tgt, out, uni, partner, start, end, beta, key_i32, T, N,
                BLOCK=target_block, HAS_UNIFORMS=uniforms is not None, IGNORE=IGNORE_INDEX,
                num_warps=_NUM_WARPS,
            )
        out_targets.append(out)
    return TokenMixResult(out_waves, tuple(out_targets), gain, beta)


# ---------------------------------------------------------------------------------------------
# The torch twin (the CPU path)
# ---------------------------------------------------------------------------------------------


def _token_mix_torch(
    waves: torch.Tensor,
    host: _HostPlan,
    targets: Sequence[torch.Tensor],
    frame_rates: Sequence[float],
    seed: int,
    sample_rate: int,
    uniforms: Sequence[torch.Tensor] | None,
) -> TokenMixResult:
    B = waves.shape[0]
    device = waves.device
    rows = (host.length > 0).nonzero().flatten().tolist()
    part_list, off_list, len_list = host.partner.tolist(), host.offset.tolist(), host.length.tolist()

    # Waves: only mixed rows do work, each on its contiguous overlap slice (no index tensors, so
    # memory stays O(overlap)); typically prob * B rows.
    power_primary = torch.zeros(B, dtype=torch.float64)
    power_partner = torch.zeros(B, dtype=torch.float64)
    for b in rows:
        o, n, p = off_list[b], len_list[b], part_list[b]
        x = waves[b, o:o + n].float()  # (n,)
        y = waves[p, :n].float()  # (n,)
        power_primary[b] = torch.sum(x * x, dtype=torch.float64)  # squares in fp32 as the kernel, fp64 sum
        power_partner[b] = torch.sum(y * y, dtype=torch.float64)
    ratio, beta_snr = snr_tables(host)
    ok = (power_primary > 0) & (power_partner > 0)  # (B,) as the kernel's test: both powers > 0
    gain = torch.where(ok, torch.sqrt(power_primary * ratio / torch.where(ok, power_partner, 1.0)), 0.0).float()
    beta = torch.where(ok, beta_snr, 0.0)  # (B,) fp32, bit-identical to the kernel's
    out_waves = waves.clone()
    for b in rows:
        if not ok[b]:
            continue
        o, n, p = off_list[b], len_list[b], part_list[b]
        if waves.dtype == torch.float32:  # x + g * y in one pass, straight into the output
            torch.add(waves[b, o:o + n], waves[p, :n], alpha=gain[b].item(), out=out_waves[b, o:o + n])
        else:  # fp32 math as the kernel, one rounding to the wave dtype
            mixed = waves[b, o:o + n].float() + gain[b].item() * waves[p, :n].float()
            out_waves[b, o:o + n] = mixed.to(waves.dtype)

    # Targets: vectorised over the mixed rows' (T, N) grids.
    out_targets = []
    swap_rows = ok.nonzero().flatten()  # (M,) CPU
    swap_rows_dev = swap_rows.to(device)
    partner_dev = host.partner[swap_rows].to(device)[:, None, None]  # (M, 1, 1)
    beta_rows = beta[swap_rows].to(device)[:, None, None]  # (M, 1, 1)
    for i, (tgt, rate) in enumerate(zip(targets, frame_rates)):
        out = tgt.clone()
        _, T, N = tgt.shape
        if swap_rows.numel() > 0 and T * N > 0:
            start, end = overlap_frames(host, rate, sample_rate, T)
            start = start[swap_rows].to(device)[:, None, None]  # (M, 1, 1)
            end = end[swap_rows].to(device)[:, None, None]
            frame = torch.arange(T, device=device)[None, :, None]  # (1, T, 1)
            inside = (frame >= start) & (frame < end)  # (M, T, 1)
            partner_frame = (frame - start).clamp(0, T - 1)  # (M, T, 1) aligned partner frame
            partner_tokens = tgt[partner_dev, partner_frame, torch.arange(N, device=device)]  # (M, T, N)
            primary_tokens = tgt[swap_rows_dev]  # (M, T, N)
            if uniforms is not None:
                u = uniforms[i][swap_rows_dev].to(torch.float32)  # (M, T, N)
            else:
                flat = torch.arange(T * N, device=device)[None, :]  # (1, T*N)
                u = hash_uniforms(teacher_key(seed, i), swap_rows_dev[:, None], flat).view(-1, T, N)
            swap = (
                inside
                & (u < beta_rows)
                & (partner_tokens != IGNORE_INDEX)
                & (primary_tokens != IGNORE_INDEX)
            )  # (M, T, N)
            out[swap_rows_dev] = torch.where(swap, partner_tokens, primary_tokens)
        out_targets.append(out)
    return TokenMixResult(out_waves, tuple(out_targets), gain.to(device), beta.to(device))


# ---------------------------------------------------------------------------------------------
# Public entry points and torch.library registration
# ---------------------------------------------------------------------------------------------


def _run(
    waves, lengths, plan, targets, frame_rates, seed, sample_rate, uniforms, use_triton, check
) -> TokenMixResult:
    plan = tuple(plan)
    targets = tuple(targets)
    frame_rates = tuple(float(r) for r in frame_rates)
    uniforms = tuple(uniforms) if uniforms is not None else None
    if check:
        _check_inputs(waves, lengths, plan, targets, frame_rates, sample_rate, uniforms)
    plan = _plan_on_host(plan)
    if check:
        _check_plan(lengths, plan, waves.shape[1])
    host = _host_plan(plan)
    if use_triton is None:
        use_triton = prefer_triton(waves)
    if use_triton:
        require_triton("token_mix")
        if not triton_usable(waves):
            raise ValueError(
                f"token_mix: use_triton=True needs CUDA tensors (or TRITON_INTERPRET=1), found {waves.device}"
            )
        return _token_mix_triton(waves, host, targets, frame_rates, seed, sample_rate, uniforms)
    return _token_mix_torch(waves, host, targets, frame_rates, seed, sample_rate, uniforms)


@torch.library.custom_op("spear::token_mix", mutates_args=())
def _token_mix_op(
    waves: torch.Tensor,
    lengths: torch.Tensor,
    partner: torch.Tensor,
    offset: torch.Tensor,
    length: torch.Tensor,
    snr_db: torch.Tensor,
    targets: list[torch.Tensor],
    frame_rates: list[float],
    seed: int,
    sample_rate: int,
    uniforms: list[torch.Tensor],
    has_uniforms: bool,
    use_triton: bool | None,
    check: bool,
) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor, torch.Tensor]:
    # The schema has no optional tensor list: `has_uniforms` tells an empty list from no uniforms.
    result = _run(
        waves, lengths, (partner, offset, length, snr_db), targets, frame_rates, seed, sample_rate,
        uniforms if has_uniforms else None, use_triton, check,
    )
    return result.waves, list(result.targets), result.gain, result.beta


@_token_mix_op.register_fake
def _token_mix_fake(
    waves, lengths, partner, offset, length, snr_db, targets, frame_rates, seed, sample_rate, uniforms,
    has_uniforms, use_triton, check,
):
    _check_inputs(
        waves, lengths, (partner, offset, length, snr_db), targets, frame_rates, sample_rate,
        uniforms if has_uniforms else None,
    )
    B = waves.shape[0]
    return (
        torch.empty_like(waves),
        [torch.empty_like(t) for t in targets],
        waves.new_empty((B,), dtype=torch.float32),
        waves.new_empty((B,), dtype=torch.float32),
    )


def token_mix(
    waves: torch.Tensor,
    lengths: torch.Tensor,
    plan: TokenMixPlan,
    targets: Sequence[torch.Tensor],
    frame_rates: Sequence[float],
    seed: int,
    *,
    sample_rate: int = 16000,
    uniforms: Sequence[torch.Tensor] | None = None,
    use_triton: bool | None = None,
    check: bool = True,
) -> TokenMixResult:
    """Mix each planned partner into its primary at the plan's SNR and swap tokens in the overlap.

    waves (B, L) float; lengths (B,) int; plan: TokenMixPlan of (B,) tensors; targets: one
    (B, T_i, N_i) signed integer tensor per teacher (-100 = ignore); frame_rates: Hz per targets
    tensor; seed: int for the swap draws (`uniforms` overrides them). use_triton: None = the dispatch
    rule (CUDA -> Triton, else the torch twin); True forces the Triton kernels (CUDA, or any device
    under TRITON_INTERPRET=1); False forces the twin. Out-of-place; no autograd. See the module
    docstring for the exact semantics.
    The plan is read on the host: a plan on the CPU (draw_token_mix_plan with CPU lengths) costs no
    device sync. check=False skips the shape checks and the plan checks (which read `lengths` back),
    for callers whose plan comes from draw_token_mix_plan over the same lengths.
    """
    w, t, gain, beta = torch.ops.spear.token_mix(
        waves, lengths, plan[0], plan[1], plan[2], plan[3], list(targets), [float(r) for r in frame_rates],
        int(seed), int(sample_rate), list(uniforms) if uniforms is not None else [], uniforms is not None,
        use_triton, check,
    )
    return TokenMixResult(w, tuple(t), gain, beta)


def token_mix_torch(
    waves: torch.Tensor,
    lengths: torch.Tensor,
    plan: TokenMixPlan,
    targets: Sequence[torch.Tensor],
    frame_rates: Sequence[float],
    seed: int,
    *,
    sample_rate: int = 16000,
    uniforms: Sequence[torch.Tensor] | None = None,
) -> TokenMixResult:
    """The pure-torch twin of `token_mix` (same arguments, same results; the CPU path)."""
    return _run(waves, lengths, plan, targets, frame_rates, seed, sample_rate, uniforms, use_triton=False,
                check=True)


__all__ = [
    "TokenMixPlan",
    "TokenMixResult",
    "draw_token_mix_plan",
    "token_mix",
    "token_mix_torch",
]
