"""MVQ encode: the first guess (argmax of the logits) and the refine pass (hierarchical beam search).

The refine pass makes the reference's decisions (`multi_quantization.Quantizer._refine_indexes`,
0.1.1): the same swap-error table S (op 1, `kernels.mvq_search`), the same cut schedule (base 8 if
K <= 16 else 16, doubled each time the group size L reaches 4, 16, 64, ..., capped at 128), prune
when a group has more than `cut` candidates or one group is left, merge groups (2g, 2g+1) with the
even group's candidate as the major index, the same joint error (S_a + S_b) - ||e||^2 + 2<d_a, d_b>,
and the first minimum at the end. Prunes keep the `cut` smallest in (error, position) order, which
is what the reference's sort gives (torch's CPU sort is stable); they use top-(cut+1) selection
instead of a full sort, and redo with the stable sort only the rows where two of those cut+1 errors
are equal (float32 ties are not rare among 1024 joint errors, so this matters).

What differs is how the cross term <d_a, d_b> is obtained, d_a = sum_{n in a} C[n, k_n] - C[n, z_n]
being the change of group a's reconstruction. A hybrid, chosen per merge by the group size L:
  - L <= GRAM_MAX_GROUP (the first two merges): Gram look-ups. With G = C C^T, the (N*K, N*K) Gram
    matrix of all centres (cached by the quantiser),
        <d_a, d_b> = sum_{n in a, m in b} G(k_n, k_m) - G(k_n, z_m) - G(z_n, k_m) + G(z_n, z_m),
    i.e. L^2 look-ups per candidate pair (1 or 4) instead of D multiply-adds;
  - larger L (groups of 4 and 8 codebooks for N=16, cut 32, where an entry would need 16-64
    look-ups): explicit change vectors d (b, G, cut, D), built once with one embedding_bag (sum of
    the survivors' centres minus the group's current ones) and then, like the reference's
    gather_deltas, from the children's d (an embedding_bag of two rows per survivor); the sibling
    cross terms come from one batched GEMM, what a CPU does fastest.
Each survivor carries the centre rows n*K + k of its L codebooks, so the final choice needs no
back-tracking. The reference holds (B, groups, cut, D) tensors for all frames at once (~2 GB at
B=2000, D=1024, N=16); here frames go in chunks bounded by `chunk_bytes` (see `chunk_frames`), and
the explicit levels in sub-chunks of EXPLICIT_FRAMES frames whose d tensors stay a few MiB, so
working memory does not grow with B and large fresh allocations (page faults) are avoided.

On CPU, chunks are refined on `torch.get_num_threads()` Python threads, each with single-threaded
torch ops (`_run_in_threads`): the beam search is many small ops, for which intra-op parallelism
mostly adds synchronisation. Chunking and threads never change the tokens (frames are independent).
"""
from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F
from torch import Tensor

from kernels._backend import without_autocast
from kernels.mvq_search import mvq_search

DEFAULT_CHUNK_BYTES = 128 << 20  # bound on the working tensors of all chunks in flight (see chunk_frames)
MAX_CUT = 128  # the reference caps the beam at 128
# Merges of groups of up to this many codebooks get <d_a, d_b> from Gram look-ups (L^2 per
# candidate pair); larger groups use explicit change vectors and a batched GEMM (D multiply-adds
# per pair). Measured on CPU, one thread (D=1024, N=16, K=256, B=200): 2 beat 1 (by ~25 %) and 4 (~8 %).
GRAM_MAX_GROUP = 2
# Frames per sub-chunk of the explicit-d merges: their d tensors (~0.5 MiB per frame at D=1024, N=16)
# stay a few MiB, reuse freed memory instead of page-faulting fresh allocations, and mostly stay in
# cache. Measured as above: 8 beat 4, 16 and 32 (by 10-20 %). CPU only: on a GPU, small ops cost
# launches, so the explicit levels run on the whole chunk there.
EXPLICIT_FRAMES = 8
# Smallest share of chunk_bytes per worker thread: below it, chunks get too few frames for the ops
# to run efficiently, so fewer workers are used (each then with several intra-op threads).
MIN_WORKER_BYTES = 32 << 20


