"""s3prl 0.4.18: the UpstreamExpert through s3prl's own Featurizer (s3prl.upstream.interfaces, what
run_downstream.py uses) and its own S3PRLUpstream / Featurizer (s3prl/nn/upstream.py); hidden states
in s3prl's order with padded frames zeroed; the hub entry; bad input named."""
import importlib.util
import sys
import types

import pytest
import torch
from harness_models import exported  # noqa: F401 (a fixture)

from spear_fast.integrations import s3prl_hubconf
from spear_fast.integrations.s3prl_expert import UpstreamExpert
from spear_fast.model.pretrained import SpearModel

interfaces = pytest.importorskip("s3prl.upstream.interfaces")


def _wavs(seed, lengths):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=generator) * 0.1 for n in lengths]


def test_hidden_states_follow_s3prl(exported, seed):
    expert = s3prl_hubconf.spear_fast_local(str(exported), model_config=None, refresh=False)  # as run_downstream
    assert not expert.training and expert.get_downsample_rates("hidden_states") == 320
    wavs = _wavs(seed, [16000 + int(torch.randint(0, 300, ())), 7000, 2345])
    with torch.no_grad():
        out = expert(wavs)
    hidden = out["hidden_states"]
    assert len(hidden) == 4 and out["last_hidden_state"] is hidden[-1]
    student = SpearModel.from_pretrained(exported)
    for b, wav in enumerate(wavs):
        alone = student.extract(wav[None])  # each clip alone: padding never leaks into a clip's frames
        frames = alone.hidden.shape[1]
        for got, want in zip(hidden, [alone.embedding, *alone.layers], strict=True):
            torch.testing.assert_close(got[b, :frames], want[0], rtol=1e-5, atol=1e-5)
            assert bool((got[b, frames:] == 0).all())  # padded frames zeroed


def test_superb_featurizer_runs_on_it(exported, seed):
    expert = UpstreamExpert(str(exported))
    featurizer = interfaces.Featurizer(expert, feature_selection="hidden_states", upstream_device="cpu")
    assert featurizer.layer_num == 4 and featurizer.output_dim == 32 and featurizer.downsample_rate == 320
    wavs = _wavs(seed, [16000, 12345, 4001])
    with torch.no_grad():
        features = featurizer(wavs, expert(wavs))  # weighted sum, then s3prl's own length check and cut
    assert [f.shape for f in features] == [(50, 32), (39, 32), (13, 32)]


def test_s3prl_upstream_collection_runs_on_it(exported, seed, monkeypatch):
    """s3prl/nn/upstream.py itself. Importing it through `s3prl.nn` pulls in torchaudio, which does not
    load beside this torch, so the file is loaded alone, with s3prl.hub replaced by a module holding
    our entry (as a user's registration would make it) and a bare stand-in for torchaudio, which
    s3prl/util/pseudo_data.py imports only for writing files (get_pseudo_wavs does not use it)."""
    import s3prl

    hub = types.ModuleType("s3prl.hub")
    hub.spear_fast_local = s3prl_hubconf.spear_fast_local
    monkeypatch.setitem(sys.modules, "s3prl.hub", hub)
    monkeypatch.setattr(s3prl, "hub", hub, raising=False)
    monkeypatch.setitem(sys.modules, "torchaudio", types.ModuleType("torchaudio"))
    before = set(sys.modules)
    try:
        spec = importlib.util.spec_from_file_location("s3prl_nn_upstream", f"{s3prl.__path__[0]}/nn/upstream.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:  # nothing imported against the stand-ins outlives the test
        for name in set(sys.modules) - before:
            del sys.modules[name]
    upstream = module.S3PRLUpstream("spear_fast_local", path_or_url=str(exported))
    assert upstream.num_layers == 4 and upstream.hidden_sizes == [32] * 4 and upstream.downsample_rates == [320] * 4
    upstream.eval()
    lengths = torch.tensor([16321, 16000, 5000])
    wavs = torch.zeros(3, 16321)
    for b, wav in enumerate(_wavs(seed, lengths.tolist())):
        wavs[b, : wav.shape[0]] = wav
    with torch.no_grad():
        hidden, hidden_lengths = upstream(wavs, lengths)
        combined, combined_lengths = module.Featurizer(upstream)(hidden, hidden_lengths)
    assert [h.shape for h in hidden] == [(3, 52, 32)] * 4  # ceil(16321 / 320) frames, s3prl's count
    assert combined.shape == (3, 52, 32) and combined_lengths.tolist() == [52, 50, 16]


def test_fine_tuning_gets_gradients(exported):
    expert = UpstreamExpert(str(exported))
    expert.train()  # what s3prl's runner does with -f (upstream_trainable)
    out = expert(_wavs(0, [8000, 6000]))
    out["last_hidden_state"].square().mean().backward()
    assert expert.model.blocks[0].attn.qkv.weight.grad is not None


def test_hub_entry_and_bad_input(exported, tmp_path):
    namespace = {}
    exec("from spear_fast.integrations.s3prl_hubconf import *", namespace)  # the line s3prl's hub.py gets
    assert sorted(k for k in namespace if not k.startswith("__")) == ["spear_fast_local"]
    expert = UpstreamExpert(str(exported))
    good = torch.randn(8000) * 0.1
    cases = [
        (dict(wavs=[good], sample_rate=8000), "expected 16000 Hz audio, got sample rate 8000"),
        (dict(wavs=[torch.randn(2, 8000) * 0.1]), r"clip 0 must be a mono 1-D waveform .*\(2, 8000\)"),
        (dict(wavs=[]), "empty list"),
        (dict(wavs=[good, torch.zeros(0)]), "clip 1 has 0 samples, at least 80"),
        (dict(wavs=[(good * 32767).to(torch.int16)]), "expected float audio in .*int16"),
        (dict(wavs=[good * 32767]), "peak of .*integer PCM"),
        (dict(wavs=torch.randn(2, 8000)), "list of 1-D waveforms"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            expert(**kwargs)
    with pytest.raises(ValueError, match="model_config"):
        UpstreamExpert(str(exported), model_config="upstream.yaml")
    with pytest.raises(ValueError, match="neither an export directory"):
        UpstreamExpert(str(tmp_path / "missing"))
