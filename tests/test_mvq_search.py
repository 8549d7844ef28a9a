"""Op 1, kernels/mvq_search.py: the Triton kernel (under TRITON_INTERPRET=1 here) and the torch twin
against float64 oracles, tie-breaking, validation, torch.compile and AOT compilation for sm_80/sm_90."""
from __future__ import annotations


import pytest
import torch

from kernels._aot import SHARED_MEMORY_LIMIT, CompileJob, compile_jobs_for_gpu
from kernels._backend import HAS_TRITON
from kernels.mvq_search import (
    GPU_SEARCH_CONFIGS,
    RESIDUAL_CONFIG,
    MVQSearchResult,
    mvq_search,
    mvq_search_torch,
    mvq_search_triton,
    search_block_k,
)
from kernels.oracles import mvq_search_errors_explicit as explicit_oracle
from kernels.oracles import mvq_search_errors_float64 as expanded_oracle
from kernels.oracles import mvq_search_targets_float64 as targets_float64

FP32_TOL = 1e-5  # DESIGN.md: fp32 rel err < 1e-5


# ---------------------------------------------------------------------------------- oracles


def check_against_oracle(result: MVQSearchResult, oracle: torch.Tensor, cut: int, tol: float) -> None:
    errors = result.errors
    assert errors.dtype == torch.float32 and errors.shape == oracle.shape
    scale = oracle.abs().max().item()
    rel = (errors.double() - oracle).abs().max().item() / scale
    assert rel < tol, f"max relative error {rel:.3g} >= {tol}"
    # The argmin must be exactly the lowest-index minimum of the returned errors ...
    assert result.best.dtype == torch.int64
    assert torch.equal(result.best, errors.argmin(dim=-1))
    # ... and optimal for the oracle, up to gaps inside the tolerance.
    chosen = oracle.gather(-1, result.best.unsqueeze(-1)).squeeze(-1)  # (B, N)
    gap = (chosen - oracle.min(dim=-1).values).max().item()
    assert gap <= tol * scale, f"argmin off the oracle's minimum by {gap:.3g}"
    if cut == 0:
        assert result.top_errors is None and result.top_indexes is None
        return
    top_errors, top_indexes = result.top_errors, result.top_indexes
    assert top_errors.shape == top_indexes.shape == (*errors.shape[:2], cut)
    assert top_errors.dtype == torch.float32 and top_indexes.dtype == torch.int64
    # Ordered by (error, index), and the values are the errors at those indexes.
    assert torch.equal(errors.gather(-1, top_indexes), top_errors)
    e0, e1 = top_errors[..., :-1], top_errors[..., 1:]
    i0, i1 = top_indexes[..., :-1], top_indexes[..., 1:]
    assert bool(((e0 < e1) | ((e0 == e1) & (i0 < i1))).all())
    # Nothing left out is smaller than the last kept error.
    kept = torch.zeros_like(errors, dtype=torch.bool).scatter_(-1, top_indexes, True)
    left_out_min = errors.masked_fill(kept, float("inf")).min(dim=-1).values
    if cut < errors.shape[-1]:
        assert bool((left_out_min >= top_errors[..., -1]).all())
    # The kept values are the oracle's `cut` smallest, within tolerance.
    oracle_top = oracle.sort(dim=-1).values[..., :cut]
    assert (top_errors.double() - oracle_top).abs().max().item() < tol * scale


def random_problem(batch, num_codebooks, num_centers, dim, dtype, with_indexes, generator):
    frames = torch.randn(batch, dim, generator=generator).to(dtype)
    centers = (torch.randn(num_codebooks, num_centers, dim, generator=generator) / num_codebooks**0.5).to(dtype)
    indexes = torch.randint(0, num_centers, (batch, num_codebooks), generator=generator) if with_indexes else None
    return frames, centers, indexes


