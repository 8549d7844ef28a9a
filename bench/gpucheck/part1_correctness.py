"""Part 1: each op as users call it (the Triton kernels on CUDA; the torch twins on a CPU, the dry
run) against its torch twin and its float64 oracle (kernels/oracles.py), in fp32 and bf16, at the
measured sizes and at the edge sizes (profile.py). Fresh random inputs from the run's seed.

Errors: linear_multi_target_ce and token_mix's waves ||got - want|| / ||want|| (the largest over
the loss and the gradients of hidden, weight and bias), mvq_search max |got - want| / max |want|
over the (B, N, K) table and the argmin's gap to the oracle's minimum, as the tests measure them.
Tolerances (DESIGN.md): fp32 1e-5; bf16 inputs 1e-2 (mvq_search upcasts on load and accumulates in
fp32, so it is held to 1e-5 in both). token_mix's tokens must match the oracle exactly (the draws
are kept 1e-3 from each row's beta so fp32 rounding cannot flip a swap).
"""
from __future__ import annotations

import torch
from benchlib import ce as ce_inputs
from benchlib import token_mix as mix_inputs
from benchlib.mvq_search import make_problem
from gpucheck.context import Case, Context, Part
from gpucheck.profile import CESize, MixSize, SearchSize
from gpucheck.report import Row, slug

from kernels._backend import prefer_triton
from kernels.linear_multi_target_ce import linear_multi_target_ce, linear_multi_target_ce_torch
from kernels.mvq_search import mvq_search, mvq_search_torch
from kernels.oracles import (
    linear_multi_target_ce_float64,
    mvq_search_errors_float64,
    token_mix_float64,
    uniforms_clear_of_beta,
)
from kernels import IGNORE_INDEX
from kernels.token_mix import token_mix, token_mix_torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
TOLERANCE = {"fp32": 1e-5, "bf16": 1e-2}
SEARCH_TOLERANCE = 1e-5  # both dtypes: loaded, upcast, fp32 accumulation
RATIO_TOLERANCE = 1e-5  # token_mix's gain and beta (float64 on the host in both paths)
COLUMNS = ["op", "size", "dtype", "path", "vs float64", "vs twin", "tolerance"]


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """||got - want|| / ||want||; the absolute norm of the difference where want is all zero."""
    got, want = got.detach().double(), want.detach().double()
    scale = want.norm().item()
    return (got - want).norm().item() / (scale if scale > 0 else 1.0)


def _path(*tensors: torch.Tensor) -> str:
    return "triton" if prefer_triton(*tensors) else "torch twin"


def _verdict(ok: bool) -> str:
    return "pass" if ok else "FAIL"


# ---------------------------------------------------------------------------------- linear_multi_target_ce
def ce_case(size: CESize, dtype_name: str) -> Case:
    def run(ctx: Context) -> Row:
        dtype = DTYPES[dtype_name]
        hidden, weight, bias, targets, weights = ce_inputs.make_inputs(
            ctx.device, dtype, size.as_dict(), seed=ctx.seed, random_weights=True)
        if size.all_ignored:
            targets.fill_(-100)
        if size.F == 1:  # the one frame must count: a real weight, targets drawn fresh
            generator = torch.Generator().manual_seed(ctx.seed)
            targets = torch.randint(0, size.K, (1, size.N), generator=generator).to(ctx.device)
            weights = torch.full((1,), 0.7, device=ctx.device)
        params = (hidden, weight, bias)

        def loss_and_grads(fn) -> list[torch.Tensor]:
            loss = fn(hidden, weight, targets, weights, bias)
            return [loss.detach(), *torch.autograd.grad(loss, params)]

        kernel = loss_and_grads(linear_multi_target_ce)
        twin = loss_and_grads(linear_multi_target_ce_torch)
        oracle = loss_and_grads(linear_multi_target_ce_float64)
        names = ("loss", "d_hidden", "d_weight", "d_bias")
        vs_oracle = {name: rel_err(k, o) for name, k, o in zip(names, kernel, oracle)}
        vs_twin = {name: rel_err(k, t) for name, k, t in zip(names, kernel, twin)}
        finite = all(bool(torch.isfinite(t).all()) for t in kernel)
        worst, worst_twin = max(vs_oracle.values()), max(vs_twin.values())
        ok = finite and worst <= TOLERANCE[dtype_name]
        return Row("", _verdict(ok),
                   cells={"path": _path(hidden, weight), "vs float64": f"{worst:.1e}", "vs twin": f"{worst_twin:.1e}",
                          "tolerance": f"{TOLERANCE[dtype_name]:.0e}"},
                   metrics={"rel_err_vs_float64": vs_oracle, "rel_err_vs_twin": vs_twin, "finite": finite,
                            "loss": float(oracle[0]), **size.as_dict()},
                   reason=None if ok else ("non-finite output" if not finite else "over tolerance"))

    return Case(f"correct-ce-{slug(size.label)}-{dtype_name}",
                {"op": "linear_multi_target_ce", "size": size.label, "dtype": dtype_name}, run)


