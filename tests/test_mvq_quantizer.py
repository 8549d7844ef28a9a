"""Quantizer parameters, files, import from the reference, normalisation, merging, Gram cache."""
import json

import pytest
import torch
from multi_quantization.quantization import Quantizer as RefQuantizer
from mvq_oracle import assert_tokens_agree
from safetensors import safe_open

from spear_fast.mvq import Quantizer
from spear_fast.mvq.quantizer import NORM_EPS, normalization_stats


def random_quantizer(dim, n, k, gen) -> Quantizer:
    q = Quantizer(dim, n, k)
    with torch.no_grad():
        for p in q.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.1 if p.ndim == 0 else 1.0))
    return q


def test_save_load_roundtrip(tmp_path, seed):
    gen = torch.Generator().manual_seed(seed)
    q = random_quantizer(20, 4, 16, gen)
    q.set_normalization(torch.randn(20, generator=gen), torch.rand(20, generator=gen) + 0.5)
    path = tmp_path / "q.safetensors"
    q.save(path)
    with safe_open(str(path), framework="pt") as handle:
        config = json.loads(handle.metadata()["config"])
    assert config == {"dim": 20, "num_codebooks": 4, "codebook_size": 16, "normalized": True}
    loaded = Quantizer.load(path)
    for name, tensor in q.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    x = torch.randn(40, 20, generator=gen)
    assert torch.equal(q.encode(x), loaded.encode(x))
    assert loaded.fingerprint() == q.fingerprint()
    assert not list(tmp_path.glob(".*tmp"))  # atomic write left no temp file
    with pytest.raises(ValueError, match="no such file"):
        Quantizer.load(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="junk.safetensors"):
        Quantizer.load(tmp_path / "junk.safetensors")


@pytest.mark.parametrize("form", ["object", "state_dict", "file_module", "file_state_dict"])
def test_from_multi_quantization(tmp_path, seed, form):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    ref = RefQuantizer(dim=24, codebook_size=16, num_codebooks=4)
    with torch.no_grad():
        ref.logits_scale.fill_(0.03)
        ref.centers_scale.fill_(-0.02)
        ref.centers.add_(0.1 * torch.randn(ref.centers.shape, generator=gen))
    source = {"object": ref, "state_dict": ref.state_dict()}.get(form)
    if source is None:
        source = tmp_path / "ref.pt"
        torch.save(ref.state_dict() if form == "file_state_dict" else ref, source)
        if form == "file_module":  # a whole pickled module cannot be read with weights_only=True
            with pytest.raises(Exception):
                Quantizer.from_multi_quantization(source)
            return
    q = Quantizer.from_multi_quantization(source)
    assert (q.dim, q.num_codebooks, q.codebook_size) == (24, 4, 16)
    x = torch.randn(64, 24, generator=gen)
    with torch.no_grad():
        expected = ref.encode(x, 3, as_bytes=False)
        assert torch.allclose(q.get_centers(), ref.get_centers())
        z = torch.randint(0, 16, (10, 4), generator=gen)
        assert torch.allclose(q.decode(z), ref.decode(z), atol=1e-5)
    assert_tokens_agree(x, ref, q.encode(x, 3), expected)


def test_from_multi_quantization_rejects_bad_sources(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        Quantizer.from_multi_quantization(tmp_path / "nothing.pt")
    with pytest.raises(ValueError, match="lacks"):
        Quantizer.from_multi_quantization({"centers": torch.zeros(2, 4, 3)})
    with pytest.raises(ValueError, match="expected a Quantizer"):
        Quantizer.from_multi_quantization(42)


def test_normalization_applied_at_encode_and_inverted_at_decode(seed):
    gen = torch.Generator().manual_seed(seed)
    raw = random_quantizer(16, 2, 16, gen)
    x = 3.0 + 2.0 * torch.randn(200, 16, generator=gen)
    x64 = x.double()
    mean, std = normalization_stats(x64.sum(0), x64.square().sum(0), 200)
    # independent formula: unbiased std + NORM_EPS
    assert torch.allclose(std.double(), x64.std(0) + NORM_EPS, rtol=1e-6)
    normed = Quantizer(16, 2, 16)
    normed.load_state_dict(raw.state_dict())
    normed.set_normalization(mean, std)
    tokens = normed.encode(x, 2)
    assert torch.equal(tokens, raw.encode((x - mean) / std, 2))
    with torch.no_grad():
        assert torch.allclose(normed.decode(tokens), raw.decode(tokens) * std + mean, atol=1e-5)
    with pytest.raises(ValueError, match="std must be > 0"):
        normed.set_normalization(mean, torch.zeros(16))
    with pytest.raises(ValueError, match=r"shape \(16,\)"):
        normed.set_normalization(mean[:3], std[:3])


def test_merged_pairs_matches_reference_product(seed):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    ref = RefQuantizer(dim=12, codebook_size=4, num_codebooks=4)
    with torch.no_grad():
        ref.centers.add_(torch.randn(ref.centers.shape, generator=gen))
        ref.to_logits.bias.add_(torch.randn(ref.to_logits.bias.shape, generator=gen))
        ref.logits_scale.fill_(0.02)
    q = Quantizer.from_multi_quantization(ref).merged_pairs()
    product = ref.get_product_quantizer()  # the reference's loop-by-loop construction
    assert (q.num_codebooks, q.codebook_size) == (2, 16)
    for name in ("centers", "to_logits.weight", "to_logits.bias", "logits_scale", "centers_scale"):
        assert torch.allclose(q.state_dict()[name], product.state_dict()[name], atol=1e-6), name


def test_gram_cache_tracks_parameter_changes(seed):
    gen = torch.Generator().manual_seed(seed)
    q = random_quantizer(10, 2, 8, gen)

    def independent_gram():
        c = q.get_centers().detach().double().reshape(-1, 10)
        return c @ c.t()

    assert torch.allclose(q.gram().double(), independent_gram(), rtol=1e-5, atol=1e-4)
    first = q.gram()
    assert q.gram() is first  # cached
    with torch.no_grad():
        q.centers.add_(torch.randn(q.centers.shape, generator=gen))
    assert torch.allclose(q.gram().double(), independent_gram(), rtol=1e-5, atol=1e-4)
    with torch.no_grad():
        q.centers_scale.add_(0.05)
    assert torch.allclose(q.gram().double(), independent_gram(), rtol=1e-5, atol=1e-4)
