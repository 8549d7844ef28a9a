"""SpearStudent: shapes, output lengths, batch/padding independence per attention backend, rotary,
attention against a float64 reference, the mask vector, input checks."""
import math

import pytest
import torch

from spear_fast.model.attention import (
    AttentionBackendUnavailable,
    RotaryEmbedding,
    SequenceLayout,
    apply_rotary,
    attention,
    backend_unavailable_reason,
    resolve_backend,
)
from spear_fast.config import apply_overrides
from spear_fast.model.config import tiny
from spear_fast.model.student import SpearStudent
from spear_fast.model.subsampling import subsampled_lengths

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def small_config(*overrides):
    """A 2-layer tiny student (fast on CPU) in eval mode semantics (dropout irrelevant under eval())."""
    return apply_overrides(tiny(), ["encoder.num_layers=2", "encoder.dim=64", "encoder.num_heads=4",
                                    "encoder.ffn_dim=96", "subsampling.channels=16", *overrides])


def conv_out(length: int) -> int:
    """torch's Conv1d/2d output-size formula for kernel 3, stride 2, padding 1."""
    return math.floor((length + 2 * 1 - 1 * (3 - 1) - 1) / 2 + 1)


@pytest.mark.parametrize("time_stride", [2, 4])
def test_output_lengths_and_shapes(time_stride, seed):
    generator = torch.Generator().manual_seed(seed)
    model = SpearStudent(small_config(f"subsampling.time_stride={time_stride}")).eval()
    for frames in (1, 2, 3, 8, 37, 40):
        lengths = torch.tensor([frames, max(1, frames - 5), 1])
        feats = torch.randn(3, frames, 128, generator=generator)
        out = model(feats, lengths)
        expected = [conv_out(n) if time_stride == 2 else conv_out(conv_out(n)) for n in lengths.tolist()]
        assert out.lengths.tolist() == expected == subsampled_lengths(lengths, time_stride).tolist()
        assert out.hidden.shape == (3, expected[0], 64)
        assert len(out.layers) == 2 and all(layer.shape == out.hidden.shape for layer in out.layers)
        assert out.layers[-1] is out.hidden
        lean = model(feats, lengths, return_layers=False)
        assert lean.layers == () and torch.equal(lean.hidden, out.hidden)
    assert model.frame_rate == 100.0 / time_stride


BACKENDS = ["sdpa", "flash", "xformers"]


@pytest.mark.parametrize("variant", [[], ["encoder.norm=rmsnorm", "encoder.ffn_activation=swiglu",
                                          "subsampling.time_stride=4"]])
@pytest.mark.parametrize("backend", BACKENDS)
def test_utterance_output_independent_of_batch_and_padding(backend, variant, seed):
    reason = backend_unavailable_reason(backend, DEVICE)
    if reason is not None:
        pytest.skip(reason)
    generator = torch.Generator().manual_seed(seed)
    model = SpearStudent(small_config(f"encoder.attention={backend}", *variant)).to(DEVICE).eval()
    lengths = [53, 30, 17, 1]
    utterances = [torch.randn(n, 128, generator=generator) for n in lengths]
    batch_frames = max(lengths) + 9  # extra padding beyond the longest utterance
    feats = torch.randn(len(lengths), batch_frames, 128, generator=generator) * 50  # garbage padding
    for i, utt in enumerate(utterances):
        feats[i, : len(utt)] = utt
    tolerance = dict(atol=1e-5, rtol=1e-4) if backend == "sdpa" else dict(atol=2e-2, rtol=2e-2)  # half precision
    with torch.no_grad():
        batched = model(feats.to(DEVICE), torch.tensor(lengths, device=DEVICE))
        for layer in batched.layers:
            assert torch.isfinite(layer).all()
        for i, utt in enumerate(utterances):
            alone = model(utt[None].to(DEVICE), torch.tensor([len(utt)], device=DEVICE))
            n = int(alone.lengths[0])
            assert int(batched.lengths[i]) == n
            for layer_alone, layer_batched in zip(alone.layers, batched.layers, strict=True):
                torch.testing.assert_close(layer_batched[i, :n], layer_alone[0], **tolerance)
                assert (layer_batched[i, n:] == 0).all()  # padded positions are zeroed


