"""MVQ encode vs the reference (multi_quantization 0.1.1) with the same weights and inputs."""
import threading

import pytest
import torch
from multi_quantization.quantization import Quantizer as RefQuantizer
from mvq_oracle import assert_tokens_agree

from spear_fast.mvq import Quantizer
from spear_fast.mvq import encode as mvq_encode
from spear_fast.mvq.encode import _cross_from_gram, _smallest, compute_indexes, cut_for
from spear_fast.mvq.metrics import relative_error


def make_frames(kind: str, num: int, dim: int, gen: torch.Generator) -> torch.Tensor:
    if kind == "gaussian":
        return torch.randn(num, dim, generator=gen)
    # structured: a mixture of 32 clusters with different scales, plus a low-rank component
    means = 2.0 * torch.randn(32, dim, generator=gen)
    labels = torch.randint(0, 32, (num,), generator=gen)
    scales = 0.2 + torch.rand(32, 1, generator=gen)
    low_rank = torch.randn(num, 4, generator=gen) @ torch.randn(4, dim, generator=gen)
    return means[labels] + scales[labels] * torch.randn(num, dim, generator=gen) + 0.5 * low_rank


def make_reference(num_codebooks, codebook_size, dim, trained: bool, data: torch.Tensor, seed: int) -> RefQuantizer:
    torch.manual_seed(seed)
    ref = RefQuantizer(dim, codebook_size, num_codebooks)
    if trained:  # a few steps of the reference's own loss, so centres and logits carry structure
        opt = torch.optim.Adam(ref.parameters(), lr=5e-3, betas=(0.9, 0.98), eps=1e-9)
        gen = torch.Generator().manual_seed(seed + 1)
        for _ in range(5):
            batch = data[torch.randint(0, data.shape[0], (64,), generator=gen)]
            rel, logprob, entropy, _ = ref.compute_loss(batch, 1)
            (rel + logprob + 0.01 * entropy).backward()
            opt.step()
            opt.zero_grad()
    return ref


# (N, K, D, B, R, data, trained): every N in {2, 8, 16}, K in {256, 16}, D in {64, 384, 1024},
# R in {0, 1, 5}, Gaussian and structured frames, random and trained reference quantisers.
CASES = [
    (2, 256, 64, 250, 5, "structured", True),
    (8, 256, 384, 60, 1, "gaussian", False),
    (8, 256, 64, 60, 5, "structured", True),
    (16, 256, 64, 40, 5, "gaussian", False),
    (16, 256, 1024, 32, 5, "structured", False),
    (16, 16, 64, 100, 5, "structured", True),
    (8, 16, 384, 150, 0, "structured", False),
    (2, 16, 1024, 60, 1, "gaussian", True),
    (16, 16, 384, 60, 1, "gaussian", False),
]


@pytest.mark.parametrize("num_codebooks,codebook_size,dim,num_frames,refine,kind,trained", CASES)
def test_encode_agrees_with_reference(seed, num_codebooks, codebook_size, dim, num_frames, refine, kind, trained):
    gen = torch.Generator().manual_seed(seed)
    data = make_frames(kind, 2000, dim, gen)
    ref = make_reference(num_codebooks, codebook_size, dim, trained, data, seed)
    ours = Quantizer.from_multi_quantization(ref)
    x = make_frames(kind, num_frames, dim, gen)  # fresh frames (also fresh clusters: unseen data)
    if kind == "structured":
        x = data[torch.randint(0, data.shape[0], (num_frames,), generator=gen)] + 0.05 * torch.randn(num_frames, dim, generator=gen)
    with torch.no_grad():
        expected = ref.encode(x, refine, as_bytes=False)  # (B, N) int64
    tokens = ours.encode(x, refine)
    assert tokens.dtype == torch.uint8 and tokens.shape == (num_frames, num_codebooks)
    assert_tokens_agree(x, ref, tokens, expected)


def test_refine_passes_reduce_error_and_zero_passes_is_argmax(seed):
    gen = torch.Generator().manual_seed(seed)
    q = Quantizer(48, 4, 256)
    x = torch.randn(100, 48, generator=gen)
    with torch.no_grad():
        argmax = q.logits(x).argmax(-1)
    assert torch.equal(q.encode(x, 0).long(), argmax)
    errors = [relative_error(x, q.decode(q.encode(x, r))) for r in (0, 1, 3)]
    assert errors[1] < errors[0] and errors[2] <= errors[1] * (1 + 1e-6)