# ---------------------------------------------------------------------------------- mvq_search
def search_case(size: SearchSize, indexed: bool, dtype_name: str) -> Case:
    def run(ctx: Context) -> Row:
        frames, centers, indexes = make_problem(size.B, size.N, size.K, size.D, indexed=indexed, device=ctx.device,
                                                dtype=DTYPES[dtype_name], seed=ctx.seed)
        cut = min(16, size.K)
        kernel = mvq_search(frames, centers, indexes, cut=cut)
        twin = mvq_search_torch(frames, centers, indexes, cut=cut)
        oracle = mvq_search_errors_float64(frames, centers, indexes)  # (B, N, K)
        shapes_ok = (kernel.errors.shape == oracle.shape and kernel.best.shape == (size.B, size.N)
                     and kernel.top_indexes.shape == (size.B, size.N, cut))
        metrics = {"B": size.B, "N": size.N, "K": size.K, "D": size.D, "indexed": indexed, "cut": cut}
        if size.B == 0:
            return Row("", _verdict(shapes_ok), cells={"path": _path(frames, centers), "vs float64": "shapes only",
                                                       "vs twin": "shapes only", "tolerance": "-"},
                       metrics={**metrics, "shapes_ok": shapes_ok}, reason=None if shapes_ok else "wrong shapes")
        scale = oracle.abs().max().item()
        err = (kernel.errors.double() - oracle).abs().max().item() / scale
        err_twin = (kernel.errors - twin.errors).abs().max().item() / scale
        chosen = oracle.gather(-1, kernel.best.unsqueeze(-1)).squeeze(-1)  # (B, N)
        gap = (chosen - oracle.min(dim=-1).values).max().item() / scale
        best_is_argmin = torch.equal(kernel.best, kernel.errors.argmin(dim=-1))
        top_consistent = torch.equal(kernel.errors.gather(-1, kernel.top_indexes), kernel.top_errors)
        ok = shapes_ok and err <= SEARCH_TOLERANCE and gap <= SEARCH_TOLERANCE and best_is_argmin and top_consistent
        return Row("", _verdict(ok),
                   cells={"path": _path(frames, centers), "vs float64": f"{err:.1e} (argmin gap {gap:.0e})",
                          "vs twin": f"{err_twin:.1e}", "tolerance": f"{SEARCH_TOLERANCE:.0e}"},
                   metrics={**metrics, "rel_err_vs_float64": err, "rel_err_vs_twin": err_twin, "argmin_gap": gap,
                            "best_is_argmin": best_is_argmin, "top_consistent": top_consistent},
                   reason=None if ok else "over tolerance or inconsistent argmin/top list")

    mode = "indexed" if indexed else "plain"
    return Case(f"correct-search-{mode}-{slug(size.label)}-{dtype_name}",
                {"op": f"mvq_search ({mode})", "size": size.label, "dtype": dtype_name}, run)