def test_explicit_unavailable_backend_raises():
    assert resolve_backend("auto", torch.device("cpu")) == "sdpa"
    assert resolve_backend("sdpa", torch.device("cpu")) == "sdpa"
    for name in ("flash", "xformers"):
        with pytest.raises(AttentionBackendUnavailable, match=f"attention backend '{name}' unavailable"):
            resolve_backend(name, torch.device("cpu"))
    with pytest.raises(AttentionBackendUnavailable, match="unknown attention backend"):
        resolve_backend("fast", torch.device("cpu"))
    model = SpearStudent(small_config("encoder.attention=flash"))
    with pytest.raises(AttentionBackendUnavailable, match="flash"):
        model(torch.randn(1, 8, 128), torch.tensor([8]))


def test_sdpa_attention_matches_float64_reference(seed):
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([7, 3, 5])
    batch, frames, heads, head_dim = 3, 7, 2, 8
    q, k, v = (torch.randn(batch, frames, heads, head_dim, generator=generator) for _ in range(3))
    out = attention(q, k, v, SequenceLayout.from_lengths(lengths, frames), "sdpa")
    for b, n in enumerate(lengths.tolist()):
        qb, kb, vb = (t[b, :n].double().transpose(0, 1) for t in (q, k, v))  # (H, n, hd)
        probs = torch.softmax(qb @ kb.transpose(1, 2) / math.sqrt(head_dim), dim=-1)
        expected = (probs @ vb).transpose(0, 1)  # (n, H, hd)
        torch.testing.assert_close(out[b, :n].double(), expected, atol=1e-5, rtol=1e-5)


def test_rotary_matches_complex_rotation_and_is_relative(seed):
    generator = torch.Generator().manual_seed(seed)
    head_dim, base = 16, 10000.0
    rotary = RotaryEmbedding(head_dim, base)
    positions = torch.tensor([0, 3, 11, 250])
    x = torch.randn(4, 2, head_dim, generator=generator)  # (P, H, hd)
    cos, sin = rotary.tables(positions)
    rotated = apply_rotary(x, cos, sin)
    # reference: pair (i, i + hd/2) as a complex number times exp(i * p * base^(-2i/hd))
    half = head_dim // 2
    z = torch.complex(x[..., :half].double(), x[..., half:].double())
    freqs = base ** (-torch.arange(half, dtype=torch.float64) * 2 / head_dim)
    z = z * torch.exp(1j * positions.double()[:, None, None] * freqs)
    torch.testing.assert_close(rotated.double(), torch.cat([z.real, z.imag], dim=-1), atol=1e-5, rtol=1e-5)
    # dot products depend on the position difference only
    q, k = torch.randn(2, head_dim, generator=generator), torch.randn(2, head_dim, generator=generator)

    def score(p_q, p_k):
        cq, sq = rotary.tables(torch.tensor([p_q]))
        ck, sk = rotary.tables(torch.tensor([p_k]))
        return (apply_rotary(q[None], cq, sq) * apply_rotary(k[None], ck, sk)).sum(-1)

    torch.testing.assert_close(score(5, 2), score(105, 102), atol=1e-4, rtol=1e-4)


def test_time_mask_replaces_frames_with_learned_vector(seed):
    generator = torch.Generator().manual_seed(seed)
    model = SpearStudent(small_config()).eval()
    feats = torch.randn(2, 30, 128, generator=generator)
    lengths = torch.tensor([30, 21])
    time_mask = torch.zeros(2, 30, dtype=torch.bool)
    time_mask[0, 4:14] = True
    time_mask[1, 2:9] = True
    manual = feats.clone()
    manual[time_mask] = model.mask_embedding.detach()
    out = model(feats, lengths, time_mask=time_mask)
    torch.testing.assert_close(out.hidden, model(manual, lengths).hidden)
    # a random projection: the plain sum of a LayerNorm output has zero gradient (its centred
    # values sum to 0), so only rounding noise would reach the mask vector
    probe = torch.randn(out.hidden.shape, generator=generator)
    (out.hidden * probe).sum().backward()
    assert model.mask_embedding.grad is not None and model.mask_embedding.grad.abs().sum() > 0