def test_one_codebook_is_the_nearest_centre(seed):
    gen = torch.Generator().manual_seed(seed)
    q = Quantizer(16, 1, 64)
    x = torch.randn(50, 16, generator=gen)
    nearest = torch.cdist(x.double(), q.get_centers()[0].detach().double()).argmin(-1)  # (B,)
    assert torch.equal(q.encode(x, 1)[:, 0].long(), nearest)


def test_cut_schedule_matches_reference_formula():
    # the reference: base 8 if K <= 16 else 16; doubled while L >= 4 (L /= 4); capped at 128
    def reference(L, K):
        cut, l = (8 if K <= 16 else 16), L
        while l >= 4:
            l /= 4
            cut *= 2
        return min(cut, 128)

    for K in (2, 4, 16, 32, 256):
        for L in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024):
            assert cut_for(L, K) == reference(L, K)


def test_chunking_does_not_change_tokens(seed):
    gen = torch.Generator().manual_seed(seed)
    q = Quantizer(32, 8, 256)
    x = torch.randn(23, 32, generator=gen)
    whole = q.encode(x, 2)
    tiny_chunks = q.encode(x, 2, chunk_bytes=1)  # one frame per chunk
    assert torch.equal(whole, tiny_chunks)


def test_leading_dims_and_empty_input(seed):
    gen = torch.Generator().manual_seed(seed)
    q = Quantizer(24, 2, 16)
    x = torch.randn(3, 5, 24, generator=gen)
    tokens = q.encode(x, 1)
    assert tokens.shape == (3, 5, 2)
    assert torch.equal(tokens.reshape(15, 2), q.encode(x.reshape(15, 24), 1))
    assert q.decode(tokens).shape == (3, 5, 24)
    empty = q.encode(torch.zeros(0, 24), 5)
    assert empty.shape == (0, 2) and empty.dtype == torch.uint8
    assert q.encode(torch.zeros(4, 0, 24), 5).shape == (4, 0, 2)
    assert q.decode(empty).shape == (0, 24)


def test_bad_input_raises(seed):
    gen = torch.Generator().manual_seed(seed)
    q = Quantizer(8, 2, 16)
    x = torch.randn(30, 8, generator=gen)
    x[4, 1] = float("nan")
    x[17, 0] = float("inf")
    x[17, 5] = float("-inf")
    with pytest.raises(ValueError, match=r"3 NaN/Inf values in 2 of 30 frames.*\[4, 17\]"):
        q.encode(x)
    with pytest.raises(ValueError, match=r"\(\.\.\., 8\).*\(30, 7\)"):
        q.encode(torch.randn(30, 7, generator=gen))
    with pytest.raises(ValueError, match="num_codebooks must be a power of two, got 3"):
        Quantizer(8, 3, 16)
    with pytest.raises(ValueError, match="codebook_size must be a power of two"):
        Quantizer(8, 2, 24)
    with pytest.raises(ValueError, match="codebook_size must be a power of two <= 256"):
        Quantizer(8, 2, 512)
    with pytest.raises(ValueError, match=r"token values must lie in \[0, 16\)"):
        q.decode(torch.full((2, 2), 16))
    with pytest.raises(ValueError, match=r"\(\.\.\., 2\)"):
        q.decode(torch.zeros(2, 3, dtype=torch.uint8))


@pytest.mark.parametrize("gram_max_group,explicit_frames", [(0, 1), (1, 8), (2, 3), (2, 10**6), (4, 8), (16, 8)])
def test_hybrid_cross_terms_all_agree_with_reference(seed, monkeypatch, gram_max_group, explicit_frames):
    # Gram look-ups for every merge (16), explicit d and GEMMs for every merge (0), and the splits
    # in between, with sub-chunks of the explicit levels that do and do not divide B.
    monkeypatch.setattr(mvq_encode, "GRAM_MAX_GROUP", gram_max_group)
    monkeypatch.setattr(mvq_encode, "EXPLICIT_FRAMES", explicit_frames)
    gen = torch.Generator().manual_seed(seed)
    data = make_frames("structured", 1000, 64, gen)
    ref = make_reference(16, 256, 64, False, data, seed)
    ours = Quantizer.from_multi_quantization(ref)
    x = data[torch.randint(0, 1000, (50,), generator=gen)] + 0.05 * torch.randn(50, 64, generator=gen)
    with torch.no_grad():
        expected = ref.encode(x, 2, as_bytes=False)
    assert_tokens_agree(x, ref, ours.encode(x, 2), expected)


