"""Part 2: the ops against the plain-PyTorch way of doing the same, torch.compile, and the peer
libraries, in time (median of repeated calls after a warm-up) and peak memory (one call, above what
was allocated before it), in the same run on the same inputs.

linear_multi_target_ce, forward + backward (gradients of hidden and weight), no bias (Cut
Cross-Entropy 25.1 takes none, so every contender computes the same function):
    plain           nn.Linear over all frames -> fp32 (F, N*K) logits -> F.cross_entropy (the baseline)
    ours            linear_multi_target_ce (Triton on CUDA)
    plain compiled  the plain loss under torch.compile
    liger           Liger-Kernel's fused linear cross-entropy, one call per codebook
    cce             Cut Cross-Entropy's linear_cross_entropy, one call per codebook
The inputs weight every frame alpha = 0.5 (SPEAR's weight of masked and unmasked frames alike at
alpha = 0.5) or 0 (padding, all targets ignored), so the peers' per-codebook sums times alpha / N are
exactly our loss. Each contender's loss is checked against the float64 oracle.
mvq_search (the refine pass's table, and the nearest centre) against cdist and the explicit (B, N, K,
D) definition; token_mix against the eager per-row loop (benchlib).
"""
from __future__ import annotations

from typing import Callable

import torch
from benchlib import ce as ce_inputs
from benchlib import mvq_search as search_inputs
from benchlib import token_mix as mix_inputs
from gpucheck import peers
from gpucheck.context import Case, Context, Part, measure
from gpucheck.profile import MixSize
from gpucheck.report import Row, format_bytes, format_seconds

from kernels.linear_multi_target_ce import linear_multi_target_ce
from kernels.mvq_search import mvq_search
from kernels.oracles import linear_multi_target_ce_float64
from kernels.token_mix import token_mix

COLUMNS = ["workload", "dtype", "contender", "time", "peak memory", "vs baseline", "check"]
LOSS_TOLERANCE = {"bf16": 1e-2, "fp32": 1e-3}  # fp32: the peers' GEMMs may run in tf32
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def measured_row(ctx: Context, group: str, baseline: bool, metrics: dict, check: str, ok: bool,
                 reason: str | None = None) -> Row:
    """A row with time, memory and the ratios to the group's baseline (the first contender measured)."""
    if baseline:
        ctx.shared[f"{group}-baseline"] = metrics
    base = ctx.shared.get(f"{group}-baseline")
    versus = "baseline"
    if not baseline and base is not None:
        speed = base["median_s"] / metrics["median_s"]
        memory = (metrics["peak_bytes"] / base["peak_bytes"]) if metrics["peak_bytes"] and base["peak_bytes"] else None
        metrics["speedup_vs_baseline"], metrics["memory_vs_baseline"] = speed, memory
        versus = f"{speed:.2f}x speed" + (f", {memory:.3f}x memory" if memory is not None else "")
    elif not baseline:
        versus = "baseline not measured"
    return Row("", "ok" if ok else "FAIL",
               cells={"time": format_seconds(metrics["median_s"]), "peak memory": format_bytes(metrics["peak_bytes"]),
                      "vs baseline": versus, "check": check},
               metrics=metrics, reason=reason)


# ---------------------------------------------------------------------------------- fused linear CE
def _ce_inputs(ctx: Context, dtype_name: str):
    """(hidden, weight, targets, frame_weights, per-codebook target columns, float64 loss), shared."""

    def build():
        size = ctx.profile.ce_peer
        hidden, weight, _, targets, weights = ce_inputs.make_inputs(
            ctx.device, DTYPES[dtype_name], size.as_dict(), seed=ctx.seed, with_bias=False)
        uniform = (weights == 0) | (weights == ce_inputs.ALPHA)
        padding_ignored = (targets[weights == 0] == -100).all()
        if not bool(uniform.all() and padding_ignored):
            raise ValueError("peer comparison needs frame weights in {0, alpha} with padding fully ignored")
        columns = [targets[:, n].contiguous() for n in range(targets.shape[1])]
        want = linear_multi_target_ce_float64(hidden.detach(), weight.detach(), targets, weights).item()
        return hidden, weight, targets, weights, columns, want

    return ctx.shared_value(f"ce-{dtype_name}", build)