@pytest.mark.parametrize("feats_shape, lengths, mask_shape, message", [
    ((2, 10, 80), [10, 5], None, r"feats must be a float \(B, T, 128\) tensor, got \(2, 10, 80\)"),
    ((2, 10, 128), [10, 11], None, r"feat_lengths must lie in \[1, 10\]"),
    ((2, 10, 128), [10, 0], None, r"feat_lengths must lie in \[1, 10\]"),
    ((2, 10, 128), [10], None, r"feat_lengths must be an integer \(2,\) tensor, got \(1,\)"),
    ((2, 10, 128), [10, 4], (2, 9), r"time_mask must be a bool \(2, 10\) tensor, got \(2, 9\)"),
])
def test_bad_inputs_raise(feats_shape, lengths, mask_shape, message):
    model = SpearStudent(small_config())
    time_mask = None if mask_shape is None else torch.zeros(mask_shape, dtype=torch.bool)
    with pytest.raises(ValueError, match=message):
        model(torch.randn(feats_shape), torch.tensor(lengths), time_mask=time_mask)


def _per_sequence_attention(q, k, v, seqlens):
    """Packed (N, H, hd) attention computed utterance by utterance in float64 (the fakes' core)."""
    out, start = [], 0
    for n in seqlens:
        qs, ks, vs = (t[start:start + n].double().transpose(0, 1) for t in (q, k, v))  # (H, n, hd)
        probs = torch.softmax(qs @ ks.transpose(1, 2) / math.sqrt(q.shape[-1]), dim=-1)
        out.append((probs @ vs).transpose(0, 1).to(q.dtype))
        start += n
    assert start == q.shape[0]
    return torch.cat(out)


def fake_packed_modules():
    """Stand-ins for flash_attn / xformers with their real call signatures, so the packed code path
    (pack, rotary positions, cu_seqlens, unpack) runs on this CPU machine."""
    import types

    flash = types.ModuleType("flash_attn")

    def flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p=0.0, causal=False):
        assert q.dtype in (torch.float16, torch.bfloat16) and cu_q.dtype == torch.int32 and not causal
        seqlens = (cu_q[1:] - cu_q[:-1]).tolist()
        assert torch.equal(cu_q, cu_k) and max_q == max(seqlens) == max_k
        return _per_sequence_attention(q, k, v, seqlens)

    flash.flash_attn_varlen_func = flash_attn_varlen_func
    xformers = types.ModuleType("xformers")
    ops = types.ModuleType("xformers.ops")
    fmha = types.ModuleType("xformers.ops.fmha")

    class BlockDiagonalMask:
        def __init__(self, seqlens):
            self.seqlens = list(seqlens)

        @classmethod
        def from_seqlens(cls, seqlens):
            return cls(seqlens)

    def memory_efficient_attention(q, k, v, attn_bias=None, p=0.0):
        assert q.dim() == 4 and q.shape[0] == 1 and isinstance(attn_bias, BlockDiagonalMask)
        return _per_sequence_attention(q[0], k[0], v[0], attn_bias.seqlens)[None]

    fmha.BlockDiagonalMask, fmha.memory_efficient_attention = BlockDiagonalMask, memory_efficient_attention
    ops.fmha, xformers.ops = fmha, ops
    return {"flash_attn": flash, "xformers": xformers, "xformers.ops": ops, "xformers.ops.fmha": fmha}


@pytest.mark.parametrize("backend", ["flash", "xformers"])
def test_packed_path_matches_padded_sdpa(backend, seed, monkeypatch):
    import spear_fast.model.student as student_module

    for name, module in fake_packed_modules().items():
        monkeypatch.setitem(__import__("sys").modules, name, module)
    generator = torch.Generator().manual_seed(seed)
    model = SpearStudent(small_config()).eval()
    lengths = torch.tensor([41, 12, 30, 2])
    feats = torch.randn(4, 45, 128, generator=generator)
    with torch.no_grad():
        padded = model(feats, lengths)
        monkeypatch.setattr(student_module, "resolve_backend", lambda name, device: backend)
        packed = model(feats, lengths)
        from_ints = model(feats, lengths.tolist(), check=False)  # the trainer's call: layout from host ints
    assert all(torch.equal(a, b) for a, b in zip(from_ints.layers, packed.layers, strict=True))
    # flash computes in bf16 (the backend casts fp32 inputs), xformers here in fp32
    tolerance = dict(atol=3e-2, rtol=3e-2) if backend == "flash" else dict(atol=1e-5, rtol=1e-4)
    assert torch.equal(packed.lengths, padded.lengths)
    for layer_packed, layer_padded in zip(packed.layers, padded.layers, strict=True):
        torch.testing.assert_close(layer_packed, layer_padded, **tolerance)
    valid = torch.arange(packed.hidden.shape[1])[None, :] < packed.lengths[:, None]
    assert (packed.hidden[~valid] == 0).all()