@pytest.mark.parametrize("group_size", [1, 2, 4])
def test_cross_from_gram_matches_float64_change_vectors(seed, group_size):
    gen = torch.Generator().manual_seed(seed)
    num_codebooks, codebook_size, dim, num_frames, kept = 8, 16, 24, 5, 7
    centers = torch.randn(num_codebooks, codebook_size, dim, generator=gen)  # (N, K, D)
    flat = centers.reshape(-1, dim)  # (N*K, D)
    groups = num_codebooks // group_size
    books = (torch.arange(num_codebooks) * codebook_size).view(groups, group_size)  # (G, L) first rows
    current = torch.randint(0, codebook_size, (num_frames, groups, group_size), generator=gen) + books
    leaves = torch.randint(0, codebook_size, (num_frames, groups, kept, group_size), generator=gen) + books[:, None]
    cross = _cross_from_gram(flat.reshape(-1, dim).matmul(flat.t()).reshape(-1), leaves, current, flat.shape[0])
    flat64 = flat.double()
    deltas = flat64[leaves].sum(dim=-2) - flat64[current].sum(dim=-2)[:, :, None]  # (b, G, c, D)
    expected = deltas[:, 0::2] @ deltas[:, 1::2].transpose(-1, -2)  # (b, G/2, c, c)
    assert cross.shape == expected.shape
    scale = flat64.square().sum(-1).max() * group_size * group_size  # size of the Gram entries summed
    assert (cross.double() - expected).abs().max() <= 1e-5 * scale


@pytest.mark.parametrize("cut", [1, 5, 16, 40])
def test_smallest_is_the_stable_sort_prefix_even_with_ties(seed, cut):
    gen = torch.Generator().manual_seed(seed)
    continuous = torch.randn(3, 4, 40, generator=gen)
    tied = torch.randint(0, 6, (3, 4, 40), generator=gen).float()  # many exact ties, also at the cut
    for values in (continuous, tied):
        top, order = _smallest(values, cut)
        for row, (v, o) in enumerate(zip(values.reshape(-1, 40).tolist(), order.reshape(-1, cut).tolist())):
            expected = sorted(range(40), key=lambda i: (v[i], i))[:cut]  # (value, position) order
            assert o == expected, f"row {row}"
        assert torch.equal(top, values.gather(-1, order))


def test_worker_threads_give_the_same_tokens_and_restore_the_thread_count(seed, monkeypatch):
    gen = torch.Generator().manual_seed(seed)
    q = Quantizer(40, 8, 256)
    x = torch.randn(37, 40, generator=gen)
    centers, gram = q.get_centers().detach(), q.gram()
    threads = torch.get_num_threads()
    with torch.no_grad():
        serial = compute_indexes(x, centers, gram, q.logits, 2, workers=1)
        three_workers = 3 * mvq_encode.MIN_WORKER_BYTES  # a budget that allows all three
        threaded = compute_indexes(x, centers, gram, q.logits, 2, chunk_bytes=three_workers, workers=3)
    assert torch.equal(serial, threaded)
    assert torch.get_num_threads() == threads

    calls = []

    def counting(*args):
        calls.append(threading.get_ident())
        return refine(*args)

    refine = mvq_encode.refine_indexes
    monkeypatch.setattr(mvq_encode, "refine_indexes", counting)
    with torch.no_grad():
        again = compute_indexes(x, centers, gram, q.logits, 1, chunk_bytes=three_workers, workers=3)
    assert len(calls) == 3 and threading.get_ident() not in calls  # one pass per chunk, off the caller's thread
    assert torch.equal(again, compute_indexes(x, centers, gram, q.logits, 1, workers=1))

    def broken(*args):
        raise RuntimeError("worker failed")

    monkeypatch.setattr(mvq_encode, "refine_indexes", broken)
    with pytest.raises(RuntimeError, match="worker failed"):
        compute_indexes(x, centers, gram, q.logits, 1, workers=2)
    assert torch.get_num_threads() == threads