def cut_for(group_size: int, codebook_size: int) -> int:
    """The reference's K_cutoff: base 8 (K <= 16) or 16, doubled each time L reaches 4, 16, 64..., <= 128."""
    cut = 8 if codebook_size <= 16 else 16
    size = group_size
    while size >= 4:
        size //= 4
        cut *= 2
    return min(cut, MAX_CUT)


class GramCache:
    """Holds G = C C^T for one set of centres; recomputed when the centres or their scale change
    (tracked through the parameters' in-place version counters and storage pointers)."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._gram: Tensor | None = None

    def get(self, centers: Tensor, centers_scale: Tensor, get_centers: Callable[[], Tensor]) -> Tensor:
        key = (
            centers.data_ptr(), centers._version, centers.shape, centers.device,
            centers_scale.data_ptr(), centers_scale._version,
        )
        if self._key != key or self._gram is None:
            with torch.no_grad():
                flat = get_centers().detach().reshape(-1, centers.shape[-1]).to(torch.float32)  # (N*K, D)
                self._gram = flat @ flat.t()  # (N*K, N*K)
            self._key = key
        return self._gram

    def clear(self) -> None:
        self._key, self._gram = None, None


def _schedule(num_codebooks: int, codebook_size: int) -> list[tuple[int, int, int]]:
    """(groups, group size L, candidates kept per group) before each merge of the refine pass."""
    steps = []
    groups, size = num_codebooks, 1
    kept = min(codebook_size, cut_for(1, codebook_size))
    while groups > 1:
        steps.append((groups, size, kept))
        groups, size = groups // 2, 2 * size
        kept = min(kept * kept, cut_for(size, codebook_size))
    return steps


def explicit_frames_for(device: torch.device) -> int | None:
    """Sub-chunk size of the explicit-d merges on `device` (None: the whole chunk)."""
    return EXPLICIT_FRAMES if device.type == "cpu" else None


def chunk_frames(
    num_codebooks: int, codebook_size: int, dim: int, chunk_bytes: int, explicit_frames: int | None = EXPLICIT_FRAMES
) -> int:
    """Frames per chunk so that one chunk's tensors stay near `chunk_bytes` (a rough upper bound);
    explicit_frames: the sub-chunk size of the explicit-d merges (None: whole chunks)."""
    search = 16 * num_codebooks * codebook_size + 12 * num_codebooks * dim  # op 1: S and its targets; top-k
    merges, explicit = 0, 0
    for groups, size, kept in _schedule(num_codebooks, codebook_size):
        merged = (groups // 2) * kept * kept  # joint errors of one frame
        if size <= GRAM_MAX_GROUP:  # int64 look-up positions and fp32 values (L^2 each), joint + top-k
            merges = max(merges, 12 * size * size * merged + 24 * merged)
        elif explicit_frames is None:  # this level's d and the next one's, for every frame
            merges = max(merges, 6 * dim * groups * kept + 24 * merged)
        else:  # the same for one sub-chunk of explicit_frames frames
            explicit = max(explicit, explicit_frames * (6 * dim * groups * kept + 24 * merged))
    return max(1, (chunk_bytes - explicit) // (search + merges))


def _smallest(values: Tensor, cut: int) -> tuple[Tensor, Tensor]:
    """The `cut` smallest entries of each row of values (..., M) in (value, position) order, as a
    stable sort would give them: (values (..., cut), positions (..., cut) int64)."""
    size = values.shape[-1]
    if cut >= size:
        return torch.sort(values, dim=-1, stable=True)
    top, order = torch.topk(values, min(cut + 1, size), dim=-1, largest=False, sorted=True)  # (..., cut+1)
    ties = (top[..., 1:] == top[..., :-1]).any(dim=-1)  # (...,) order or boundary not unique
    if bool(ties.any()):
        rows = ties.nonzero(as_tuple=True)
        exact_values, exact_order = torch.sort(values[rows], dim=-1, stable=True)  # (R, M)
        top[rows], order[rows] = exact_values[:, : top.shape[-1]], exact_order[:, : top.shape[-1]]
    return top[..., :cut], order[..., :cut]


def _cross_from_gram(gram_flat: Tensor, leaf_rows: Tensor, current_rows: Tensor, stride: int) -> Tensor:
    """<d_a, d_b> for sibling groups a = 2h, b = 2h+1 from Gram look-ups.

    gram_flat (M*M,) the flattened Gram matrix (M = N*K = stride); leaf_rows (b, G, c, L) the centre
    rows n*K + k of each candidate's L codebooks; current_rows (b, G, L) those of the current indexes.
    Returns (b, G/2, c, c) fp32."""
    num_frames, groups, kept, size = leaf_rows.shape
    rows_a, rows_b = leaf_rows[:, 0::2], leaf_rows[:, 1::2]  # (b, H, c, L)
    cur_a, cur_b = current_rows[:, 0::2], current_rows[:, 1::2]  # (b, H, L)

    def look_up(first: Tensor, second: Tensor) -> Tensor:
        flat = first * stride + second  # broadcast shape
        return gram_flat.index_select(0, flat.reshape(-1)).view(flat.shape)

    # sum_{n in a, m in b} G(k_n, k_m): (b, H, c, c, L, L) look-ups summed over the leaf pairs.
    raw = look_up(rows_a[:, :, :, None, :, None], rows_b[:, :, None, :, None, :])  # (b, H, c, c, L, L)
    raw = raw.sum(dim=(-1, -2)) if size > 1 else raw.view(num_frames, groups // 2, kept, kept)
    to_b = look_up(rows_a[..., :, None], cur_b[:, :, None, None, :]).sum(dim=(-1, -2))  # (b, H, c) G(k_n, z_m)
    to_a = look_up(rows_b[..., :, None], cur_a[:, :, None, None, :]).sum(dim=(-1, -2))  # (b, H, c) G(k_m, z_n)
    both = look_up(cur_a[..., :, None], cur_b[..., None, :]).sum(dim=(-1, -2))  # (b, H) G(z_n, z_m)
    return raw.sub_(to_b[..., :, None]).sub_(to_a[..., None, :]).add_(both[..., None, None])


def _search(
    values: Tensor, leaf_rows: Tensor, current_rows: Tensor, err_sq: Tensor, flat_centers: Tensor, gram_flat: Tensor,
    codebook_size: int, explicit_frames: int | None,
) -> Tensor:
    """The merges and prunes of one refine pass, from the level described by the arguments to the end.

    values (b, G, c) errors of each group's candidates (S_a); leaf_rows (b, G, c, L) their centre rows;
    current_rows (b, N) rows n*K + z_n; err_sq (b, 1, 1, 1) ||e||^2; explicit_frames: sub-chunk size of the
    explicit-d merges (None: all b frames at once). Returns (b, N) chosen centre rows."""
    num_frames, groups, kept, size = leaf_rows.shape
    stride, dim = flat_centers.shape  # N*K rows of D
    device = values.device
    deltas = None  # (b, G, c, D) explicit change vectors, once groups are larger than GRAM_MAX_GROUP
    while True:
        half = groups // 2
        # Explicit d from the first merge of groups larger than GRAM_MAX_GROUP on: built from the
        # centres here, then from the children's d after each prune (two rows per survivor).
        if deltas is None and size > GRAM_MAX_GROUP:
            step = explicit_frames
            if step is not None and num_frames > step:  # the rest in sub-chunks whose d stay cache-sized
                return torch.cat([
                    _search(values[s : s + step], leaf_rows[s : s + step], current_rows[s : s + step],
                            err_sq[s : s + step], flat_centers, gram_flat, codebook_size, step)
                    for s in range(0, num_frames, step)
                ])
            current_sum = F.embedding_bag(current_rows.view(-1, size), flat_centers, mode="sum")  # (b*G, D)
            deltas = F.embedding_bag(leaf_rows.reshape(-1, size), flat_centers, mode="sum").view(
                num_frames, groups, kept, dim
            ).sub_(current_sum.view(num_frames, groups, 1, dim))  # (b, G, c, D)
        if size <= GRAM_MAX_GROUP:
            cross = _cross_from_gram(gram_flat, leaf_rows, current_rows.view(num_frames, groups, size), stride)
        else:
            cross = torch.matmul(deltas[:, 0::2], deltas[:, 1::2].transpose(-1, -2))  # (b, H, c, c)
        # Joint error (S_a + S_b) - ||e||^2 + 2 <d_a, d_b>, even candidate major: (b, H, c*c).
        joint = cross.mul_(2).add_(values[:, 0::2, :, None]).add_(values[:, 1::2, None, :]).sub_(err_sq)
        joint = joint.view(num_frames, half, kept * kept)
        groups, size = half, 2 * size

        if groups == 1:  # prune to the single best (the first minimum, as a stable sort's first entry)
            best = joint.argmin(dim=-1)  # (b, 1) merged index
            return torch.cat(
                (leaf_rows[:, 0].gather(1, (best // kept)[..., None].expand(-1, -1, size // 2)),
                 leaf_rows[:, 1].gather(1, (best % kept)[..., None].expand(-1, -1, size // 2))),
                dim=-1,
            )[:, 0]  # (b, N)

        cut = cut_for(size, codebook_size)
        if kept * kept > cut:
            values, order = _smallest(joint, cut)  # (b, H, cut)
        else:
            values, order = joint, torch.arange(kept * kept, device=device).expand_as(joint)
        left, right = order // kept, order % kept  # (b, H, cut) positions in the children's lists
        leaf_rows = torch.cat(
            (leaf_rows[:, 0::2].gather(2, left[..., None].expand(-1, -1, -1, size // 2)),
             leaf_rows[:, 1::2].gather(2, right[..., None].expand(-1, -1, -1, size // 2))),
            dim=-1,
        )  # (b, H, cut, L)
        if deltas is not None:  # the survivors' d = d_even[left] + d_odd[right] (rows of the flat d)
            base = (torch.arange(num_frames, device=device)[:, None, None] * (2 * half)
                    + 2 * torch.arange(half, device=device)[:, None]) * kept  # (b, H, 1) row of d_even[0]
            pairs = torch.stack((base + left, base + kept + right), dim=-1)  # (b, H, cut, 2)
            deltas = F.embedding_bag(pairs.view(-1, 2), deltas.view(-1, dim), mode="sum").view(
                num_frames, half, -1, dim
            )  # (b, H, cut, D)
        kept = leaf_rows.shape[2]


@without_autocast
def refine_indexes(x: Tensor, indexes: Tensor, centers: Tensor, gram: Tensor) -> Tensor:
    """One refine pass. x (B, D) fp32, indexes (B, N) int64, centers (N, K, D) fp32, gram (N*K, N*K).
    Returns the new (B, N) int64 indexes."""
    num_codebooks, codebook_size, dim = centers.shape
    if num_codebooks == 1:  # one group from the start: prune to 1 = argmin of S
        return mvq_search(x, centers, indexes, check_indexes=False).best
    flat_centers = centers.reshape(num_codebooks * codebook_size, dim)  # (N*K, D)
    books = torch.arange(num_codebooks, device=x.device) * codebook_size  # (N,) first row of each codebook
    current_rows = indexes + books  # (B, N) rows n*K + z_n
    residual = F.embedding_bag(current_rows, flat_centers, mode="sum") - x  # (B, D) e = sum_n C[n, z_n] - x
    err_sq = residual.square().sum(dim=-1)[:, None, None, None]  # (B, 1, 1, 1) ||e||^2

    errors = mvq_search(x, centers, indexes, check_indexes=False).errors  # (B, N, K) S
    cut = cut_for(1, codebook_size)
    if codebook_size > cut:
        values, candidates = _smallest(errors, cut)  # (B, N, c) each
    else:
        values, candidates = errors, torch.arange(codebook_size, device=x.device).expand_as(errors)
    leaf_rows = (candidates + books[:, None]).unsqueeze(-1)  # (B, G=N, c, L=1) centre rows of each candidate
    rows = _search(
        values, leaf_rows, current_rows, err_sq, flat_centers, gram.reshape(-1), codebook_size,
        explicit_frames_for(x.device),
    )
    return rows - books


def _run_in_threads(fn: Callable[[int], None], items: list[int], workers: int) -> None:
    """fn(item) for every item on `workers` threads, which share torch's intra-op threads (one each
    when there are as many workers as threads).

    Frames are independent, so splitting the chunks over threads scales with the cores without the
    per-op synchronisation of intra-op parallelism (which dominates the many small ops of the beam
    search, and stalls badly on a loaded machine). The intra-op thread count is lowered for the
    duration (torch's setting is process-wide) and restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, previous // workers))
    pool = ThreadPoolExecutor(workers)
    try:
        for _ in pool.map(fn, items):  # re-raises a worker's exception here
            pass
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # after an error: drop the chunks not started
        torch.set_num_threads(previous)


def compute_indexes(
    x: Tensor,
    centers: Tensor,
    gram: Tensor,
    logits_fn: Callable[[Tensor], Tensor],
    refine_iters: int,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    workers: int | None = None,
) -> Tensor:
    """(B, D) normalised fp32 frames -> (B, N) int64: argmax of logits_fn(x) (B, N, K), then
    `refine_iters` refine passes. Frames go in chunks; up to `workers` chunks (default: torch's
    intra-op thread count on CPU, 1 on other devices; fewer when chunk_bytes leaves a worker less
    than MIN_WORKER_BYTES) are refined at once, on as many threads, and all chunks in flight
    together stay near `chunk_bytes`."""
    num_frames = x.shape[0]
    num_codebooks, codebook_size, dim = centers.shape
    if workers is None:
        workers = torch.get_num_threads() if x.device.type == "cpu" else 1
    workers = max(1, min(workers, chunk_bytes // MIN_WORKER_BYTES))
    step = chunk_frames(num_codebooks, codebook_size, dim, chunk_bytes // workers, explicit_frames_for(x.device))
    chunks = -(-num_frames // step)
    chunks = -(-chunks // workers) * workers  # a multiple of the workers, of near-equal sizes
    step = max(1, -(-num_frames // chunks))
    out = torch.empty(num_frames, num_codebooks, dtype=torch.int64, device=x.device)
    starts = list(range(0, num_frames, step))
    for start in starts:  # the first guess, in the caller's thread (its grad/autocast modes)
        out[start : start + step] = logits_fn(x[start : start + step]).argmax(dim=-1)  # (b, N)
    if refine_iters == 0:
        return out

    def refine_chunk(start: int) -> None:
        chunk, indexes = x[start : start + step], out[start : start + step]  # (b, D), (b, N)
        with torch.no_grad():
            for _ in range(refine_iters):
                indexes = refine_indexes(chunk, indexes, centers, gram)
        out[start : start + step] = indexes

    if workers > 1 and len(starts) > 1:
        _run_in_threads(refine_chunk, starts, min(workers, len(starts)))
    else:
        for start in starts:
            refine_chunk(start)
    return out
