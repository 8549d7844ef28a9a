"""Op 1: multi-codebook nearest-centre search (the GEMM of MVQ encode, SPEAR.md section 3).

    mvq_search(frames, centers, indexes=None, cut=0) -> MVQSearchResult(errors, best, top_errors, top_indexes)

frames (B, D), centers (N, K, D), indexes (B, N) integer (optional). For every frame b, codebook n
and centre k it gives the squared error of a per-codebook target t_bn against C[n, k]:

    errors[b, n, k] = ||t_bn - C[n, k]||^2, with
      t_bn = x_b                                      without indexes (plain nearest centre), and
      t_bn = C[n, z_bn] - e_b,  e_b = sum_m C[m, z_bm] - x_b   with indexes z,

so with indexes errors[b, n, k] = ||e_b - C[n, z_bn] + C[n, k]||^2, the swap-error table of the MVQ
refine pass (the error if codebook n alone switched to k; `multi_quantization.Quantizer._refine_indexes`).
Then best = per-codebook argmin (ties -> lowest index, like torch.argmin) and, when cut > 0, the
`cut` smallest errors per (b, n) ordered by (error, index).

Computed with the GEMM + norm trick ||t||^2 + ||c||^2 - 2<t, c>; (B, N, K, D) never exists. fp32,
fp16 or bf16 inputs, fp32 accumulation, fp32 errors. Not differentiable (encoding is a search).

Paths: CUDA tensors -> the Triton kernel (`mvq_search_triton`); anything else -> the torch twin
(`mvq_search_torch`, a chunked CPU implementation). `mvq_search` is registered as the
torch.library op "spear::mvq_search", so a torch.compile'd module calls it without a graph break.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

from kernels._backend import (
    HAS_TRITON,
    check_same_device,
    interpreting,
    prefer_triton,
    require_triton,
    triton_usable,
    without_autocast,
)

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Largest K whose whole row of centres one program covers, so the per-codebook argmin is fused into
# the kernel's epilogue. MVQ uses K = 256 (and K = 16 in training phase 1). Larger K is tiled over
# several programs and the argmin runs in torch on the written errors.
FUSED_ARGMIN_MAX_K = 256

if HAS_TRITON:
    import triton
    import triton.language as tl

    # Precision of the fp32 tl.dot: "tf32x3" splits each operand into a tf32 high and low part and
    # sums three tensor-core products, ~fp32 accuracy (plain tf32 costs ~1e-3 relative error and flips
    # near-tied argmins) at tensor-core speed; "ieee" (FMA) compiles to huge code and runs slower. A
    # native fp16/bf16 dot would be faster still, but the GEMM (2*B*N*K*D flops) is not the
    # bottleneck of MVQ encode, and one operand dtype keeps the compiled variants few.
    FP32_DOT_PRECISION = tl.constexpr("tf32x3")

    @triton.jit
    def _mvq_residual_kernel(
        frames_ptr,  # (B, D) any float dtype
        centers_ptr,  # (N, K, D) any float dtype
        indexes_ptr,  # (B, N) int64
        residual_ptr,  # (B, D) fp32 out: e = sum_n C[n, z_n] - x
        B,
        N,
        K,
        D,
        BLOCK_B: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        pid_b = tl.program_id(0)
        pid_d = tl.program_id(1)
        offs_b = (pid_b * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)  # (BLOCK_B,)
        offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)  # (BLOCK_D,)
        mask_b = offs_b < B
        mask = mask_b[:, None] & (offs_d[None, :] < D)  # (BLOCK_B, BLOCK_D)
        acc = -tl.load(frames_ptr + offs_b[:, None] * D + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
        for n in range(0, N):
            z = tl.load(indexes_ptr + offs_b * N + n, mask=mask_b, other=0)  # (BLOCK_B,)
            row = (n * K + z).to(tl.int64) * D  # (BLOCK_B,) offset of C[n, z_bn]
            acc += tl.load(centers_ptr + row[:, None] + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
        tl.store(residual_ptr + offs_b[:, None] * D + offs_d[None, :], acc, mask=mask)

    @triton.jit
    def _mvq_search_kernel(
        rows_ptr,  # (B, D): frames x (no indexes; input dtype) or residuals e (with indexes; fp32)
        centers_ptr,  # (N, K, D) input dtype
        center_sq_ptr,  # (N, K) fp32: ||C[n, k]||^2
        indexes_ptr,  # (B, N) int64 (unused without indexes)
        errors_ptr,  # (B, N, K) fp32 out
        best_ptr,  # (B, N) int64 out (written only when FUSED_ARGMIN)
        B,
        N,
        K,
        D,
        HAS_INDEXES: tl.constexpr,
        FUSED_ARGMIN: tl.constexpr,  # one program covers all K centres of its codebook
        BLOCK_B: tl.constexpr,
        BLOCK_K: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        # One program: BLOCK_B frames x codebook n x BLOCK_K centres; loop over D in BLOCK_D slices.
        pid_b = tl.program_id(0)
        n = tl.program_id(1)
        pid_k = tl.program_id(2)
        offs_b = (pid_b * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)  # (BLOCK_B,)
        offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)  # (BLOCK_K,)
        mask_b = offs_b < B
        mask_k = offs_k < K
        codebook = centers_ptr + n.to(tl.int64) * K * D
        center_rows = offs_k.to(tl.int64) * D  # (BLOCK_K,)
        if HAS_INDEXES:
            z = tl.load(indexes_ptr + offs_b * N + n, mask=mask_b, other=0)  # (BLOCK_B,)
            current_rows = z.to(tl.int64) * D  # (BLOCK_B,) offset of C[n, z_bn] in the codebook

        dots = tl.zeros((BLOCK_B, BLOCK_K), dtype=tl.float32)  # <t_bn, C[n, k]>
        target_sq = tl.zeros((BLOCK_B,), dtype=tl.float32)  # ||t_bn||^2
        for d0 in range(0, D, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)  # (BLOCK_D,)
            mask_d = offs_d < D
            row_mask = mask_b[:, None] & mask_d[None, :]  # (BLOCK_B, BLOCK_D)
            rows = tl.load(rows_ptr + offs_b[:, None] * D + offs_d[None, :], mask=row_mask, other=0.0)
            if HAS_INDEXES:
                current = tl.load(codebook + current_rows[:, None] + offs_d[None, :], mask=row_mask, other=0.0)
                target = current.to(tl.float32) - rows.to(tl.float32)  # (BLOCK_B, BLOCK_D) t = C[n,z] - e
            else:
                target = rows.to(tl.float32)  # (BLOCK_B, BLOCK_D) t = x
            target_sq += tl.sum(target * target, axis=1)
            centres = tl.load(
                codebook + center_rows[:, None] + offs_d[None, :],
                mask=mask_k[:, None] & mask_d[None, :],
                other=0.0,
            )  # (BLOCK_K, BLOCK_D)
            # fp16/bf16 are loaded then upcast: the dot runs on fp32 operands (the targets C[n,z] - e
            # are fp32 anyway), so every dtype gives the upcast result.
            dots = tl.dot(target, tl.trans(centres.to(tl.float32)), dots, input_precision=FP32_DOT_PRECISION)

        center_sq = tl.load(center_sq_ptr + n * K + offs_k, mask=mask_k, other=0.0)  # (BLOCK_K,)
        errors = target_sq[:, None] + center_sq[None, :] - 2.0 * dots  # (BLOCK_B, BLOCK_K)
        out_rows = (offs_b * N + n) * K  # (BLOCK_B,)
        tl.store(
            errors_ptr + out_rows[:, None] + offs_k[None, :],
            errors,
            mask=mask_b[:, None] & mask_k[None, :],
        )
        if FUSED_ARGMIN:
            # Lowest index among the minima, spelled out (two reductions) rather than relying on
            # tl.argmin's tie rule, which the interpreter does not reproduce.
            masked = tl.where(mask_k[None, :], errors, float("inf"))  # (BLOCK_B, BLOCK_K)
            smallest = tl.min(masked, axis=1)  # (BLOCK_B,)
            # NaN errors (from NaN inputs) count as minima, so best always stays in [0, K).
            hit = (masked == smallest[:, None]) | (masked != masked)
            candidates = tl.where(hit, offs_k[None, :], BLOCK_K)
            best = tl.min(candidates, axis=1)  # (BLOCK_B,)
            tl.store(best_ptr + offs_b * N + n, best.to(tl.int64), mask=mask_b)


def search_block_k(num_centers: int) -> int:
    """BLOCK_K the launcher uses for K centres: 16 (K <= 16, phase-1 codebooks), 64 (K <= 64), else
    256 (K = 256 in one program so the argmin is fused; larger K in 256-wide tiles). Three values
    keep the configs to compile (and AOT-test) few; tl.dot needs every block dimension >= 16."""
    if num_centers <= 16:
        return 16
    if num_centers <= 64:
        return 64
    return 256


# Tile configs of the search kernel, per BLOCK_K (Liger-Kernel style: the choice explained here).
#  BLOCK_B frames share each (BLOCK_K, BLOCK_D) tile of centres, so larger BLOCK_B means fewer re-reads
#  of the codebooks; BLOCK_D is the depth of one tl.dot step. The operand tiles take
#  (BLOCK_B + BLOCK_K) * BLOCK_D * 4 bytes per pipeline stage (fp32 after upcast): 40 KiB for 64 x 256
#  x 32, 48 KiB for 128 x 256 x 32; the compiler reports 96 / 64 KiB shared on sm_80 and 160 / 128 KiB
#  on sm_90 for the two K=256 configs, under the 163 / 227 KiB limits (tests compile all of them).
#  The fp32 accumulator BLOCK_B x BLOCK_K is spread over num_warps * 32 threads: 64 x 256 over 8 warps
#  is 64 registers each, 128 x 256 is 128 (hence only 2 stages there).
#  On a GPU the autotuner picks among the configs of the BLOCK_K in use (keyed on K, D and the mode);
#  under the interpreter there is exactly one per BLOCK_K (no benchmarking, tiny frame blocks).
GPU_SEARCH_CONFIGS: dict[int, list[dict]] = {
    256: [
        dict(BLOCK_B=64, BLOCK_D=32, num_warps=8, num_stages=3),
        dict(BLOCK_B=128, BLOCK_D=32, num_warps=8, num_stages=2),
    ],
    64: [dict(BLOCK_B=64, BLOCK_D=64, num_warps=4, num_stages=3)],
    16: [dict(BLOCK_B=128, BLOCK_D=64, num_warps=4, num_stages=3)],
}
INTERPRETER_SEARCH_CONFIG = dict(BLOCK_B=32, BLOCK_D=16, num_warps=4, num_stages=1)
# The residual kernel is a gather-and-add, memory bound: 32 frames x 256 dims per program, 4 warps.
RESIDUAL_CONFIG = dict(BLOCK_B=32, BLOCK_D=256, num_warps=4, num_stages=1)
INTERPRETER_RESIDUAL_CONFIG = dict(BLOCK_B=16, BLOCK_D=32, num_warps=4, num_stages=1)


if HAS_TRITON:

    def _prune_search_configs(configs, named_args, **kwargs):
        block_k = search_block_k(named_args["K"])
        return [config for config in configs if config.kwargs["BLOCK_K"] == block_k]

    def _autotune_configs() -> list:
        table = (
            {block_k: [INTERPRETER_SEARCH_CONFIG] for block_k in GPU_SEARCH_CONFIGS}
            if interpreting()
            else GPU_SEARCH_CONFIGS
        )
        return [
            triton.Config(
                {"BLOCK_B": c["BLOCK_B"], "BLOCK_K": block_k, "BLOCK_D": c["BLOCK_D"]},
                num_warps=c["num_warps"],
                num_stages=c["num_stages"],
            )
            for block_k, configs in table.items()
            for c in configs
        ]

    _mvq_search_tuned = triton.autotune(
        configs=_autotune_configs(),
        key=["K", "D", "HAS_INDEXES"],
        prune_configs_by={"early_config_prune": _prune_search_configs},
    )(_mvq_search_kernel)


class MVQSearchResult(NamedTuple):
    errors: torch.Tensor  # (B, N, K) fp32 squared errors
    best: torch.Tensor  # (B, N) int64 per-codebook argmin (lowest index on ties)
    top_errors: Optional[torch.Tensor]  # (B, N, cut) fp32 ascending, None when cut == 0
    top_indexes: Optional[torch.Tensor]  # (B, N, cut) int64, ordered by (error, index), None when cut == 0


# ----------------------------------------------------------------------------------------------
# validation


def _validate(frames: torch.Tensor, centers: torch.Tensor, indexes: Optional[torch.Tensor], cut: int) -> None:
    op = "mvq_search"
    if not isinstance(frames, torch.Tensor) or not isinstance(centers, torch.Tensor):
        raise ValueError(f"{op}: frames and centers must be tensors, got {type(frames)} and {type(centers)}")
    if frames.dim() != 2:
        raise ValueError(f"{op}: frames must be (B, D), got shape {tuple(frames.shape)}")
    if centers.dim() != 3:
        raise ValueError(f"{op}: centers must be (N, K, D), got shape {tuple(centers.shape)}")
    num_codebooks, num_centers, dim = centers.shape
    if num_codebooks < 1 or num_centers < 1 or dim < 1:
        raise ValueError(f"{op}: centers (N, K, D) needs N, K, D >= 1, got shape {tuple(centers.shape)}")
    if frames.shape[1] != dim:
        raise ValueError(
            f"{op}: frames (B, D) and centers (N, K, D) disagree on D: frames {tuple(frames.shape)}, "
            f"centers {tuple(centers.shape)}"
        )
    if frames.dtype not in SUPPORTED_DTYPES or centers.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"{op}: frames/centers must be float32, float16 or bfloat16, got {frames.dtype} / {centers.dtype}")
    if frames.dtype != centers.dtype:
        raise ValueError(f"{op}: frames and centers must share a dtype, got {frames.dtype} and {centers.dtype}")
    if indexes is not None:
        if not isinstance(indexes, torch.Tensor):
            raise ValueError(f"{op}: indexes must be a tensor or None, got {type(indexes)}")
        if indexes.dtype.is_floating_point or indexes.dtype.is_complex or indexes.dtype == torch.bool:
            raise ValueError(f"{op}: indexes must be an integer tensor, got {indexes.dtype}")
        if indexes.shape != (frames.shape[0], num_codebooks):
            raise ValueError(
                f"{op}: indexes must be (B, N) = ({frames.shape[0]}, {num_codebooks}) for frames "
                f"{tuple(frames.shape)} and centers {tuple(centers.shape)}, got {tuple(indexes.shape)}"
            )
    if isinstance(cut, bool) or not isinstance(cut, int) or not 0 <= cut <= num_centers:
        raise ValueError(f"{op}: cut must be an int in [0, K={num_centers}], got {cut!r}")
    check_same_device(op, frames=frames, centers=centers, indexes=indexes)


def _check_index_range(indexes: torch.Tensor, num_centers: int) -> None:
    if indexes.numel() == 0:
        return
    low, high = int(indexes.min()), int(indexes.max())
    if low < 0 or high >= num_centers:
        raise ValueError(f"mvq_search: indexes must lie in [0, K={num_centers}), found values in [{low}, {high}]")


def _top(errors: torch.Tensor, cut: int) -> tuple[torch.Tensor, torch.Tensor]:
    # A stable sort keeps equal errors in index order, so the top list is ordered by (error, index)
    # exactly; topk gives no tie order. K <= a few hundred, so the sort is cheap next to the GEMM.
    values, order = torch.sort(errors, dim=-1, stable=True)  # (B, N, K)
    return values[..., :cut].contiguous(), order[..., :cut].contiguous()


def _empty_result(frames: torch.Tensor, centers: torch.Tensor, cut: int) -> MVQSearchResult:
    num_codebooks, num_centers, _ = centers.shape
    device = frames.device
    errors = torch.empty(0, num_codebooks, num_centers, dtype=torch.float32, device=device)
    best = torch.empty(0, num_codebooks, dtype=torch.int64, device=device)
    if cut == 0:
        return MVQSearchResult(errors, best, None, None)
    top_errors = torch.empty(0, num_codebooks, cut, dtype=torch.float32, device=device)
    top_indexes = torch.empty(0, num_codebooks, cut, dtype=torch.int64, device=device)
    return MVQSearchResult(errors, best, top_errors, top_indexes)


# ----------------------------------------------------------------------------------------------
# Triton launcher


def mvq_search_triton(
    frames: torch.Tensor,
    centers: torch.Tensor,
    indexes: Optional[torch.Tensor] = None,
    cut: int = 0,
    *,
    check_indexes: bool = True,
) -> MVQSearchResult:
    """The Triton path of `mvq_search` on any tensors the Triton backend can take (CUDA, or CPU
    under TRITON_INTERPRET=1). Same arguments and result as `mvq_search`."""
    require_triton("mvq_search_triton")
    _validate(frames, centers, indexes, cut)
    if not triton_usable(frames, centers):
        raise ValueError(
            f"mvq_search_triton: tensors on {frames.device} need CUDA (or TRITON_INTERPRET=1 set before triton is imported)"
        )
    num_frames = frames.shape[0]
    num_codebooks, num_centers, dim = centers.shape
    if indexes is not None and check_indexes:
        _check_index_range(indexes, num_centers)
    if num_frames == 0:
        return _empty_result(frames, centers, cut)

    frames = frames.contiguous()
    centers = centers.contiguous()
    device = frames.device
    center_sq = torch.linalg.vector_norm(centers, dim=-1, dtype=torch.float32).square()  # (N, K)
    errors = torch.empty(num_frames, num_codebooks, num_centers, dtype=torch.float32, device=device)
    best = torch.empty(num_frames, num_codebooks, dtype=torch.int64, device=device)

    if indexes is not None:
        indexes = indexes.to(torch.int64).contiguous()  # (B, N)
        rows = torch.empty(num_frames, dim, dtype=torch.float32, device=device)  # (B, D) e = sum C[n,z] - x
        rcfg = INTERPRETER_RESIDUAL_CONFIG if interpreting() else RESIDUAL_CONFIG
        grid = (triton.cdiv(num_frames, rcfg["BLOCK_B"]), triton.cdiv(dim, rcfg["BLOCK_D"]))
        _mvq_residual_kernel[grid](
            frames, centers, indexes, rows, num_frames, num_codebooks, num_centers, dim,
            BLOCK_B=rcfg["BLOCK_B"], BLOCK_D=rcfg["BLOCK_D"],
            num_warps=rcfg["num_warps"], num_stages=rcfg["num_stages"],
        )
    else:
        indexes = best  # placeholder pointer, never read without HAS_INDEXES
        rows = frames

    fused_argmin = num_centers <= FUSED_ARGMIN_MAX_K

    def grid(meta):
        return (
            triton.cdiv(num_frames, meta["BLOCK_B"]),
            num_codebooks,
            triton.cdiv(num_centers, meta["BLOCK_K"]),
        )

    _mvq_search_tuned[grid](
        rows, centers, center_sq, indexes, errors, best,
        num_frames, num_codebooks, num_centers, dim,
        HAS_INDEXES=rows is not frames, FUSED_ARGMIN=fused_argmin,
    )
    if not fused_argmin:
        best = errors.argmin(dim=-1)
    if cut == 0:
        return MVQSearchResult(errors, best, None, None)
    return MVQSearchResult(errors, best, *_top(errors, cut))


# ----------------------------------------------------------------------------------------------
# torch twin (the CPU path)

# Frames per chunk of the twin: the per-codebook targets (chunk, N, D) and the errors block
# (chunk, N, K) live at once; 2**24 fp32 elements (64 MiB) bounds the larger of the two.
TWIN_CHUNK_ELEMENTS = 1 << 24


@without_autocast
def mvq_search_torch(
    frames: torch.Tensor,
    centers: torch.Tensor,
    indexes: Optional[torch.Tensor] = None,
    cut: int = 0,
    *,
    check_indexes: bool = True,
) -> MVQSearchResult:
    """The torch twin of `mvq_search` (its CPU path): fp32 GEMM + norm trick, chunked over frames so
    memory stays ~TWIN_CHUNK_ELEMENTS floats above the output. Same arguments and result."""
    _validate(frames, centers, indexes, cut)
    num_frames = frames.shape[0]
    num_codebooks, num_centers, dim = centers.shape
    if indexes is not None and check_indexes:
        _check_index_range(indexes, num_centers)
    if num_frames == 0:
        return _empty_result(frames, centers, cut)

    centers32 = centers.to(torch.float32)  # (N, K, D), no copy when already fp32
    flat_centers = centers32.reshape(num_codebooks * num_centers, dim)  # (N*K, D)
    center_sq = torch.linalg.vector_norm(flat_centers, dim=-1).square()  # (N*K,), no (N*K, D) temporary
    errors = torch.empty(num_frames, num_codebooks, num_centers, dtype=torch.float32, device=frames.device)
    chunk = max(1, TWIN_CHUNK_ELEMENTS // (num_codebooks * max(dim, num_centers)))

    if indexes is None:
        flat_errors = errors.view(num_frames, num_codebooks * num_centers)  # (B, N*K)
        for start in range(0, num_frames, chunk):
            x = frames[start : start + chunk].to(torch.float32)  # (b, D)
            out = flat_errors[start : start + chunk]  # (b, N*K)
            torch.mm(x, flat_centers.t(), out=out)  # <x, C>
            out.mul_(-2.0).add_(center_sq).add_(x.square().sum(dim=-1, keepdim=True))
    else:
        # Row of C[n, z_bn] in flat_centers, for every (b, n).
        offsets = torch.arange(num_codebooks, device=frames.device) * num_centers  # (N,)
        flat_indexes = indexes.to(torch.int64) + offsets  # (B, N)
        center_sq_nk = center_sq.view(num_codebooks, 1, num_centers)  # (N, 1, K)
        centers_t = centers32.transpose(1, 2)  # (N, D, K)
        for start in range(0, num_frames, chunk):
            rows = flat_indexes[start : start + chunk]  # (b, N)
            x = frames[start : start + chunk].to(torch.float32)  # (b, D)
            residual = F.embedding_bag(rows, flat_centers, mode="sum") - x  # (b, D) e
            current = F.embedding(rows, flat_centers)  # (b, N, D) C[n, z_bn]
            targets = (current - residual.unsqueeze(1)).transpose(0, 1)  # (N, b, D) t = C[n,z] - e
            target_sq = targets.square().sum(dim=-1, keepdim=True)  # (N, b, 1)
            block = torch.baddbmm(center_sq_nk + target_sq, targets, centers_t, alpha=-2.0)  # (N, b, K)
            errors[start : start + chunk] = block.transpose(0, 1)

    best = errors.argmin(dim=-1)  # (B, N), first minimum on ties
    if cut == 0:
        return MVQSearchResult(errors, best, None, None)
    return MVQSearchResult(errors, best, *_top(errors, cut))


# ----------------------------------------------------------------------------------------------
# torch.library op + the public entry point


@torch.library.custom_op("spear::mvq_search", mutates_args=())
def _mvq_search_op(
    frames: torch.Tensor, centers: torch.Tensor, indexes: Optional[torch.Tensor], cut: int, check_indexes: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    # A custom op cannot return None: a cut of 0 comes back as empty (B, N, 0) tensors.
    tensors = (frames, centers) if indexes is None else (frames, centers, indexes)
    impl = mvq_search_triton if prefer_triton(*tensors) else mvq_search_torch
    result = impl(frames, centers, indexes, cut, check_indexes=check_indexes)
    if result.top_errors is None:
        shape = (frames.shape[0], centers.shape[0], 0)
        top_errors = torch.empty(shape, dtype=torch.float32, device=frames.device)
        top_indexes = torch.empty(shape, dtype=torch.int64, device=frames.device)
        return result.errors, result.best, top_errors, top_indexes
    return result.errors, result.best, result.top_errors, result.top_indexes


@_mvq_search_op.register_fake
def _(frames, centers, indexes, cut, check_indexes):
    num_frames = frames.shape[0]
    num_codebooks, num_centers, _ = centers.shape
    return (
        frames.new_empty((num_frames, num_codebooks, num_centers), dtype=torch.float32),
        frames.new_empty((num_frames, num_codebooks), dtype=torch.int64),
        frames.new_empty((num_frames, num_codebooks, cut), dtype=torch.float32),
        frames.new_empty((num_frames, num_codebooks, cut), dtype=torch.int64),
    )


def mvq_search(
    frames: torch.Tensor,
    centers: torch.Tensor,
    indexes: Optional[torch.Tensor] = None,
    cut: int = 0,
    *,
    check_indexes: bool = True,
) -> MVQSearchResult:
    """Per-codebook squared errors, argmin and top-`cut` list (see the module docstring).

    frames (B, D), centers (N, K, D) of one float dtype; indexes (B, N) integer in [0, K) or None;
    0 <= cut <= K. check_indexes=False skips the index-range check (a device sync on CUDA).
    Returns MVQSearchResult(errors (B, N, K) fp32, best (B, N) int64, top_errors (B, N, cut) fp32 or
    None, top_indexes (B, N, cut) int64 or None). Raises ValueError on bad shapes/dtypes/devices/indexes.
    """
    _validate(frames, centers, indexes, cut)
    errors, best, top_errors, top_indexes = _mvq_search_op(frames, centers, indexes, cut, check_indexes)
    if cut == 0:
        return MVQSearchResult(errors, best, None, None)
    return MVQSearchResult(errors, best, top_errors, top_indexes)


__all__ = ["MVQSearchResult", "mvq_search", "mvq_search_torch", "mvq_search_triton"]