def near_fit_problem(batch, num_codebooks, num_centers, dim, generator):
    """Frames that the current indexes nearly reconstruct (as after a few MVQ refine passes): the
    swap errors then cancel heavily in ||t||^2 + ||c||^2 - 2<t, c>."""
    centers = torch.randn(num_codebooks, num_centers, dim, generator=generator)
    indexes = torch.randint(0, num_centers, (batch, num_codebooks), generator=generator)
    chosen = centers[torch.arange(num_codebooks).unsqueeze(0), indexes].sum(dim=1)  # (B, D)
    frames = chosen + 0.05 * torch.randn(batch, dim, generator=generator)
    return frames, centers, indexes


# ----------------------------------------------------------------------- Triton kernel (interpreted)

# (B, N, K, D): 1 frame, odd B and D, K = 16 / 256 (the MVQ sizes), a K that is not a block multiple,
# and K > 256 (argmin outside the kernel, several K tiles).
KERNEL_SHAPES = [
    (1, 1, 16, 7),
    (37, 8, 16, 33),
    (5, 16, 256, 9),
    (37, 1, 256, 19),
    (37, 8, 40, 21),
    (5, 2, 300, 11),
]
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")


@needs_triton
@pytest.mark.parametrize("with_indexes", [False, True], ids=["plain", "indexed"])
@pytest.mark.parametrize("shape", KERNEL_SHAPES, ids=lambda s: "B{}-N{}-K{}-D{}".format(*s))
def test_kernel_fp32_matches_float64(shape, with_indexes, seed):
    generator = torch.Generator().manual_seed(seed)
    frames, centers, indexes = random_problem(*shape, torch.float32, with_indexes, generator)
    cut = min(5, shape[2])
    result = mvq_search_triton(frames, centers, indexes, cut=cut)
    check_against_oracle(result, explicit_oracle(frames, centers, indexes), cut, FP32_TOL)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("with_indexes", [False, True], ids=["plain", "indexed"])
@pytest.mark.parametrize("shape", [(37, 8, 16, 33), (5, 4, 256, 9)], ids=lambda s: "B{}-N{}-K{}-D{}".format(*s))
def test_kernel_half_inputs_upcast(shape, with_indexes, dtype, seed):
    generator = torch.Generator().manual_seed(seed)
    frames, centers, indexes = random_problem(*shape, dtype, with_indexes, generator)
    result = mvq_search_triton(frames, centers, indexes, cut=3)
    # The oracle sees the very same (rounded) values, upcast. The kernel loads then upcasts and
    # accumulates in fp32, so it meets the fp32 tolerance, far inside DESIGN.md's 1e-2 for half inputs.
    check_against_oracle(result, explicit_oracle(frames, centers, indexes), 3, FP32_TOL)


@needs_triton
def test_kernel_near_fit_indexed(seed):
    generator = torch.Generator().manual_seed(seed)
    frames, centers, indexes = near_fit_problem(23, 4, 16, 40, generator)
    oracle = explicit_oracle(frames, centers, indexes)
    # Sanity of the problem: keeping z_bn gives the current error ||e_b||^2 (the table's definition).
    residual = targets_float64(frames, centers, indexes)[:, 0] - centers.double()[0][indexes[:, 0]]
    assert torch.allclose(oracle.gather(-1, indexes.unsqueeze(-1)).squeeze(-1), residual.square().sum(-1).unsqueeze(-1).expand(-1, 4))
    check_against_oracle(mvq_search_triton(frames, centers, indexes, cut=4), oracle, 4, FP32_TOL)


# ------------------------------------------------------------------------------------- ties


def tied_problem(with_indexes, generator):
    """Every centre k in [8, 16) duplicates centre k - 8, so errors come in exactly equal pairs."""
    half = torch.randn(3, 8, 12, generator=generator)
    centers = torch.cat([half, half], dim=1)  # (N=3, K=16, D=12)
    frames = torch.randn(9, 12, generator=generator)
    indexes = torch.randint(0, 16, (9, 3), generator=generator) if with_indexes else None
    return frames, centers, indexes


