"""Masked multi-target cross-entropy fused with the head's linear layer (SPEAR.md section 6).

    loss = sum_f w_f * (1/N) * sum_n CE(h_f W_n^T + b_n, y_fn)

hidden h (F, d), weight W (N*K, d) (codebook n owns rows [n*K, (n+1)*K)), bias b (N*K,) or None,
targets y (F, N) integer (-100 = ignored, contributes 0), frame weights w (F,).
`reduction="none"` returns the per-frame terms w_f * (1/N) * sum_n CE (F,).

The (F, N*K) logits never exist at once. Frames that cannot contribute (weight 0, or every target
ignored) are dropped first (finding them waits for the device; skip_empty_frames=False keeps them,
for callers that pass only frames that count); the rest are processed in chunks of rows
(Liger-Kernel's FusedLinearCrossEntropy scheme):

    logits = h_chunk @ W^T                       one GEMM, (C, N*K)
    kernel: logits -> per-(row, codebook) CE     fp32 log-sum-exp per codebook, in place:
            and d loss / d logits                the logits buffer becomes d_logits
    dh_chunk = d_logits @ W ; dW += d_logits^T @ h_chunk ; db += d_logits.sum(0)

With reduction="sum" the gradients are computed in that same pass (stored for grad_output = 1 and
rescaled in backward); with reduction="none" the forward computes the losses only and the backward
recomputes the logits with the per-frame grad_output folded into the row coefficients.

Gradients flow to hidden, weight and bias, and to frame_weights (dL/dw_f = (1/N) sum_n CE_fn):
when frame_weights requires grad, zero-weight frames are kept so their CE is known. targets get no
gradient. The loss is returned in fp32 (float64 for float64 inputs on the torch path).

Dispatch: CUDA tensors -> the Triton kernel; anything else -> the torch twin (same chunked scheme, the
per-chunk step in torch, GEMMs in fp32). `use_triton=True` forces the Triton kernel wherever
`kernels._backend.triton_usable` allows it (CPU tensors under TRITON_INTERPRET=1: the tests).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from kernels._backend import HAS_TRITON, check_same_device, prefer_triton, triton_usable, without_autocast
from kernels._targets import IGNORE_INDEX

if HAS_TRITON:
    import triton
    import triton.language as tl

# Working memory per chunk: the (rows, N*K) logits buffer. Bigger chunks mean bigger GEMMs (better
# use of the hardware) and fewer kernel launches; smaller chunks bound memory. On a GPU 64 MiB holds
# ~2,700 rows at N*K = 24*256 in fp32: a 2,700 x 1024 x 6144 GEMM already fills every SM of an
# H100, while the logits stay ~1/10 of what the plain way stores for F = 30,000. On a CPU a few
# hundred rows already make a GEMM of ~1 GFLOP (BLAS runs near peak), and the buffer is most of the
# op's extra memory besides the gradients themselves: 4 MiB (512 rows at N*K = 8*256).
CUDA_CHUNK_BYTES = 64 * 2**20
CPU_CHUNK_BYTES = 4 * 2**20
MIN_CHUNK_ROWS = 128  # never fewer rows than this per GEMM (tiny chunks waste the GEMM)

# Kernel tile: BLOCK_R rows x BLOCK_K classes of one codebook per program. K <= MAX_BLOCK_K is one
# tile (exact log-sum-exp; K = 256 in SPEAR); larger K loops over tiles with an online log-sum-exp.
# TILE_ELEMS = 4096 fp32 values = 16 per thread at 8 warps: no register spilling, enough rows per
# program to amortise the target/coefficient loads.
MAX_BLOCK_K = 1024
TILE_ELEMS = 4096
MAX_BLOCK_R = 64

_SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


# ------------------------------------------------------------------------------------------------
# Triton kernel
# ------------------------------------------------------------------------------------------------
if HAS_TRITON:

    @triton.jit
    def _ce_chunk_kernel(
        logits_ptr,  # (R, N*K) GEMM dtype; overwritten with d loss / d logits when COMPUTE_GRAD
        logits_stride,
        bias_ptr,  # (N*K,) or a dummy when not HAS_BIAS
        targets_ptr,  # (R, N) int64, -100 = ignored
        targets_stride,
        coef_ptr,  # (R,) fp32: d loss / d CE_rn of each row (frame weight [* grad_output] / N)
        ce_ptr,  # (R, N) fp32 out: CE_rn, 0 where ignored
        R,
        N,
        K,
        HAS_BIAS: tl.constexpr,
        COMPUTE_GRAD: tl.constexpr,
        SINGLE_TILE: tl.constexpr,
        BLOCK_R: tl.constexpr,
        BLOCK_K: tl.constexpr,
    ):
        pid_r = tl.program_id(0)
        n = tl.program_id(1)  # codebook
        rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)  # (BLOCK_R,)
        row_ok = rows < R
        rows64 = rows.to(tl.int64)
        y = tl.load(targets_ptr + rows64 * targets_stride + n, mask=row_ok, other=-100)
        valid = (y != -100) & row_ok
        row_base = logits_ptr + rows64[:, None] * logits_stride + n * K  # (BLOCK_R, 1)
        cols0 = tl.arange(0, BLOCK_K)  # (BLOCK_K,)

        if SINGLE_TILE:
            col_ok = cols0 < K
            mask = row_ok[:, None] & col_ok[None, :]
            x = tl.load(row_base + cols0[None, :], mask=mask, other=float("-inf")).to(tl.float32)
            if HAS_BIAS:
                b = tl.load(bias_ptr + n * K + cols0, mask=col_ok, other=0.0).to(tl.float32)
                x = x + b[None, :]
            m = tl.max(x, 1)
            m = tl.where(row_ok, m, 0.0)  # rows past R: all -inf, keep exp() finite
            e = tl.exp(x - m[:, None])  # (BLOCK_R, BLOCK_K), 0 on masked columns
            s = tl.where(row_ok, tl.sum(e, 1), 1.0)  # rows past R: 1, keep log() finite
            lse = m + tl.log(s)
            is_y = cols0[None, :] == y[:, None]
            x_y = tl.sum(tl.where(is_y, x, 0.0), 1)
            ce = tl.where(valid, lse - x_y, 0.0)
            tl.store(ce_ptr + rows64 * N + n, ce, mask=row_ok)
            if COMPUTE_GRAD:
                coef = tl.load(coef_ptr + rows, mask=row_ok, other=0.0)
                coef = tl.where(valid, coef, 0.0)
                p = e / s[:, None]
                g = (p - tl.where(is_y, 1.0, 0.0)) * coef[:, None]
                tl.store(row_base + cols0[None, :], g.to(logits_ptr.dtype.element_ty), mask=mask)
        else:
            # Online log-sum-exp over K in BLOCK_K tiles, then a second sweep writes the gradient.
            m = tl.full((BLOCK_R,), float("-inf"), tl.float32)
            s = tl.zeros((BLOCK_R,), tl.float32)
            x_y = tl.zeros((BLOCK_R,), tl.float32)
            for k0 in range(0, K, BLOCK_K):
                cols = k0 + cols0
                col_ok = cols < K
                mask = row_ok[:, None] & col_ok[None, :]
                x = tl.load(row_base + cols[None, :], mask=mask, other=float("-inf")).to(tl.float32)
                if HAS_BIAS:
                    b = tl.load(bias_ptr + n * K + cols, mask=col_ok, other=0.0).to(tl.float32)
                    x = x + b[None, :]
                m_new = tl.maximum(m, tl.max(x, 1))
                m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
                s = s * tl.exp(m - m_safe) + tl.sum(tl.exp(x - m_safe[:, None]), 1)
                m = m_new
                x_y += tl.sum(tl.where(cols[None, :] == y[:, None], x, 0.0), 1)
            s = tl.where(row_ok, s, 1.0)  # rows past R: m = -inf, s = 0; keep log() finite
            lse = tl.where(row_ok, m + tl.log(s), 0.0)
            ce = tl.where(valid, lse - x_y, 0.0)
            tl.store(ce_ptr + rows64 * N + n, ce, mask=row_ok)
            if COMPUTE_GRAD:
                coef = tl.load(coef_ptr + rows, mask=row_ok, other=0.0)
                coef = tl.where(valid, coef, 0.0)
                for k0 in range(0, K, BLOCK_K):
                    cols = k0 + cols0
                    col_ok = cols < K
                    mask = row_ok[:, None] & col_ok[None, :]
                    x = tl.load(row_base + cols[None, :], mask=mask, other=float("-inf")).to(tl.float32)
                    if HAS_BIAS:
                        b = tl.load(bias_ptr + n * K + cols, mask=col_ok, other=0.0).to(tl.float32)
                        x = x + b[None, :]
                    p = tl.exp(x - lse[:, None])
                    g = (p - tl.where(cols[None, :] == y[:, None], 1.0, 0.0)) * coef[:, None]
                    tl.store(row_base + cols[None, :], g.to(logits_ptr.dtype.element_ty), mask=mask)


def kernel_config(K: int, block_k: int | None = None) -> dict[str, int | bool]:
    """The tile the launcher picks for K classes per codebook (block_k overrides BLOCK_K)."""
    if block_k is None:
        block_k = min(max(16, triton.next_power_of_2(K)), MAX_BLOCK_K)
    block_r = max(1, min(MAX_BLOCK_R, TILE_ELEMS // block_k))
    return {
        "BLOCK_K": block_k,
        "BLOCK_R": block_r,
        "SINGLE_TILE": block_k >= K,
        "num_warps": 8 if block_r * block_k >= 4096 else 4,
    }


def launcher_configs() -> list[dict[str, int | bool]]:
    """Every (BLOCK_K, BLOCK_R, SINGLE_TILE, num_warps) the launcher can pick, for AOT compile tests."""
    configs = []
    block_k = 16
    while block_k <= MAX_BLOCK_K:
        configs.append(kernel_config(block_k))
        block_k *= 2
    configs.append(kernel_config(MAX_BLOCK_K + 1))  # any K > MAX_BLOCK_K: the online sweep
    return configs


def ce_chunk_triton(
    logits: Tensor,
    targets: Tensor,
    coef: Tensor,
    bias: Tensor | None,
    compute_grad: bool,
    block_k: int | None = None,
) -> Tensor:
    """Per-(row, codebook) CE of a logits chunk with the Triton kernel; returns ce (R, N) fp32.

    logits (R, N*K) contiguous rows (without bias; bias added in the kernel); targets (R, N) int64;
    coef (R,) fp32. With compute_grad, logits is overwritten in place with coef_r * (softmax - onehot)
    (zero on ignored entries).
    """
    R, N = targets.shape
    K = logits.shape[1] // N
    ce = torch.empty((R, N), dtype=torch.float32, device=logits.device)
    if R == 0:
        return ce
    cfg = kernel_config(K, block_k)
    grid = (triton.cdiv(R, cfg["BLOCK_R"]), N)
    _ce_chunk_kernel[grid](
        logits, logits.stride(0),
        bias if bias is not None else coef,
        targets, targets.stride(0),
        coef, ce,
        R, N, K,
        HAS_BIAS=bias is not None,
        COMPUTE_GRAD=compute_grad,
        SINGLE_TILE=cfg["SINGLE_TILE"],
        BLOCK_R=cfg["BLOCK_R"],
        BLOCK_K=cfg["BLOCK_K"],
        num_warps=cfg["num_warps"],
    )
    return ce


# ------------------------------------------------------------------------------------------------
# torch per-chunk step (the twin of the kernel)
# ------------------------------------------------------------------------------------------------
def ce_chunk_torch(
    logits: Tensor, targets: Tensor, coef: Tensor, bias: Tensor | None, compute_grad: bool
) -> Tensor:
    """Same contract as `ce_chunk_triton`, in torch, in place: no chunk-sized temporaries, and few
    passes over the chunk (each op is a thread-pool round trip on a CPU)."""
    R, N = targets.shape
    K = logits.shape[1] // N
    x = logits.view(R, N, K)  # (R, N, K)
    if bias is not None:
        x.add_(bias.view(N, K).to(x.dtype))
    valid = targets != IGNORE_INDEX  # (R, N)
    y = targets.clamp(min=0).unsqueeze(-1)  # (R, N, 1)
    torch.log_softmax(x, dim=-1, out=x)  # row-wise kernel: safe in place; x = log p
    ce = x.gather(-1, y).squeeze(-1).neg_().masked_fill_(~valid, 0.0)  # (R, N)
    if compute_grad:
        c = (coef.to(x.dtype).unsqueeze(1) * valid).unsqueeze(-1)  # (R, N, 1)
        x.exp_().mul_(c)  # coef * softmax
        x.scatter_add_(-1, y, -c)  # - coef at the target
    return ce.float() if ce.dtype != torch.float64 else ce


# ------------------------------------------------------------------------------------------------
# chunked driver (shared by both paths)
# ------------------------------------------------------------------------------------------------
def default_chunk_rows(device: torch.device, num_classes: int) -> int:
    budget = CUDA_CHUNK_BYTES if device.type == "cuda" else CPU_CHUNK_BYTES
    return max(MIN_CHUNK_ROWS, budget // (4 * max(1, num_classes)))


@without_autocast
def _fused_pass(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    targets: Tensor,
    row_scale: Tensor,
    *,
    skip_empty_rows: bool,
    keep_zero_rows: bool,
    grad_hidden: bool,
    grad_weight: bool,
    grad_bias: bool,
    chunk_rows: int,
    use_triton: bool,
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """One chunked sweep over the frames.

    row_scale (F,): d objective / d (mean CE of frame f) (frame weight, times grad_output in the
    reduction="none" backward). skip_empty_rows: leave out rows without a target or (unless
    keep_zero_rows) with row_scale 0; finding them reads the device. Returns frame_ce (F,) = (1/N)
    sum_n CE_fn (fp32; 0 on frames skipped), and dh (F, d), dW (N*K, d), db (N*K,) of
    sum_f row_scale_f * frame_ce_f where asked.
    """
    F, d = hidden.shape
    N = targets.shape[1]
    NK = weight.shape[0]
    compute_grad = grad_hidden or grad_weight or grad_bias
    # Triton path: GEMMs in the input dtype (fp32 accumulation inside), logits buffer in that dtype,
    # the kernel upcasts to fp32. Torch path: GEMMs in fp32 (float64 for float64 inputs).
    if use_triton:
        work_dtype = hidden.dtype
    else:
        work_dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    acc_dtype = torch.float64 if work_dtype == torch.float64 else torch.float32
    w_mat = weight.to(work_dtype)  # (NK, d); no copy when already work_dtype
    b_vec = None if bias is None else bias.to(acc_dtype if not use_triton else bias.dtype)

    frame_ce = torch.zeros(F, dtype=acc_dtype, device=hidden.device)
    dh = torch.zeros_like(hidden) if grad_hidden else None
    dw_acc = torch.zeros((NK, d), dtype=acc_dtype, device=hidden.device) if grad_weight else None
    db_acc = torch.zeros(NK, dtype=acc_dtype, device=hidden.device) if grad_bias else None

    if skip_empty_rows:
        has_target = (targets != IGNORE_INDEX).any(1)  # (F,)
        active = has_target if keep_zero_rows else has_target & (row_scale != 0)
        rows_all = torch.nonzero(active).squeeze(1)  # (F_active,)
        F_active = rows_all.numel()
    else:  # every row goes through: an empty one gets coefficient 0 or only ignored targets
        rows_all, F_active = None, F
    dense = F_active == F  # every frame active: slice instead of gather
    coef_all = (row_scale.to(acc_dtype) / N)  # (F,)
    # The small per-row tensors are gathered once, the chunks below take slices of them.
    y_act = targets if dense else targets.index_select(0, rows_all)  # (F_active, N)
    coef_act = coef_all if dense else coef_all.index_select(0, rows_all)  # (F_active,)
    ce_act = torch.empty((F_active, N), dtype=acc_dtype, device=hidden.device)  # (F_active, N)
    chunk_rows = max(1, min(chunk_rows, F_active)) if F_active else 1
    buf = torch.empty((chunk_rows, NK), dtype=work_dtype, device=hidden.device) if F_active else None
    ones = torch.ones(chunk_rows, dtype=work_dtype, device=hidden.device) if grad_bias else None

    for start in range(0, F_active, chunk_rows):
        stop = min(start + chunk_rows, F_active)
        C = stop - start
        y_c = y_act[start:stop]  # (C, N)
        coef_c = coef_act[start:stop]  # (C,)
        if dense:
            h_c = hidden[start:stop]  # (C, d) view
        else:
            rows = rows_all[start:stop]
            h_c = hidden.index_select(0, rows)  # (C, d)
        h_c = h_c.to(work_dtype)
        logits = buf[:C]  # (C, NK)
        if use_triton:  # the kernel adds the bias
            torch.mm(h_c, w_mat.t(), out=logits)
            ce = ce_chunk_triton(logits, y_c, coef_c.float(), b_vec, compute_grad)
        else:
            if b_vec is None:
                torch.mm(h_c, w_mat.t(), out=logits)
            else:
                torch.addmm(b_vec, h_c, w_mat.t(), out=logits)
            ce = ce_chunk_torch(logits, y_c, coef_c, None, compute_grad)
        ce_act[start:stop] = ce
        if not compute_grad:
            continue
        d_logits = logits  # (C, NK), now d objective / d logits
        if grad_hidden:
            if dense and dh.dtype == work_dtype:
                torch.mm(d_logits, w_mat, out=dh[start:stop])  # (C, d), written in place
            elif dense:
                dh[start:stop] = torch.mm(d_logits, w_mat)
            else:
                dh.index_copy_(0, rows, torch.mm(d_logits, w_mat).to(dh.dtype))
        if grad_weight:
            if d_logits.dtype == acc_dtype:
                dw_acc.addmm_(d_logits.t(), h_c)
            else:
                dw_acc += torch.mm(d_logits.t(), h_c).to(acc_dtype)
        if grad_bias:
            if d_logits.dtype == acc_dtype:  # a GEMV: far faster than a column sum on CPUs
                db_acc.addmv_(d_logits.t(), ones[:C])
            else:
                db_acc += d_logits.sum(0, dtype=acc_dtype)

    if dense:
        frame_ce.copy_(ce_act.sum(1) / N)
    elif F_active:
        frame_ce.index_copy_(0, rows_all, ce_act.sum(1) / N)
    dw = None if dw_acc is None else dw_acc.to(weight.dtype)
    db = None if db_acc is None else db_acc.to(bias.dtype)
    return frame_ce, dh, dw, db


# ------------------------------------------------------------------------------------------------
# torch.library custom ops + autograd
# ------------------------------------------------------------------------------------------------
def _check_target_values(targets: Tensor, K: int) -> None:
    bad = (targets != IGNORE_INDEX) & ((targets < 0) | (targets >= K))  # (F, N)
    if bool(bad.any()):
        f, n = (int(i) for i in torch.nonzero(bad)[0])
        raise ValueError(
            f"linear_multi_target_ce: targets must be in [0, {K}) or {IGNORE_INDEX}; found "
            f"{int(targets[f, n])} at (frame {f}, codebook {n}) ({int(bad.sum())} bad entries)"
        )


def _loss_dtype(hidden: Tensor) -> torch.dtype:
    return torch.float64 if hidden.dtype == torch.float64 else torch.float32


def _empty(ref: Tensor) -> Tensor:
    return ref.new_empty(0)


@torch.library.custom_op("spear::linear_multi_target_ce", mutates_args=())
def _lmtce_op(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    frame_weights: Tensor,
    bias: Optional[Tensor],
    reduction: str,
    check_targets: bool,
    grad_hidden: bool,
    grad_weight: bool,
    grad_bias: bool,
    skip_empty_rows: bool,
    keep_zero_weight_rows: bool,
    chunk_rows: int,
    use_triton: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Returns (loss, frame_ce, dh, dW, db); the gradients (for grad_output = 1) only with
    reduction="sum" and their flag set, else empty tensors."""
    N = targets.shape[1]
    K = weight.shape[0] // N
    targets = targets.to(torch.int64).contiguous()
    if check_targets:
        _check_target_values(targets, K)
    hidden = hidden.contiguous()
    weight = weight.contiguous()
    bias = None if bias is None else bias.contiguous()
    row_scale = frame_weights.to(_loss_dtype(hidden))
    in_pass = reduction == "sum"
    frame_ce, dh, dw, db = _fused_pass(
        hidden, weight, bias, targets, row_scale,
        skip_empty_rows=skip_empty_rows,
        keep_zero_rows=keep_zero_weight_rows,
        grad_hidden=grad_hidden and in_pass,
        grad_weight=grad_weight and in_pass,
        grad_bias=grad_bias and in_pass and bias is not None,
        chunk_rows=chunk_rows,
        use_triton=use_triton,
    )
    per_frame = row_scale * frame_ce  # (F,)
    loss = per_frame.sum() if reduction == "sum" else per_frame
    return (
        loss,
        frame_ce,
        dh if dh is not None else _empty(hidden),
        dw if dw is not None else _empty(weight),
        db if db is not None else _empty(weight),
    )