# ---------------------------------------------------------------------------------- token_mix
def mix_case(size: MixSize, dtype_name: str) -> Case:
    def run(ctx: Context) -> Row:
        waves, lengths, plan, targets, _ = mix_inputs.make_inputs(
            ctx.device, size.prob, batch=size.B, seconds=size.seconds, teachers=size.teachers,
            dtype=DTYPES[dtype_name], seed=ctx.seed)
        if size.ignore_all:
            targets = tuple(torch.full_like(t, IGNORE_INDEX) for t in targets)
        rates = [rate for rate, _ in size.teachers]
        mixed = plan.partner.cpu() >= 0
        beta = torch.where(mixed, 1.0 / (1.0 + 10.0 ** (plan.snr_db.cpu().double() / 10.0)), 0.0)
        uniforms = uniforms_clear_of_beta(torch.Generator().manual_seed(ctx.seed), targets, beta)
        kernel = token_mix(waves, lengths, plan, targets, rates, ctx.seed, uniforms=uniforms)
        twin = token_mix_torch(waves, lengths, plan, targets, rates, ctx.seed, uniforms=uniforms)
        want_waves, want_targets, want_gain, want_beta = token_mix_float64(waves, plan, targets, rates, uniforms)
        tokens = sum(t.numel() for t in targets)
        wrong = sum(int((k != w).sum()) for k, w in zip(kernel.targets, want_targets))
        wrong_twin = sum(int((k != t).sum()) for k, t in zip(kernel.targets, twin.targets))
        swapped = sum(int((k != t).sum()) for k, t in zip(kernel.targets, targets))
        wave_err, wave_err_twin = rel_err(kernel.waves, want_waves), rel_err(kernel.waves, twin.waves)
        gain_err, beta_err = rel_err(kernel.gain, want_gain), rel_err(kernel.beta, want_beta)
        ok = (wave_err <= TOLERANCE[dtype_name] and wrong == 0 and gain_err <= RATIO_TOLERANCE
              and beta_err <= RATIO_TOLERANCE)
        if size.prob == 0.0:  # nothing planned: waves and tokens must come back unchanged
            ok = ok and torch.equal(kernel.waves, waves) and swapped == 0
        return Row("", _verdict(ok),
                   cells={"path": _path(waves), "vs float64": f"waves {wave_err:.1e}, {wrong}/{tokens} tokens differ",
                          "vs twin": f"waves {wave_err_twin:.1e}, {wrong_twin} tokens differ",
                          "tolerance": f"{TOLERANCE[dtype_name]:.0e}, 0 tokens"},
                   metrics={"B": size.B, "seconds": size.seconds, "teachers": [list(t) for t in size.teachers],
                            "mixed_rows": int(mixed.sum()), "tokens": tokens, "tokens_swapped": swapped,
                            "wave_rel_err_vs_float64": wave_err, "wave_rel_err_vs_twin": wave_err_twin,
                            "tokens_differing_from_float64": wrong, "tokens_differing_from_twin": wrong_twin,
                            "gain_rel_err": gain_err, "beta_rel_err": beta_err},
                   reason=None if ok else "over tolerance or tokens differ")

    return Case(f"correct-mix-{slug(size.label)}-{dtype_name}",
                {"op": "token_mix", "size": size.label, "dtype": dtype_name}, run)


def cases(ctx: Context) -> list[Case]:
    profile = ctx.profile
    out = [ce_case(size, dtype) for size in profile.ce_sizes for dtype in DTYPES]
    out += [search_case(size, indexed, dtype) for size in profile.search_sizes for indexed in (False, True)
            for dtype in DTYPES]
    out += [mix_case(size, dtype) for size in profile.mix_sizes for dtype in DTYPES]
    return out


PART = Part(1, "Correctness: each op (Triton on CUDA) against its torch twin and a float64 oracle", COLUMNS, cases)