@pytest.mark.parametrize("with_indexes", [False, True], ids=["plain", "indexed"])
@pytest.mark.parametrize("path", ["triton", "twin"])
def test_ties_break_to_lowest_index(path, with_indexes, seed):
    if path == "triton" and not HAS_TRITON:
        pytest.skip("triton is not installed")
    generator = torch.Generator().manual_seed(seed)
    frames, centers, indexes = tied_problem(with_indexes, generator)
    search = mvq_search_triton if path == "triton" else mvq_search_torch
    result = search(frames, centers, indexes, cut=16)
    # Duplicated centres must give bit-identical errors, or the tie test would test nothing.
    assert torch.equal(result.errors[..., :8], result.errors[..., 8:])
    assert bool((result.best < 8).all())
    assert torch.equal(result.best, explicit_oracle(frames, centers, indexes)[..., :8].argmin(dim=-1))
    # Each error appears twice in a row in the top list, lower index first.
    pairs = result.top_indexes.view(9, 3, 8, 2)
    assert torch.equal(pairs[..., 1], pairs[..., 0] + 8)
    check_against_oracle(result, explicit_oracle(frames, centers, indexes), 16, FP32_TOL)


# ------------------------------------------------------------------------------------- twin


@pytest.mark.parametrize("with_indexes", [False, True], ids=["plain", "indexed"])
def test_twin_realistic_size(with_indexes, seed):
    generator = torch.Generator().manual_seed(seed)
    if with_indexes:
        frames, centers, indexes = near_fit_problem(500, 16, 256, 1024, generator)
    else:
        frames, centers, indexes = random_problem(500, 16, 256, 1024, torch.float32, False, generator)
    result = mvq_search_torch(frames, centers, indexes, cut=32)
    check_against_oracle(result, expanded_oracle(frames, centers, indexes), 32, FP32_TOL)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("with_indexes", [False, True], ids=["plain", "indexed"])
def test_twin_small_and_chunked(with_indexes, dtype, seed, monkeypatch):
    import importlib

    module = importlib.import_module("kernels.mvq_search")  # the module: `kernels.mvq_search` is also the op

    # A tiny chunk budget forces many chunks (chunk = 2 frames here), including a ragged last one.
    monkeypatch.setattr(module, "TWIN_CHUNK_ELEMENTS", 2 * 4 * 24)
    generator = torch.Generator().manual_seed(seed)
    frames, centers, indexes = random_problem(37, 4, 16, 24, dtype, with_indexes, generator)
    result = mvq_search_torch(frames, centers, indexes, cut=6)
    check_against_oracle(result, explicit_oracle(frames, centers, indexes), 6, FP32_TOL)  # upcast semantics


def test_oracles_agree(seed):
    generator = torch.Generator().manual_seed(seed)
    frames, centers, indexes = random_problem(7, 3, 16, 10, torch.float32, True, generator)
    assert torch.allclose(expanded_oracle(frames, centers, indexes), explicit_oracle(frames, centers, indexes), rtol=1e-12, atol=1e-10)


def test_dispatch_cpu_uses_twin_and_accepts_uint8_tokens(seed):
    generator = torch.Generator().manual_seed(seed)
    frames, centers, indexes = random_problem(11, 4, 16, 8, torch.float32, True, generator)
    via_op = mvq_search(frames, centers, indexes.to(torch.uint8), cut=2)
    twin = mvq_search_torch(frames, centers, indexes, cut=2)
    for got, want in zip(via_op, twin):
        assert torch.equal(got, want)
    plain = mvq_search(frames, centers)
    assert plain.top_errors is None and plain.top_indexes is None
    assert torch.equal(plain.errors, mvq_search_torch(frames, centers).errors)


# ------------------------------------------------------------------------- validation, empty


SEARCHES = [mvq_search, mvq_search_torch] + ([mvq_search_triton] if HAS_TRITON else [])