def per_codebook(peer_sum: Callable) -> Callable:
    """Our loss from a peer's sum of CE over one codebook's rows: alpha / N * sum_n peer_sum(h, W_n, y_n)."""

    def loss(hidden, weight, columns):
        num_codebooks = len(columns)
        num_classes = weight.shape[0] // num_codebooks
        total = sum(peer_sum(hidden, weight[n * num_classes:(n + 1) * num_classes], columns[n])
                    for n in range(num_codebooks))
        return total * (ce_inputs.ALPHA / num_codebooks)

    return loss


def _liger():
    liger = peers.load(peers.LIGER)
    return per_codebook(lambda h, w, y: liger(h, w, y, reduction="sum"))


def _cce():
    cce = peers.load(peers.CCE)
    return per_codebook(lambda h, w, y: cce(h, w, y, reduction="sum"))


CE_CONTENDERS = {  # id -> (label, needs CUDA)
    "plain": ("plain Linear + cross_entropy", False),
    "ours": ("linear_multi_target_ce", False),
    "compiled": ("plain + torch.compile", False),
    "liger": ("Liger fused linear CE, per codebook", True),
    "cce": ("Cut Cross-Entropy, per codebook", True),
}


def ce_case(contender: str, dtype_name: str, size_label: str) -> Case:
    label, needs_cuda = CE_CONTENDERS[contender]

    def run(ctx: Context) -> Row:
        if needs_cuda:
            peer_loss = (_liger if contender == "liger" else _cce)()  # PeerMissing: skipped with the reason
            if not ctx.on_gpu:
                name = peers.LIGER.distribution if contender == "liger" else peers.CCE.distribution
                return Row("", "skipped", reason=f"{name} {peers.version_of(name)} imports; its kernels need "
                                                 f"CUDA (this run is on {ctx.device.type})")
        hidden, weight, targets, weights, columns, want = _ce_inputs(ctx, dtype_name)
        size = ctx.profile.ce_peer
        if contender == "plain":
            loss_fn = lambda: ce_inputs.plain_loss(hidden, weight, None, targets, weights)  # noqa: E731
        elif contender == "ours":
            loss_fn = lambda: linear_multi_target_ce(hidden, weight, targets, weights)  # noqa: E731
        elif contender == "compiled":
            compiled = torch.compile(ce_inputs.plain_loss, backend=ctx.profile.compile_backend)
            loss_fn = lambda: compiled(hidden, weight, None, targets, weights)  # noqa: E731
        else:
            loss_fn = lambda: peer_loss(hidden, weight, columns)  # noqa: E731
        last = {}

        def call():
            loss = loss_fn()
            torch.autograd.grad(loss, (hidden, weight))
            last["loss"] = loss.detach()

        metrics = measure(ctx, call)
        err = abs(float(last["loss"]) - want) / abs(want)
        ok = err <= LOSS_TOLERANCE[dtype_name]
        metrics.update(loss_rel_err_vs_float64=err, **size.as_dict(), bias=False)
        if contender == "compiled":
            metrics["compile_backend"] = ctx.profile.compile_backend
        return measured_row(ctx, f"ce-{dtype_name}", contender == "plain", metrics,
                            f"loss vs float64 {err:.1e}", ok, None if ok else "loss differs from the float64 oracle")

    return Case(f"kern-ce-{dtype_name}-{contender}",
                {"workload": f"linear CE fwd+bwd {size_label}", "dtype": dtype_name, "contender": label}, run)


# ---------------------------------------------------------------------------------- mvq_search
SEARCH_CONTENDERS = {"cdist": "torch.cdist (eager)", "explicit": "explicit (B,N,K,D) (eager)", "ours": "mvq_search"}


