"""kernels.linear_multi_target_ce: the Triton kernel (under TRITON_INTERPRET=1 on a CPU) and the torch
twin against a float64 oracle: plain F.cross_entropy over the full logits, then masking/weighting."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels._aot import CompileJob
from kernels._backend import HAS_TRITON
from kernels.linear_multi_target_ce import (
    ce_chunk_torch,
    linear_multi_target_ce,
    linear_multi_target_ce_torch,
)
from kernels.oracles import linear_multi_target_ce_float64 as oracle

needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")

TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}


def make_inputs(gen, num_frames, dim, num_codebooks, K, dtype, with_bias=True, requires_grad=True):
    """Random inputs with ignored targets, zero-weight frames and (F > 2) one all-ignored frame."""
    hidden = torch.randn(num_frames, dim, generator=gen).to(dtype)
    weight = (torch.randn(num_codebooks * K, dim, generator=gen) / dim**0.5).to(dtype)
    bias = (0.5 * torch.randn(num_codebooks * K, generator=gen)).to(dtype) if with_bias else None
    targets = torch.randint(0, K, (num_frames, num_codebooks), generator=gen)
    targets[torch.rand(num_frames, num_codebooks, generator=gen) < 0.2] = -100
    frame_weights = torch.rand(num_frames, generator=gen) + 0.1
    frame_weights[torch.rand(num_frames, generator=gen) < 0.2] = 0.0
    if num_frames > 2:
        targets[1] = -100
        frame_weights[2] = 0.0
    tensors = [hidden, weight] + ([bias] if with_bias else [])
    for t in tensors:
        t.requires_grad_(requires_grad)
    return hidden, weight, targets, frame_weights, bias


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.detach().double(), want.detach().double()
    scale = want.norm().item()
    return (got - want).norm().item() / (scale if scale > 0 else 1.0)


def check_against_oracle(fn, inputs, reduction, tol, gen):
    hidden, weight, targets, frame_weights, bias = inputs
    params = [t for t in (hidden, weight, bias) if t is not None]
    loss = fn(hidden, weight, targets, frame_weights, bias, reduction)
    want = oracle(hidden, weight, targets, frame_weights, bias, reduction)
    assert loss.shape == want.shape
    assert torch.isfinite(loss).all()
    grad_out = torch.rand(want.shape, generator=gen, dtype=torch.float64) + 0.5
    got_grads = torch.autograd.grad(loss, params, grad_out.to(loss.dtype))
    want_grads = torch.autograd.grad(want, params, grad_out)
    assert rel_err(loss, want) < tol, (rel_err(loss, want), tol)
    for name, g, w in zip(("dh", "dW", "db"), got_grads, want_grads):
        assert g.dtype == w.dtype and g.shape == w.shape, name
        assert torch.isfinite(g).all(), name
        assert rel_err(g, w) < tol, (name, rel_err(g, w), tol)


# ---------------------------------------------------------------- Triton kernel (interpreter on CPU)
@needs_triton
@pytest.mark.parametrize("K", [16, 256])
@pytest.mark.parametrize("num_codebooks", [1, 8, 16])
@pytest.mark.parametrize("num_frames", [1, 37])
@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_triton_fp32_matches_float64(seed, num_frames, num_codebooks, K, reduction):
    gen = torch.Generator().manual_seed(seed)
    inputs = make_inputs(gen, num_frames, 5, num_codebooks, K, torch.float32, with_bias=K == 16)

    def fn(*args):  # chunk of 16 rows: several chunks for F = 37, one partial
        return linear_multi_target_ce(*args, chunk_size=16, use_triton=True)

    check_against_oracle(fn, inputs, reduction, TOL[torch.float32], gen)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("K", [16, 256])
@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_triton_low_precision_matches_float64(seed, dtype, K, reduction):
    gen = torch.Generator().manual_seed(seed)
    inputs = make_inputs(gen, 37, 6, 8, K, dtype)

    def fn(*args):
        return linear_multi_target_ce(*args, chunk_size=16, use_triton=True)

    check_against_oracle(fn, inputs, reduction, TOL[dtype], gen)


@needs_triton
@pytest.mark.parametrize("K,block_k", [(256, 64), (200, 64), (16, 16)])
def test_triton_kernel_online_lse_matches_float64(seed, K, block_k):
    """The per-chunk kernel alone, with K tiled (online log-sum-exp) and non-multiple K."""
    from kernels.linear_multi_target_ce import ce_chunk_triton

    gen = torch.Generator().manual_seed(seed)
    rows, num_codebooks = 11, 3
    logits = 3 * torch.randn(rows, num_codebooks * K, generator=gen)
    bias = torch.randn(num_codebooks * K, generator=gen)
    targets = torch.randint(0, K, (rows, num_codebooks), generator=gen)
    targets[torch.rand(rows, num_codebooks, generator=gen) < 0.3] = -100
    coef = torch.rand(rows, generator=gen)

    x = (logits.double() + bias.double()).requires_grad_(True)
    want_ce = F.cross_entropy(
        x.view(rows * num_codebooks, K), targets.reshape(-1), ignore_index=-100, reduction="none"
    ).view(rows, num_codebooks)
    (want_grad,) = torch.autograd.grad((want_ce * coef.double()[:, None]).sum(), x)

    work = logits.clone()
    ce = ce_chunk_triton(work, targets, coef, bias, compute_grad=True, block_k=block_k)
    assert rel_err(ce, want_ce) < 1e-5
    assert rel_err(work, want_grad) < 1e-5
    assert (ce[targets == -100] == 0).all()

    work = logits.clone()
    ce = ce_chunk_triton(work, targets, coef, bias, compute_grad=False, block_k=block_k)
    assert rel_err(ce, want_ce) < 1e-5
    assert torch.equal(work, logits)  # no gradient asked: logits untouched


# ---------------------------------------------------------------- the torch twin (CPU path)
@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_twin_matches_float64_realistic_size(seed, reduction):
    gen = torch.Generator().manual_seed(seed)
    inputs = make_inputs(gen, 2000, 256, 8, 256, torch.float32)
    check_against_oracle(linear_multi_target_ce_torch, inputs, reduction, 1e-5, gen)


def test_cpu_dispatch_is_the_twin_and_chunking_does_not_matter(seed):
    gen = torch.Generator().manual_seed(seed)
    hidden, weight, targets, frame_weights, bias = make_inputs(gen, 300, 16, 4, 32, torch.float32)
    want = oracle(hidden, weight, targets, frame_weights, bias)
    for chunk in (1, 7, 128, 10_000):
        got = linear_multi_target_ce(hidden, weight, targets, frame_weights, bias, chunk_size=chunk,
                                     use_triton=False)
        assert rel_err(got, want) < 1e-5, chunk
    default = linear_multi_target_ce(hidden, weight, targets, frame_weights, bias)
    assert rel_err(default, want) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("use_triton", [False, pytest.param(True, marks=needs_triton)])
def test_every_frame_active_path(seed, use_triton, dtype):
    """No frame dropped: the chunks are slices of hidden (no gather), dh written in place."""
    gen = torch.Generator().manual_seed(seed)
    inputs = list(make_inputs(gen, 29, 6, 3, 16, dtype))
    inputs[2] = torch.randint(0, 16, (29, 3), generator=gen)  # no ignored target
    inputs[3] = torch.rand(29, generator=gen) + 0.1  # no zero weight

    def fn(*args):
        return linear_multi_target_ce(*args, chunk_size=8, use_triton=use_triton)

    check_against_oracle(fn, tuple(inputs), "sum", TOL[dtype], gen)


@pytest.mark.parametrize("use_triton", [False, pytest.param(True, marks=needs_triton)])
@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_keeping_empty_frames_gives_the_same_result(seed, use_triton, reduction):
    """skip_empty_frames=False (no device sync) sends zero-weight and all-ignored frames through the
    GEMMs: they contribute nothing, as when they are dropped."""
    gen = torch.Generator().manual_seed(seed)
    inputs = make_inputs(gen, 37, 6, 3, 16, torch.float32)

    def fn(*args):
        return linear_multi_target_ce(*args, chunk_size=8, use_triton=use_triton, skip_empty_frames=False)

    check_against_oracle(fn, inputs, reduction, 1e-5, gen)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_twin_low_precision(seed, dtype):
    gen = torch.Generator().manual_seed(seed)
    inputs = make_inputs(gen, 200, 32, 4, 64, dtype)
    check_against_oracle(linear_multi_target_ce_torch, inputs, "sum", 1e-2, gen)


def test_twin_chunk_step_in_place():
    gen = torch.Generator().manual_seed(torch.seed() % 2**31)
    rows, num_codebooks, K = 5, 2, 7
    logits = torch.randn(rows, num_codebooks * K, generator=gen)
    targets = torch.randint(0, K, (rows, num_codebooks), generator=gen)
    coef = torch.rand(rows, generator=gen)
    x = logits.double().requires_grad_(True)
    want = F.cross_entropy(x.view(-1, K), targets.reshape(-1), reduction="none").view(rows, num_codebooks)
    (want_grad,) = torch.autograd.grad((want * coef.double()[:, None]).sum(), x)
    ce = ce_chunk_torch(logits, targets, coef, None, compute_grad=True)
    assert rel_err(ce, want) < 1e-6 and rel_err(logits, want_grad) < 1e-6


@pytest.mark.parametrize("use_triton", [False, pytest.param(True, marks=needs_triton)])
@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_frame_weights_gradient(seed, use_triton, reduction):
    """dL/dw_f = (1/N) sum_n CE_fn, zero-weight frames included (they are kept when w needs grad)."""
    gen = torch.Generator().manual_seed(seed)
    hidden, weight, targets, frame_weights, bias = make_inputs(gen, 23, 4, 3, 16, torch.float32)
    frame_weights.requires_grad_(True)
    loss = linear_multi_target_ce(hidden, weight, targets, frame_weights, bias, reduction,
                                  chunk_size=8, use_triton=use_triton)
    want = oracle(hidden, weight, targets, frame_weights, bias, reduction)
    grad_out = torch.rand(want.shape, generator=gen, dtype=torch.float64) + 0.5
    got = torch.autograd.grad(loss, (frame_weights, hidden), grad_out.float())
    ref = torch.autograd.grad(want, (frame_weights, hidden), grad_out)
    assert (frame_weights == 0).any()
    assert rel_err(got[0], ref[0]) < 1e-5 and rel_err(got[1], ref[1]) < 1e-5


# ---------------------------------------------------------------- edge cases
@pytest.mark.parametrize("skip_empty_frames", [True, False])
@pytest.mark.parametrize("use_triton", [False, pytest.param(True, marks=needs_triton)])
@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_all_ignored_and_empty(seed, use_triton, reduction, skip_empty_frames):
    gen = torch.Generator().manual_seed(seed)
    hidden, weight, targets, frame_weights, bias = make_inputs(gen, 9, 4, 2, 16, torch.float32)
    targets.fill_(-100)
    loss = linear_multi_target_ce(hidden, weight, targets, frame_weights, bias, reduction,
                                  use_triton=use_triton, skip_empty_frames=skip_empty_frames)
    assert torch.equal(loss, torch.zeros_like(loss))
    grads = torch.autograd.grad(loss.sum(), (hidden, weight, bias))
    assert all(torch.equal(g, torch.zeros_like(g)) for g in grads)

    # all frames weighted 0: same
    targets = torch.randint(0, 16, (9, 2), generator=gen)
    loss = linear_multi_target_ce(hidden, weight, targets, torch.zeros(9), bias, reduction,
                                  use_triton=use_triton, skip_empty_frames=skip_empty_frames)
    assert torch.equal(loss, torch.zeros_like(loss))
    grads = torch.autograd.grad(loss.sum(), (hidden, weight, bias))
    assert all(torch.equal(g, torch.zeros_like(g)) for g in grads)

    # no frames at all
    empty_h = torch.randn(0, 4, generator=gen, requires_grad=True)
    loss = linear_multi_target_ce(empty_h, weight, targets[:0], frame_weights[:0], bias, reduction,
                                  use_triton=use_triton, skip_empty_frames=skip_empty_frames)
    assert loss.shape == (() if reduction == "sum" else (0,))
    assert float(loss.detach().sum()) == 0.0
    (g,) = torch.autograd.grad(loss.sum(), weight)
    assert torch.equal(g, torch.zeros_like(g))


def test_no_grad_and_int32_targets_and_noncontiguous(seed):
    gen = torch.Generator().manual_seed(seed)
    hidden, weight, targets, frame_weights, bias = make_inputs(gen, 40, 8, 3, 16, torch.float32)
    hidden_t = hidden.detach().t().contiguous().t()  # non-contiguous (F, d) view
    assert not hidden_t.is_contiguous()
    with torch.no_grad():
        loss = linear_multi_target_ce(hidden_t, weight, targets.int(), frame_weights, bias)
    assert loss.grad_fn is None
    assert rel_err(loss, oracle(hidden, weight, targets, frame_weights, bias)) < 1e-5


# ---------------------------------------------------------------- validation
def test_validation_errors(seed):
    gen = torch.Generator().manual_seed(seed)
    h, W, y, w, b = make_inputs(gen, 6, 4, 2, 8, torch.float32, requires_grad=False)
    op = linear_multi_target_ce
    cases = [
        (lambda: op(h[None], W, y, w, b), r"hidden must be \(F, d\).*\(1, 6, 4\)"),
        (lambda: op(h, W[:, :3], y, w, b), r"weight must be \(N\*K, d\).*\(16, 3\)"),
        (lambda: op(h, W[:15], y, w, b[:15]), r"not a positive multiple of 2"),
        (lambda: op(h, W, y[:5], w, b), r"targets must be \(F, N\).*\(5, 2\)"),
        (lambda: op(h, W, y, w[:5], b), r"frame_weights must be \(F,\).*\(5,\)"),
        (lambda: op(h, W, y, w, b[:8]), r"bias must be \(N\*K,\).*\(8,\)"),
        (lambda: op(h, W.double(), y, w, b), r"share a dtype.*float64"),
        (lambda: op(h, W, y.float(), w, b), r"targets must be an integer tensor"),
        (lambda: op(h, W, y, w, b, reduction="mean"), r"reduction must be"),
        (lambda: op(h, W.to("meta"), y, w, b), r"share one device.*weight on meta"),
        (lambda: op(h, W, y, w, b, chunk_size=0), r"chunk_size must be >= 1"),
    ]
    for call, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            call()
    bad = y.clone()
    bad[3, 1] = 8  # K = 8: out of range
    with pytest.raises(ValueError, match=r"found 8 at \(frame 3, codebook 1\)"):
        op(h, W, bad, w, b)
    bad[3, 1] = -1
    with pytest.raises(ValueError, match=r"found -1 at \(frame 3, codebook 1\)"):
        op(h, W, bad, w, b)
    # the check is switchable off: the twin then reads a -1 target as class 0, without raising
    loss = op(h, W, bad, w, b, check_targets=False)
    assert torch.isfinite(loss)
    assert torch.equal(op(h, W, bad, w, b, check=False), loss)  # check=False: no check at all


@needs_triton
def test_triton_without_check_does_not_crash_on_bad_targets(seed):
    gen = torch.Generator().manual_seed(seed)
    h, W, y, w, b = make_inputs(gen, 6, 4, 2, 8, torch.float32, requires_grad=False)
    y[0, 0] = 1000
    loss = linear_multi_target_ce(h, W, y, w, b, check_targets=False, use_triton=True)
    assert torch.isfinite(loss)


# ---------------------------------------------------------------- torch.compile + torch.library
def test_torch_compile_fullgraph(seed):
    gen = torch.Generator().manual_seed(seed)

    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(8, 8)
            self.head = torch.nn.Linear(8, 4 * 16)

        def forward(self, x, targets, frame_weights):
            h = torch.tanh(self.proj(x))
            return linear_multi_target_ce(h, self.head.weight, targets, frame_weights, self.head.bias)

    torch.manual_seed(seed)
    model = Head()
    x = torch.randn(30, 8, generator=gen)
    targets = torch.randint(0, 16, (30, 4), generator=gen)
    targets[::3, 1] = -100
    frame_weights = torch.rand(30, generator=gen)

    eager = model(x, targets, frame_weights)
    eager_grads = torch.autograd.grad(eager, list(model.parameters()))
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    got = compiled(x, targets, frame_weights)
    got_grads = torch.autograd.grad(got, list(model.parameters()))
    assert rel_err(got, eager) < 1e-6
    for g, e in zip(got_grads, eager_grads):
        assert rel_err(g, e) < 1e-6
    with torch.no_grad():
        want = oracle(torch.tanh(model.proj(x)), model.head.weight, targets, frame_weights,
                      model.head.bias)
    assert rel_err(got, want) < 1e-5


def test_custom_op_registered():
    from torch.library import opcheck

    from kernels.linear_multi_target_ce import _lmtce_op

    gen = torch.Generator().manual_seed(torch.seed() % 2**31)
    h, W, y, w, b = make_inputs(gen, 10, 4, 2, 8, torch.float32)
    args = (h, W, y, w, b, "sum", True, True, True, True, True, False, 4, False)
    opcheck(_lmtce_op, args, test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


# ---------------------------------------------------------------- AOT compile for sm_80 / sm_90a
SIGNATURE = {
    "logits_ptr": "*bf16", "logits_stride": "i32", "bias_ptr": "*bf16", "targets_ptr": "*i64",
    "targets_stride": "i32", "coef_ptr": "*fp32", "ce_ptr": "*fp32", "R": "i32", "N": "i32",
    "K": "i32", "HAS_BIAS": "constexpr", "COMPUTE_GRAD": "constexpr", "SINGLE_TILE": "constexpr",
    "BLOCK_R": "constexpr", "BLOCK_K": "constexpr",
}

def aot_jobs() -> list[CompileJob]:
    """Every tile the launcher can pick in its heaviest variant (bias + gradient, bf16 logits);
    the other variants (fp32 / fp16 logits, no bias, no gradient) at the SPEAR tile (K = 256)."""
    from kernels.linear_multi_target_ce import kernel_config, launcher_configs

    jobs = []
    for cfg in launcher_configs():
        constexprs = {"HAS_BIAS": True, "COMPUTE_GRAD": True, "SINGLE_TILE": cfg["SINGLE_TILE"],
                      "BLOCK_R": cfg["BLOCK_R"], "BLOCK_K": cfg["BLOCK_K"]}
        jobs.append(CompileJob("_ce_chunk_kernel", SIGNATURE, constexprs, cfg["num_warps"]))
    cfg = kernel_config(256)
    tiles = {"SINGLE_TILE": True, "BLOCK_R": cfg["BLOCK_R"], "BLOCK_K": cfg["BLOCK_K"]}
    for dtype, has_bias, grad in (("*fp32", False, True), ("*fp16", True, False)):
        signature = dict(SIGNATURE, logits_ptr=dtype, bias_ptr=dtype)
        jobs.append(CompileJob("_ce_chunk_kernel", signature, dict(tiles, HAS_BIAS=has_bias, COMPUTE_GRAD=grad), cfg["num_warps"]))
    return jobs


@needs_triton
def test_kernel_compiles_for_gpu_at_every_launcher_config():
    from kernels._aot import SHARED_MEMORY_LIMIT, compile_jobs_for_gpu
    from kernels.linear_multi_target_ce import kernel_config

    assert [kernel_config(k)["BLOCK_K"] for k in (1, 16, 17, 256, 1024, 1025)] == [16, 16, 32, 256, 1024, 1024]
    assert not kernel_config(1025)["SINGLE_TILE"] and kernel_config(256)["SINGLE_TILE"]
    jobs = aot_jobs()
    for capability, shared in compile_jobs_for_gpu("kernels.linear_multi_target_ce", jobs).items():
        assert len(shared) == len(jobs)
        assert all(0 <= s <= SHARED_MEMORY_LIMIT[capability] for s in shared), shared


@pytest.mark.parametrize("use_triton", [False, pytest.param(True, marks=needs_triton)], ids=["twin", "triton"])
@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_fp32_inputs_ignore_an_enclosing_autocast_region(use_triton, reduction, seed):
    # fp32 in -> fp32 math, whatever the caller's autocast says; zero-weight rows force the compacted
    # (index_select) path, whose GEMMs autocast would otherwise run in bf16.
    gen = torch.Generator().manual_seed(seed)
    inputs = make_inputs(gen, 64, 32, 2, 16, torch.float32)
    hidden, weight, targets, frame_weights, bias = inputs
    frame_weights[::3] = 0.0

    def loss_and_grads():
        loss = linear_multi_target_ce(hidden, weight, targets, frame_weights, bias, reduction, use_triton=use_triton)
        return (loss, *torch.autograd.grad(loss.sum(), (hidden, weight, bias)))

    plain = loss_and_grads()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = loss_and_grads()
    for got, want in zip(under_autocast, plain):
        assert got.dtype == want.dtype
        assert rel_err(got, want) < 1e-6