@pytest.mark.parametrize("search", SEARCHES, ids=lambda f: f.__name__)
def test_validation_errors(search):
    frames, centers = torch.randn(4, 6), torch.randn(2, 16, 6)
    indexes = torch.randint(0, 16, (4, 2))
    bad_calls = [
        ((torch.randn(4, 6, 1), centers), "frames must be \\(B, D\\), got shape \\(4, 6, 1\\)"),
        ((frames, torch.randn(16, 6)), "centers must be \\(N, K, D\\), got shape \\(16, 6\\)"),
        ((torch.randn(4, 5), centers), "disagree on D: frames \\(4, 5\\), centers \\(2, 16, 6\\)"),
        ((frames.half(), centers), "share a dtype"),
        ((frames.double(), centers.double()), "float32, float16 or bfloat16"),
        ((frames, centers, torch.randint(0, 16, (4, 3))), "got \\(4, 3\\)"),
        ((frames, centers, indexes.float()), "integer tensor"),
        ((frames, centers, torch.full((4, 2), 16)), "found values in \\[16, 16\\]"),
        ((frames, centers, torch.full((4, 2), -1)), "found values in \\[-1, -1\\]"),
        ((frames, centers, indexes, 17), "cut must be an int in \\[0, K=16\\]"),
        ((frames, centers, indexes, -1), "cut must be"),
        ((frames, centers.to("meta")), "one device"),
    ]
    for args, message in bad_calls:
        with pytest.raises(ValueError, match=message):
            search(*args)


@pytest.mark.parametrize("search", SEARCHES, ids=lambda f: f.__name__)
@pytest.mark.parametrize("cut", [0, 3])
def test_empty_batch(search, cut):
    frames, centers = torch.randn(0, 6), torch.randn(2, 16, 6)
    for indexes in (None, torch.zeros(0, 2, dtype=torch.int64)):
        result = search(frames, centers, indexes, cut=cut)
        assert result.errors.shape == (0, 2, 16) and result.errors.dtype == torch.float32
        assert result.best.shape == (0, 2) and result.best.dtype == torch.int64
        if cut == 0:
            assert result.top_errors is None and result.top_indexes is None
        else:
            assert result.top_errors.shape == result.top_indexes.shape == (0, 2, 3)


# ---------------------------------------------------------------------------- torch.compile


class TinyRefiner(torch.nn.Module):
    """One refine-like step: swap-error table, then every codebook takes its best swap."""

    def __init__(self, centers: torch.Tensor):
        super().__init__()
        self.centers = torch.nn.Parameter(centers, requires_grad=False)

    def forward(self, frames: torch.Tensor, indexes: torch.Tensor):
        result = mvq_search(frames, self.centers, indexes, cut=4)
        return result.best, result.top_errors.sum(dim=-1) * 0.5


def test_torch_compile_fullgraph(seed):
    generator = torch.Generator().manual_seed(seed)
    frames, centers, indexes = random_problem(13, 4, 16, 10, torch.float32, True, generator)
    module = TinyRefiner(centers)
    eager = module(frames, indexes)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")(frames, indexes)
    assert torch.equal(eager[0], compiled[0])
    assert torch.allclose(eager[1], compiled[1], rtol=1e-6, atol=0)
    # The op must exist under its library name.
    assert torch.equal(torch.ops.spear.mvq_search(frames, centers, indexes, 4, True)[1], eager[0])


def test_custom_op_schema_and_fake(seed):
    from torch.library import opcheck

    from kernels.mvq_search import _mvq_search_op

    generator = torch.Generator().manual_seed(seed)
    frames, centers, indexes = random_problem(6, 2, 16, 8, torch.float32, True, generator)
    for args in [(frames, centers, indexes, 3, True), (frames, centers, None, 0, False)]:
        opcheck(_mvq_search_op, args, test_utils=("test_schema", "test_faketensor"))


# ------------------------------------------------------------------------------ AOT compile