def search_case(contender: str, indexed: bool, size_label: str) -> Case:
    mode = "indexed" if indexed else "plain"

    def run(ctx: Context) -> Row:
        size = ctx.profile.search_peer
        frames, centers, indexes = ctx.shared_value(f"search-{mode}", lambda: search_inputs.make_problem(
            size.B, size.N, size.K, size.D, indexed=indexed, device=ctx.device, seed=ctx.seed))
        if contender == "cdist":
            fn = lambda: search_inputs.by_cdist(frames, centers, indexes)  # noqa: E731
        elif contender == "explicit":
            chunk = search_inputs.EXPLICIT_CHUNK[ctx.device.type]
            fn = lambda: search_inputs.by_explicit(frames, centers, indexes, chunk)  # noqa: E731
        else:
            fn = lambda: tuple(mvq_search(frames, centers, indexes)[:2])  # noqa: E731
        last = {}
        metrics = measure(ctx, lambda: last.update(out=fn()))
        errors, _ = last["out"]
        ours = ctx.shared_value(f"search-{mode}-ours", lambda: mvq_search(frames, centers, indexes).errors)
        diff = ((errors - ours).abs().max() / ours.abs().max()).item()
        ok = diff <= 1e-4
        metrics.update(B=size.B, N=size.N, K=size.K, D=size.D, max_rel_diff_vs_mvq_search=diff)
        return measured_row(ctx, f"search-{mode}", contender == "cdist", metrics, f"table vs mvq_search {diff:.0e}",
                            ok, None if ok else "table differs from mvq_search")

    return Case(f"kern-search-{mode}-{contender}",
                {"workload": f"mvq_search {mode} {size_label}", "dtype": "fp32",
                 "contender": SEARCH_CONTENDERS[contender]}, run)


# ---------------------------------------------------------------------------------- token_mix
def mix_case(size: MixSize, contender: str) -> Case:
    def run(ctx: Context) -> Row:
        waves, lengths, plan, targets, sizes = ctx.shared_value(f"mix-{size.label}", lambda: mix_inputs.make_inputs(
            ctx.device, size.prob, batch=size.B, seconds=size.seconds, teachers=size.teachers, seed=ctx.seed))
        rates = tuple(rate for rate, _ in size.teachers)
        if contender == "eager":
            generator = torch.Generator(device=ctx.device).manual_seed(ctx.seed)
            fn = lambda: mix_inputs.eager_token_mix(waves, plan, targets, rates, generator)[0]  # noqa: E731
        else:
            fn = lambda: token_mix(waves, lengths, plan, targets, rates, seed=ctx.seed).waves  # noqa: E731
        last = {}
        metrics = measure(ctx, lambda: last.update(out=fn()))
        mixed = last["out"]
        ours = ctx.shared_value(f"mix-{size.label}-ours",
                                lambda: token_mix(waves, lengths, plan, targets, rates, seed=ctx.seed).waves)
        diff = ((mixed - ours).double().norm() / ours.double().norm()).item()
        ok = diff <= 1e-5
        metrics.update(sizes)
        return measured_row(ctx, f"mix-{size.label}", contender == "eager", metrics,
                            f"waves vs token_mix {diff:.0e}", ok, None if ok else "mixed waves differ from token_mix")

    label = "eager per-row loop" if contender == "eager" else "token_mix"
    return Case(f"kern-mix-{size.prob:g}-{contender}",
                {"workload": f"token_mix {size.label}", "dtype": "fp32", "contender": label}, run)


def cases(ctx: Context) -> list[Case]:
    profile = ctx.profile
    ce_label = profile.ce_peer.label
    out = [ce_case(contender, "bf16", ce_label) for contender in CE_CONTENDERS]
    out += [search_case(contender, indexed, profile.search_peer.label) for indexed in (True, False)
            for contender in SEARCH_CONTENDERS]
    out += [mix_case(size, contender) for size in profile.mix_peer for contender in ("eager", "ours")]
    out += [ce_case(contender, "fp32", ce_label) for contender in CE_CONTENDERS]
    return out


PART = Part(2, "Kernels against plain PyTorch, torch.compile and peer libraries", COLUMNS, cases)