@_lmtce_op.register_fake
def _lmtce_fake(hidden, weight, targets, frame_weights, bias, reduction, check_targets,
                grad_hidden, grad_weight, grad_bias, skip_empty_rows, keep_zero_weight_rows, chunk_rows, use_triton):
    F = hidden.shape[0]
    dtype = _loss_dtype(hidden)
    in_pass = reduction == "sum"
    loss = hidden.new_empty((), dtype=dtype) if in_pass else hidden.new_empty((F,), dtype=dtype)
    return (
        loss,
        hidden.new_empty((F,), dtype=dtype),
        torch.empty_like(hidden) if grad_hidden and in_pass else _empty(hidden),
        torch.empty_like(weight) if grad_weight and in_pass else _empty(weight),
        torch.empty_like(bias) if (grad_bias and in_pass and bias is not None) else _empty(weight),
    )


@torch.library.custom_op("spear::linear_multi_target_ce_backward", mutates_args=())
def _lmtce_backward_op(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    row_scale: Tensor,
    bias: Optional[Tensor],
    grad_hidden: bool,
    grad_weight: bool,
    grad_bias: bool,
    skip_empty_rows: bool,
    chunk_rows: int,
    use_triton: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of sum_f row_scale_f * frame_ce_f (the reduction="none" backward, recomputed)."""
    targets = targets.to(torch.int64).contiguous()
    hidden = hidden.contiguous()
    weight = weight.contiguous()
    bias = None if bias is None else bias.contiguous()
    _, dh, dw, db = _fused_pass(
        hidden, weight, bias, targets, row_scale.to(_loss_dtype(hidden)),
        skip_empty_rows=skip_empty_rows,
        keep_zero_rows=False,
        grad_hidden=grad_hidden,
        grad_weight=grad_weight,
        grad_bias=grad_bias and bias is not None,
        chunk_rows=chunk_rows,
        use_triton=use_triton,
    )
    return (
        dh if dh is not None else _empty(hidden),
        dw if dw is not None else _empty(weight),
        db if db is not None else _empty(weight),
    )


@_lmtce_backward_op.register_fake
def _lmtce_backward_fake(hidden, weight, targets, row_scale, bias, grad_hidden, grad_weight,
                         grad_bias, skip_empty_rows, chunk_rows, use_triton):
    return (
        torch.empty_like(hidden) if grad_hidden else _empty(hidden),
        torch.empty_like(weight) if grad_weight else _empty(weight),
        torch.empty_like(bias) if (grad_bias and bias is not None) else _empty(weight),
    )


def _setup_context(ctx, inputs, output):
    (hidden, weight, targets, frame_weights, bias, reduction, _check, grad_hidden, grad_weight,
     grad_bias, skip_empty_rows, _keep, chunk_rows, use_triton) = inputs
    _loss, frame_ce, dh, dw, db = output
    ctx.reduction = reduction
    ctx.flags = (grad_hidden, grad_weight, grad_bias and bias is not None)
    ctx.skip_empty_rows = skip_empty_rows
    ctx.chunk_rows = chunk_rows
    ctx.use_triton = use_triton
    ctx.fw_dtype = frame_weights.dtype
    if reduction == "sum":
        ctx.save_for_backward(frame_ce, dh, dw, db)
    else:
        ctx.save_for_backward(frame_ce, hidden, weight, targets, frame_weights, bias)


def _backward(ctx, grad_loss, _g_ce, _g_dh, _g_dw, _g_db):
    grad_hidden, grad_weight, grad_bias = ctx.flags
    need_w = ctx.needs_input_grad[3]
    if ctx.reduction == "sum":
        frame_ce, dh, dw, db = ctx.saved_tensors
        g = grad_loss  # () fp32
        # Rescale the stored gradients in place: no second copy of dh / dW at the backward's peak.
        # A second backward through the same graph (retain_graph=True) is refused by autograd
        # (the saved tensors' version changed), so a gradient is never scaled twice.
        dh = dh.mul_(g) if grad_hidden else None
        dw = dw.mul_(g) if grad_weight else None
        db = db.mul_(g) if grad_bias else None
        d_fw = frame_ce * g if need_w else None
    else:
        frame_ce, hidden, weight, targets, frame_weights, bias = ctx.saved_tensors
        row_scale = grad_loss * frame_weights.to(grad_loss.dtype)  # (F,)
        if grad_hidden or grad_weight or grad_bias:
            dh, dw, db = _lmtce_backward_op(
                hidden, weight, targets, row_scale, bias, grad_hidden, grad_weight, grad_bias,
                ctx.skip_empty_rows, ctx.chunk_rows, ctx.use_triton,
            )
        dh = dh if grad_hidden else None
        dw = dw if grad_weight else None
        db = db if grad_bias else None
        d_fw = frame_ce * grad_loss if need_w else None
    if d_fw is not None:
        d_fw = d_fw.to(ctx.fw_dtype)
    return dh, dw, None, d_fw, db, None, None, None, None, None, None, None, None, None


torch.library.register_autograd(
    "spear::linear_multi_target_ce", _backward, setup_context=_setup_context
)


# ------------------------------------------------------------------------------------------------
# public API
# ------------------------------------------------------------------------------------------------
def _validate(hidden, weight, targets, frame_weights, bias, reduction) -> None:
    op = "linear_multi_target_ce"
    for name, t in (("hidden", hidden), ("weight", weight), ("targets", targets),
                    ("frame_weights", frame_weights), ("bias", bias)):
        if t is not None and not isinstance(t, Tensor):
            raise ValueError(f"{op}: {name} must be a torch.Tensor, found {type(t).__name__}")
    if reduction not in ("sum", "none"):
        raise ValueError(f"{op}: reduction must be 'sum' or 'none', found {reduction!r}")
    if hidden.dim() != 2:
        raise ValueError(f"{op}: hidden must be (F, d), found shape {tuple(hidden.shape)}")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[1]:
        raise ValueError(
            f"{op}: weight must be (N*K, d) with d = hidden.shape[1] = {hidden.shape[1]}, found "
            f"weight {tuple(weight.shape)}, hidden {tuple(hidden.shape)}"
        )
    if targets.dim() != 2 or targets.shape[0] != hidden.shape[0] or targets.shape[1] == 0:
        raise ValueError(
            f"{op}: targets must be (F, N) with F = hidden.shape[0] = {hidden.shape[0]} and N >= 1, "
            f"found targets {tuple(targets.shape)}, hidden {tuple(hidden.shape)}"
        )
    N = targets.shape[1]
    if weight.shape[0] == 0 or weight.shape[0] % N != 0:
        raise ValueError(
            f"{op}: weight rows must be N*K with N = targets.shape[1] = {N}, found weight "
            f"{tuple(weight.shape)} ({weight.shape[0]} rows, not a positive multiple of {N})"
        )
    if frame_weights.shape != (hidden.shape[0],):
        raise ValueError(
            f"{op}: frame_weights must be (F,) = ({hidden.shape[0]},), found {tuple(frame_weights.shape)}"
        )
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(
            f"{op}: bias must be (N*K,) = ({weight.shape[0]},), found {tuple(bias.shape)}"
        )
    if hidden.dtype not in _SUPPORTED_DTYPES:
        raise ValueError(f"{op}: hidden dtype must be one of {_SUPPORTED_DTYPES}, found {hidden.dtype}")
    if weight.dtype != hidden.dtype or (bias is not None and bias.dtype != hidden.dtype):
        raise ValueError(
            f"{op}: hidden, weight and bias must share a dtype, found hidden {hidden.dtype}, "
            f"weight {weight.dtype}, bias {None if bias is None else bias.dtype}"
        )
    if targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool:
        raise ValueError(f"{op}: targets must be an integer tensor, found {targets.dtype}")
    if not frame_weights.dtype.is_floating_point:
        raise ValueError(f"{op}: frame_weights must be floating point, found {frame_weights.dtype}")
    check_same_device(op, hidden=hidden, weight=weight, targets=targets, frame_weights=frame_weights, bias=bias)


def linear_multi_target_ce(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    frame_weights: Tensor,
    bias: Tensor | None = None,
    reduction: str = "sum",
    check_targets: bool = True,
    *,
    chunk_size: int | None = None,
    use_triton: bool | None = None,
    check: bool = True,
    skip_empty_frames: bool = True,
) -> Tensor:
    """sum_f w_f * (1/N) * sum_n CE(h_f W_n^T + b_n, y_fn) without materialising (F, N*K) logits.

    hidden (F, d); weight (N*K, d); targets (F, N) int, -100 = ignored; frame_weights (F,);
    bias (N*K,) or None. reduction="sum" -> () fp32 loss; "none" -> (F,) per-frame losses.
    check_targets: ValueError on targets outside [0, K) other than -100 (one cheap pass, syncs the
    device; turn off for speed once the data is trusted). chunk_size: rows per GEMM chunk (default:
    sized by CUDA_CHUNK_BYTES / CPU_CHUNK_BYTES). use_triton: None = CUDA -> Triton, else torch;
    True forces the Triton kernel (CUDA, or any device under TRITON_INTERPRET=1); False the twin.
    check=False skips all input checks, check_targets' too (for callers that built their inputs to
    shape, like spear_fast.objective). skip_empty_frames=False sends every frame through the GEMMs
    instead of first finding those without a target or weight (a device sync); the result is the same.
    """
    if check:
        _validate(hidden, weight, targets, frame_weights, bias, reduction)
    if use_triton is None:
        use_triton = prefer_triton(hidden, weight) and hidden.dtype != torch.float64
    elif use_triton:
        if not triton_usable(hidden, weight, targets, frame_weights):
            raise ValueError(
                "linear_multi_target_ce: use_triton=True needs triton and CUDA tensors (or "
                f"TRITON_INTERPRET=1); found triton installed={HAS_TRITON}, device {hidden.device}"
            )
        if hidden.dtype == torch.float64:
            raise ValueError("linear_multi_target_ce: the Triton kernel takes fp32/fp16/bf16, found float64")
    if chunk_size is None:
        chunk_size = default_chunk_rows(hidden.device, weight.shape[0])
    elif chunk_size < 1:
        raise ValueError(f"linear_multi_target_ce: chunk_size must be >= 1, found {chunk_size}")
    grad_on = torch.is_grad_enabled()
    grad_hidden = grad_on and hidden.requires_grad
    grad_weight = grad_on and weight.requires_grad
    grad_bias = grad_on and bias is not None and bias.requires_grad
    keep_zero = grad_on and frame_weights.requires_grad
    loss, _frame_ce, _dh, _dw, _db = _lmtce_op(
        hidden, weight, targets, frame_weights, bias, reduction, check_targets and check,
        grad_hidden, grad_weight, grad_bias, skip_empty_frames, keep_zero, int(chunk_size), bool(use_triton),
    )
    return loss


def linear_multi_target_ce_torch(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    frame_weights: Tensor,
    bias: Tensor | None = None,
    reduction: str = "sum",
    check_targets: bool = True,
    *,
    chunk_size: int | None = None,
) -> Tensor:
    """The pure-torch twin (the CPU path): same chunked scheme, per-chunk step in torch, fp32 GEMMs."""
    return linear_multi_target_ce(
        hidden, weight, targets, frame_weights, bias, reduction, check_targets,
        chunk_size=chunk_size, use_triton=False,
    )


__all__ = ["linear_multi_target_ce", "linear_multi_target_ce_torch"]
