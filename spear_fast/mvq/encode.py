"""MVQ encode: the first guess (argmax of the logits) and the refine pass (hierarchical beam search).

The refine pass makes the reference's decisions (`multi_quantization.Quantizer._refine_indexes`,
0.1.1): the same swap-error table S (op 1, `kernels.mvq_search`, which also returns the first prune's
top-cut list), the same cut schedule (base 8 if K <= 16 else 16, doubled each time the group size L
reaches 4, 16, 64, ..., capped at 128), prune when a group has more than `cut` candidates or one
group is left, merge groups (2g, 2g+1) with the even group's candidate as the major index, the same
joint error (S_a + S_b) - ||e||^2 + 2<d_a, d_b>, and the argmin at the end.

What differs is how <d_a, d_b> is obtained. The reference builds the change vectors d as
(B, groups, cut, D) tensors and multiplies them (~2 GB at B=2000, D=1024, N=16). Here, with
u_n(k) = C[n, k] - C[n, z_n] and d_a = sum_{n in a} u_n(k_n):

    <d_a, d_b> = R_ab - rho_a - rho_b + Z_ab,   R_ab = sum_{n in a, m in b} G(k_n, k_m),
    rho_a = sum_{n in a, m in b} G(k_n, z_m),   Z_ab = sum_{n in a, m in b} G(z_n, z_m),

with G = C C^T, the (N*K, N*K) Gram matrix of all centres (64 MiB for N=16, K=256), computed once
per set of weights and cached by the quantiser. Only table look-ups remain:
  - rho: per candidate, the vector G(k_n, z_m) over all m (B, groups, cut, N), summed over the
    group's codebooks as groups merge (a gather of the survivors' two children per level);
  - R: a "pair table" (P, B, cut, cut) over all pairs of groups of a level. Level 0 needs only the
    sibling blocks (for the first merge); level 1 is read from G directly (4 look-ups per entry);
    level l+1 is the sum of the 2x2 child-pair blocks of level l at the survivors' children
    (4 look-ups per entry). Pairs, not the dense all-groups square: ~60 k look-ups per frame per
    refine pass for N=16, K=256, versus ~6 M multiply-adds plus ~0.3 M-float delta tensors per
    frame in the reference.
The choice is followed by back-pointers (each level's survivor order) instead of carrying every
candidate's codebook indexes. Frames go through in chunks bounded by `chunk_bytes` (see
`chunk_frames`), so working memory does not grow with B.
"""
from __future__ import annotations

import functools
from typing import Callable

import torch
from torch import Tensor

from kernels.mvq_search import mvq_search

DEFAULT_CHUNK_BYTES = 128 << 20  # bound on one chunk's working tensors (see chunk_frames)
MAX_CUT = 128  # the reference caps the beam at 128


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