SEARCH_SIGNATURE = {
    "rows_ptr": "*fp32",
    "centers_ptr": "*fp32",
    "center_sq_ptr": "*fp32",
    "indexes_ptr": "*i64",
    "errors_ptr": "*fp32",
    "best_ptr": "*i64",
    "B": "i32",
    "N": "i32",
    "K": "i32",
    "D": "i32",
    "HAS_INDEXES": "constexpr",
    "FUSED_ARGMIN": "constexpr",
    "BLOCK_B": "constexpr",
    "BLOCK_K": "constexpr",
    "BLOCK_D": "constexpr",
}
RESIDUAL_SIGNATURE = {
    "frames_ptr": "*fp32",
    "centers_ptr": "*fp32",
    "indexes_ptr": "*i64",
    "residual_ptr": "*fp32",
    "B": "i32",
    "N": "i32",
    "K": "i32",
    "D": "i32",
    "BLOCK_B": "constexpr",
    "BLOCK_D": "constexpr",
}


def aot_jobs() -> list[CompileJob]:
    """Every config the GPU launcher can pick.

    Every tile config is compiled in its heaviest form (fp32 operands, indexed, fused argmin: the
    most shared memory and registers); the other launcher variants (half-precision loads, the plain
    search, the unfused K > 256 form) once each; the residual kernel at its one config."""
    jobs = []
    for block_k, configs in GPU_SEARCH_CONFIGS.items():
        for config in configs:
            constexprs = dict(HAS_INDEXES=True, FUSED_ARGMIN=True, BLOCK_K=block_k,
                              BLOCK_B=config["BLOCK_B"], BLOCK_D=config["BLOCK_D"])
            jobs.append(CompileJob("_mvq_search_kernel", SEARCH_SIGNATURE, constexprs, config["num_warps"], config["num_stages"]))
    # (rows dtype, centers dtype, flags, BLOCK_K, config): the unfused form exists only with 256-wide
    # tiles (K > 256); the dtype of the loads does not depend on the tile, so the cheapest one does.
    variants = [
        ("*bf16", "*bf16", dict(HAS_INDEXES=False, FUSED_ARGMIN=False), 256, GPU_SEARCH_CONFIGS[256][0]),
        ("*fp32", "*fp16", dict(HAS_INDEXES=True, FUSED_ARGMIN=True), 64, GPU_SEARCH_CONFIGS[64][0]),
    ]
    for rows, centers, flags, block_k, config in variants:
        signature = dict(SEARCH_SIGNATURE, rows_ptr=rows, centers_ptr=centers)
        constexprs = dict(flags, BLOCK_K=block_k, BLOCK_B=config["BLOCK_B"], BLOCK_D=config["BLOCK_D"])
        jobs.append(CompileJob("_mvq_search_kernel", signature, constexprs, config["num_warps"], config["num_stages"]))
    constexprs = dict(BLOCK_B=RESIDUAL_CONFIG["BLOCK_B"], BLOCK_D=RESIDUAL_CONFIG["BLOCK_D"])
    jobs.append(CompileJob("_mvq_residual_kernel", RESIDUAL_SIGNATURE, constexprs, RESIDUAL_CONFIG["num_warps"], RESIDUAL_CONFIG["num_stages"]))
    return jobs


@needs_triton
def test_aot_compile_every_config():
    assert sorted(GPU_SEARCH_CONFIGS) == sorted({search_block_k(k) for k in (1, 16, 17, 64, 65, 256, 4096)})
    jobs = aot_jobs()
    for capability, shared in compile_jobs_for_gpu("kernels.mvq_search", jobs).items():
        assert len(shared) == len(jobs)
        assert all(0 <= s <= SHARED_MEMORY_LIMIT[capability] for s in shared), shared


def test_twin_ignores_an_enclosing_autocast_region(seed):
    # The op promises fp32 errors: a caller's bf16 autocast must not reach its GEMMs.
    generator = torch.Generator().manual_seed(seed)
    frames, centers, indexes = random_problem(200, 4, 256, 64, torch.float32, True, generator)
    plain = mvq_search_torch(frames, centers, indexes)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = mvq_search_torch(frames, centers, indexes)
    assert under_autocast.errors.dtype == torch.float32
    torch.testing.assert_close(under_autocast.errors, plain.errors, rtol=1e-6, atol=1e-5)
    assert torch.equal(under_autocast.best, plain.best)
