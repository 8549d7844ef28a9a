"""MVQ encode: ours (spear_fast.mvq.Quantizer.encode) vs the reference (multi_quantization 0.1.1
Quantizer.encode), same weights, same frames: B=2000, D=1024, N=16, K=256, R=5 refine passes.

The reference takes minutes per call on a CPU, so each contender runs 1 measured round (after one
warm-up call for ours, which also builds and caches the Gram matrix, as any encode job would). The
reference's round also records the per-(frame, codebook) index agreement of the two token sets
(extra_info["index_agreement"]) and fails below the acceptance bound of 99.5 %."""
import pytest
import torch
from multi_quantization.quantization import Quantizer as RefQuantizer

from spear_fast.mvq import Quantizer

NUM_FRAMES, DIM, NUM_CODEBOOKS, CODEBOOK_SIZE, REFINE = 2000, 1024, 16, 256, 5


@pytest.fixture(scope="module")
def weights_and_frames():
    torch.manual_seed(0)
    ref = RefQuantizer(DIM, CODEBOOK_SIZE, NUM_CODEBOOKS)
    frames = torch.randn(NUM_FRAMES, DIM)
    return ref, frames


@pytest.fixture(scope="module")
def tokens_by_contender() -> dict:
    return {}


def _run(benchmark, peak_memory, machine, fn):
    """One measured round; the peak memory is taken during that same call (the reference is slow)."""
    benchmark.group = "mvq-encode B=2000 D=1024 N=16 K=256 R=5"
    benchmark.extra_info.update(
        machine=machine, num_frames=NUM_FRAMES, dim=DIM, num_codebooks=NUM_CODEBOOKS,
        codebook_size=CODEBOOK_SIZE, refine_iters=REFINE,
    )
    out = {}

    def measured():
        out["peak"] = peak_memory(lambda: out.__setitem__("tokens", fn()))

    benchmark.pedantic(measured, rounds=1, iterations=1)
    benchmark.extra_info["peak_memory_bytes"] = out["peak"]
    return out["tokens"]


def test_encode_ours(benchmark, peak_memory, machine, weights_and_frames, tokens_by_contender):
    ref, frames = weights_and_frames
    ours = Quantizer.from_multi_quantization(ref)
    def fn():
        return ours.encode(frames, REFINE)

    fn()  # warm-up: first-call overheads and the cached Gram matrix (64 MiB)
    tokens = _run(benchmark, peak_memory, machine, fn)
    assert tokens.shape == (NUM_FRAMES, NUM_CODEBOOKS)
    tokens_by_contender["ours"] = tokens


def test_encode_reference(benchmark, peak_memory, machine, weights_and_frames, tokens_by_contender):
    ref, frames = weights_and_frames

    def fn():
        with torch.no_grad():
            return ref.encode(frames, REFINE, as_bytes=True)

    tokens = _run(benchmark, peak_memory, machine, fn)
    assert tokens.shape == (NUM_FRAMES, NUM_CODEBOOKS)
    if "ours" in tokens_by_contender:
        agreement = (tokens_by_contender["ours"] == tokens).double().mean().item()
        benchmark.extra_info["index_agreement"] = agreement
        assert agreement >= 0.995, f"index agreement with the reference {agreement:.5f}"