def chunk_frames(num_codebooks: int, codebook_size: int, dim: int, chunk_bytes: int) -> int:
    """Frames per chunk so that one chunk's tensors stay near `chunk_bytes` (a rough upper bound)."""
    first = min(codebook_size, cut_for(1, codebook_size))
    half = num_codebooks // 2
    per_frame = (
        16 * num_codebooks * codebook_size  # op 1: S (fp32) and its sort (fp32 values + int64 order)
        + 8 * num_codebooks * dim  # op 1: per-codebook targets and current centres
        + 8 * num_codebooks * num_codebooks * first  # z-terms G(k, z_m)
        + 16 * half * half * first * first  # level-1 pair table and its four parts
    )
    return max(1, chunk_bytes // per_frame)


@functools.lru_cache(maxsize=64)
def _group_pairs(groups: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """All pairs (g, h), g < h, of `groups` groups, in lexicographic order: two (P,) int64 tensors."""
    first, second = torch.triu_indices(groups, groups, offset=1, device=device)
    return first, second


@functools.lru_cache(maxsize=64)
def _pair_ids(groups: int, device: torch.device) -> Tensor:
    """(G, G) int64: position of pair (g, h), g < h, in `_group_pairs` order (-1 elsewhere)."""
    first, second = _group_pairs(groups, device)
    ids = torch.full((groups, groups), -1, dtype=torch.int64, device=device)
    ids[first, second] = torch.arange(first.numel(), device=device)
    return ids


def _pair_table_from_gram(codes: Tensor, gram4: Tensor) -> Tensor:
    """codes (B, G, c, 2): the two leaf indexes of each candidate of each group of 2 codebooks.
    Returns (P, B, c, c): for every pair of groups g < h, sum over the 2x2 leaf pairs of G(k, k')."""
    groups = codes.shape[1]
    first, second = _group_pairs(groups, codes.device)  # (P,)
    table = None
    for a in (0, 1):
        rows = codes[:, first, :, a].permute(1, 0, 2).unsqueeze(-1)  # (P, B, c, 1)
        row_books = (2 * first + a)[:, None, None, None]  # (P, 1, 1, 1)
        for b in (0, 1):
            cols = codes[:, second, :, b].permute(1, 0, 2).unsqueeze(-2)  # (P, B, 1, c)
            col_books = (2 * second + b)[:, None, None, None]
            part = gram4[row_books, rows, col_books, cols]  # (P, B, c, c)
            table = part if table is None else table.add_(part)
    return table


def _pair_table_from_children(table: Tensor, left: Tensor, right: Tensor, child_groups: int) -> Tensor:
    """Next level's pair table from this level's. table (P_old, B, c_old, c_old) over pairs of the
    `child_groups` child groups; left/right (B, G, c): the surviving candidates' child positions in
    groups 2g and 2g+1. Returns (P, B, c, c) over pairs of the G = child_groups // 2 new groups."""
    device = table.device
    old_ids = _pair_ids(child_groups, device)
    first, second = _group_pairs(child_groups // 2, device)  # (P,)
    children = (left, right)
    out = None
    for a in (0, 1):
        rows = children[a][:, first].permute(1, 0, 2).unsqueeze(-1)  # (P, B, c, 1)
        for b in (0, 1):
            cols = children[b][:, second].permute(1, 0, 2).unsqueeze(-2)  # (P, B, 1, c)
            pair = old_ids[2 * first + a, 2 * second + b][:, None, None, None]  # (P, 1, 1, 1)
            frame = torch.arange(table.shape[1], device=device)[None, :, None, None]  # (1, B, 1, 1)
            part = table[pair, frame, rows, cols]  # (P, B, c, c)
            out = part if out is None else out.add_(part)
    return out


def _trace_back(best: Tensor, history: list[tuple[int, Tensor | None]], candidates: Tensor) -> Tensor:
    """Follow the back-pointers from the final choice (B, 1) down to the leaves -> (B, N) indexes."""
    merged = best  # (B, G) merged index of each group at the current level
    for level in range(len(history) - 1, -1, -1):
        kept, _ = history[level]
        positions = torch.stack((merged // kept, merged % kept), dim=-1).flatten(1)  # (B, 2G) in child lists
        if level == 0:
            return candidates.gather(2, positions.unsqueeze(-1)).squeeze(-1)  # (B, N)
        order = history[level - 1][1]
        merged = positions if order is None else order.gather(2, positions.unsqueeze(-1)).squeeze(-1)
    raise AssertionError("unreachable")


def refine_indexes(x: Tensor, indexes: Tensor, centers: Tensor, gram: Tensor) -> Tensor:
    """One refine pass. x (B, D) fp32, indexes (B, N) int64, centers (N, K, D) fp32, gram (N*K, N*K).
    Returns the new (B, N) int64 indexes."""
    num_frames = x.shape[0]
    num_codebooks, codebook_size, _ = centers.shape
    if num_codebooks == 1:  # one group from the start: prune to 1 = argmin of S
        return mvq_search(x, centers, indexes, check_indexes=False).best
    device = x.device
    gram4 = gram.view(num_codebooks, codebook_size, num_codebooks, codebook_size)  # G[n, k, m, k']
    books = torch.arange(num_codebooks, device=device)  # (N,)
    flat_centers = centers.reshape(-1, centers.shape[-1])  # (N*K, D)
    residual = torch.nn.functional.embedding_bag(indexes + books * codebook_size, flat_centers, mode="sum") - x
    err_sq = residual.square().sum(dim=-1)  # (B,) ||e||^2, e = sum_n C[n, z_n] - x

    cut = cut_for(1, codebook_size)
    if codebook_size > cut:
        search = mvq_search(x, centers, indexes, cut=cut, check_indexes=False)
        values, candidates = search.top_errors, search.top_indexes  # (B, N, c) each
    else:
        values = mvq_search(x, centers, indexes, check_indexes=False).errors  # (B, N, K)
        candidates = torch.arange(codebook_size, device=device).expand(num_frames, num_codebooks, codebook_size)
    kept = candidates.shape[-1]
    # Back-pointers instead of carrying every candidate's L codebook indexes: per merge level, the
    # children's list size and the prune's survivor order (None when nothing was pruned).
    history: list[tuple[int, Tensor | None]] = []

    # z-terms of <u_n(k), u_m(k')>: to_current[b, g, s, m] = sum_{n in g} G(k_n(s), z_m) (B, G, c, N)
    # and current[b, n, m] = G(z_n, z_m) (B, N, N).
    to_current = gram4[books[None, :, None, None], candidates[..., None], books, indexes[:, None, None, :]]
    current = gram4[books[:, None], indexes[:, :, None], books[None, :], indexes[:, None, :]]
    # Pair table of the raw look-ups sum G(k_n, k_m): level 0 needs only the sibling pairs.
    even, odd = books[0::2], books[1::2]  # (N/2,)
    sibling_raw = gram4[
        even[:, None, None, None], candidates[:, 0::2, :, None].permute(1, 0, 2, 3),
        odd[:, None, None, None], candidates[:, 1::2, None, :].permute(1, 0, 2, 3),
    ]  # (N/2, B, c, c)
    table = None

    groups, group_size = num_codebooks, 1
    while True:
        half = groups // 2
        # Cross term <d_a, d_b> of siblings a = 2g, b = 2g+1 (B, G/2, c, c).
        by_group = to_current.view(num_frames, groups, kept, groups, group_size).sum(dim=-1)  # (B, G, c, G)
        diag = by_group.view(num_frames, half, 2, kept, half, 2).diagonal(dim1=1, dim2=4)  # (B, 2, c, 2, G/2)
        rho_even = diag[:, 0, :, 1, :].permute(0, 2, 1)  # (B, G/2, c): sum_{n in a, m in b} G(k_n, z_m)
        rho_odd = diag[:, 1, :, 0, :].permute(0, 2, 1)  # (B, G/2, c): sum_{m in b, n in a} G(k_m, z_n)
        current_groups = current.view(num_frames, groups, group_size, groups, group_size).sum(dim=(2, 4))
        current_sib = current_groups.view(num_frames, half, 2, half, 2).diagonal(dim1=1, dim2=3)[:, 0, 1, :]  # (B, G/2)
        cross = (
            sibling_raw.permute(1, 0, 2, 3)
            - rho_even[..., :, None]
            - rho_odd[..., None, :]
            + current_sib[:, :, None, None]
        )  # (B, G/2, c, c)
        # Joint error (S_a + S_b) - ||e||^2 + 2 <d_a, d_b>, even candidate major.
        pair_sum = values[:, 0::2, :, None] + values[:, 1::2, None, :]  # (B, G/2, c, c)
        values = (pair_sum - err_sq[:, None, None, None] + 2 * cross).reshape(num_frames, half, kept * kept)
        child_groups, groups, group_size, merged = groups, half, 2 * group_size, kept * kept

        if groups == 1:  # prune to the single best (the first minimum, as a stable sort's first entry)
            best = values.argmin(dim=-1)  # (B, 1) merged index in the last group
            history.append((kept, None))
            return _trace_back(best, history, candidates)

        cut = cut_for(group_size, codebook_size)
        if merged > cut:
            values, order = torch.sort(values, dim=-1, stable=True)
            values, order = values[..., :cut].contiguous(), order[..., :cut].contiguous()  # (B, G, cut)
            history.append((kept, order))
        else:
            order = torch.arange(merged, device=device).expand(num_frames, groups, merged)
            history.append((kept, None))
        left, right = order // kept, order % kept  # (B, G, cut) positions in the child groups
        pick = lambda t, child: torch.gather(t, 2, child.unsqueeze(-1).expand(-1, -1, -1, t.shape[-1]))
        to_current = pick(to_current[:, 0::2], left) + pick(to_current[:, 1::2], right)  # (B, G, cut, N)
        # Pair table of the new groups: from G directly at group size 2, else from the old table.
        if group_size == 2:
            codes = torch.stack(
                (candidates[:, 0::2].gather(2, left), candidates[:, 1::2].gather(2, right)), dim=-1
            )  # (B, G, cut, 2) leaf indexes of each survivor
            table = _pair_table_from_gram(codes, gram4)
        else:
            table = _pair_table_from_children(table, left, right, child_groups)
        sibling_ids = _pair_ids(groups, device)[torch.arange(0, groups, 2), torch.arange(1, groups, 2)]
        sibling_raw = table[sibling_ids]  # (G/2, B, cut, cut)
        kept = order.shape[-1]


def compute_indexes(
    x: Tensor,
    centers: Tensor,
    gram: Tensor,
    logits_fn: Callable[[Tensor], Tensor],
    refine_iters: int,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> Tensor:
    """(B, D) normalised fp32 frames -> (B, N) int64: argmax of logits_fn(x) (B, N, K), then
    `refine_iters` refine passes; frames in chunks bounded by `chunk_bytes`."""
    num_codebooks, codebook_size, dim = centers.shape
    step = chunk_frames(num_codebooks, codebook_size, dim, chunk_bytes)
    out = torch.empty(x.shape[0], num_codebooks, dtype=torch.int64, device=x.device)
    for start in range(0, x.shape[0], step):
        chunk = x[start : start + step]  # (b, D)
        indexes = logits_fn(chunk).argmax(dim=-1)  # (b, N)
        for _ in range(refine_iters):
            indexes = refine_indexes(chunk, indexes, centers, gram)
        out[start : start + step] = indexes
    return out
