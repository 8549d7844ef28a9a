"""transformers AutoModel: `spear export` folders load with trust_remote_code and give the student's
frames, also where spear_fast cannot be imported; the `hf:PATH` spec evaluates any remote-code model
(here a small one the test writes, called the way the SPEAR authors' checkpoints are) with probe,
extract and HEAR, side by side with a spear-fast export."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from harness_models import TOY_DIM, TOY_HOP, random_export, write_toy_remote_model

from spear_fast import hear
from spear_fast.cli import main as spear_main
from spear_fast.eval.features import FeatureStore
from spear_fast.eval.upstreams import load_upstream
from spear_fast.integrations.transformers_export import REMOTE_CODE_FILES
from spear_fast.config import config_to_dict
from spear_fast.model.config import StudentConfig
from spear_fast.model.pretrained import SpearModel

transformers = pytest.importorskip("transformers")


@pytest.fixture(autouse=True)
def _offline_module_cache(tmp_path, monkeypatch):
    # transformers copies remote code into HF_MODULES_CACHE: keep it out of the user's cache
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "hf_modules"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _batch(seed, lengths):
    generator = torch.Generator().manual_seed(seed)
    waves = torch.randn(len(lengths), max(lengths), generator=generator) * 0.1  # (B, L)
    return waves, torch.tensor(lengths)


def _auto_model(folder):
    return transformers.AutoModel.from_pretrained(str(folder), trust_remote_code=True, local_files_only=True)


@pytest.mark.parametrize("variant", [dict(), dict(time_stride=4, ffn_activation="swiglu", norm="rmsnorm")])
def test_export_loads_with_automodel_and_matches_the_student(tmp_path, seed, variant):
    config = random_export(tmp_path / "model", seed, **variant)
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == sorted(
        ["config.json", "model.safetensors", *REMOTE_CODE_FILES])
    record = json.loads((tmp_path / "model" / "config.json").read_text())
    assert record["auto_map"]["AutoModel"] == "modeling_spear_fast.SpearFastModel"
    model = _auto_model(tmp_path / "model")
    assert not model.training and model.config.hidden_size == 32 and model.config.num_hidden_layers == 3
    assert model.config.frame_rate == config.frame_rate
    reference = SpearModel.from_pretrained(tmp_path / "model")
    # 15 s: longer than one fbank step for 3 clips (4096 // 3 frames), so the short clips drop out of the
    # later steps' sub-batches: the remote fbank must follow spear-fast's batching to stay bit-identical
    waves, lengths = _batch(seed, [16000 * 15 + int(torch.randint(0, 500, ())), 9_000, 700])
    with torch.no_grad():
        out = model(waves, lengths)
    want = reference.extract(waves, lengths)
    assert set(out.keys()) == {"encoder_out", "encoder_out_lens", "hidden_states"}
    assert torch.equal(out["encoder_out_lens"], want.lengths)
    assert torch.equal(out["encoder_out"], want.hidden)  # the same operations in the same order: bit-identical
    assert len(out["hidden_states"]) == 4
    for got, expected in zip(out["hidden_states"], [want.embedding, *want.layers], strict=True):
        assert torch.equal(got, expected)
    # the SPEAR authors' call: one 1-D clip and a 0-d length
    with torch.no_grad():
        single = model(waves[1, :9000], torch.tensor(9000))
    torch.testing.assert_close(single["encoder_out"][0], want.hidden[1, : int(want.lengths[1])], rtol=1e-5, atol=1e-5)
    # gradients flow (the model can be fine-tuned like any transformers model)
    model.train()
    model(waves[:1, :4000])["encoder_out"].square().mean().backward()
    assert model.blocks[0].attn.qkv.weight.grad is not None


def test_remote_config_defaults_are_spear_fast_defaults():
    from spear_fast.integrations.transformers_remote.configuration_spear_fast import DEFAULT_STUDENT

    assert DEFAULT_STUDENT == config_to_dict(StudentConfig())


def test_automodel_without_spear_fast_in_a_subprocess(tmp_path, seed):
    """A user with only torch, numpy and transformers: spear_fast cannot be imported (and the project's
    kernels package, which transformers leaves alone, is checked to stay unimported)."""
    random_export(tmp_path / "export", seed)
    folder = shutil.copytree(tmp_path / "export", tmp_path / "elsewhere" / "model")
    waves, lengths = _batch(seed, [12_345, 16_000])
    np.savez(tmp_path / "audio.npz", audio=waves.numpy(), lens=lengths.numpy())
    script = tmp_path / "load.py"
    script.write_text(
        "import importlib.abc, sys\n"
        "class Hidden(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.partition('.')[0] == 'spear_fast':\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Hidden())\n"
        "try:\n"
        "    import spear_fast\n"
        "    raise SystemExit('spear_fast is importable')\n"
        "except ModuleNotFoundError:\n"
        "    pass\n"
        "import numpy as np, torch\n"
        "from transformers import AutoModel\n"
        "folder, audio, out = sys.argv[1:]\n"
        "model = AutoModel.from_pretrained(folder, trust_remote_code=True, local_files_only=True)\n"
        "data = np.load(audio)\n"
        "with torch.no_grad():\n"
        "    result = model(torch.from_numpy(data['audio']), torch.from_numpy(data['lens']))\n"
        "assert not any(name.partition('.')[0] in ('spear_fast', 'kernels') for name in sys.modules)\n"
        "np.savez(out, encoder_out=result['encoder_out'].numpy(), lens=result['encoder_out_lens'].numpy(),\n"
        "         **{f'hidden{i}': h.numpy() for i, h in enumerate(result['hidden_states'])})\n")
    env = dict(os.environ, HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1", PYTHONPATH="")
    done = subprocess.run([sys.executable, str(script), str(folder), str(tmp_path / "audio.npz"),
                           str(tmp_path / "out.npz")], cwd=tmp_path / "elsewhere", env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    got = np.load(tmp_path / "out.npz")
    want = SpearModel.from_pretrained(tmp_path / "export").extract(waves, lengths)
    assert np.array_equal(got["lens"], want.lengths.numpy())
    torch.testing.assert_close(torch.from_numpy(got["encoder_out"]), want.hidden, rtol=0, atol=1e-6)
    for i, layer in enumerate([want.embedding, *want.layers]):
        torch.testing.assert_close(torch.from_numpy(got[f"hidden{i}"]), layer, rtol=0, atol=1e-6)


def test_remote_model_rejects_bad_input(tmp_path, seed):
    random_export(tmp_path / "model", seed)
    model = _auto_model(tmp_path / "model")
    good = torch.randn(2, 4000) * 0.1
    cases = [
        (dict(audio=good, sampling_rate=44100), "expected 16000 Hz audio, got sampling_rate=44100"),
        (dict(audio=torch.randn(2, 2, 4000) * 0.1), r"expected mono audio .*got shape \(2, 2, 4000\)"),
        (dict(audio=torch.zeros(1, 0)), "audio is empty"),
        (dict(audio=(good * 32767).to(torch.int16)), "expected float audio in .*int16"),
        (dict(audio=good * 32767), "peak of .*integer PCM"),
        (dict(audio=good, audio_lens=torch.tensor([4000, 40])), r"clip lengths must lie in \[80, 4000\]"),
        (dict(audio=good, audio_lens=torch.tensor([4000.0, 3000.0])), "integer length"),
        (dict(audio=torch.full((1, 4000), float("nan"))), "NaN"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            model(**kwargs)


def test_hf_spec_loads_an_export_through_automodel(tmp_path, seed):
    random_export(tmp_path / "model", seed)
    spec = f"hf:{tmp_path / 'model'}?trust_remote_code=1"
    upstream = load_upstream(spec)
    direct = load_upstream(str(tmp_path / "model"))
    assert upstream.info.kind == "hf" and upstream.num_layers == direct.num_layers == 4
    assert upstream.frame_rate == 50.0 and upstream.dim == 32 and upstream.min_samples == 80
    waves, lengths = _batch(seed, [8000, 5000, 3001])
    got, want = upstream(waves, lengths), direct(waves, lengths)
    assert torch.equal(got.lengths, want.lengths)
    for a, b in zip(got.layers, want.layers, strict=True):
        assert torch.equal(a, b)
    assert load_upstream(spec + "&layers=last").num_layers == 1
    with pytest.raises(ValueError, match="trust_remote_code=1"):
        load_upstream(f"hf:{tmp_path / 'model'}")
    with pytest.raises(ValueError, match="unknown option"):
        load_upstream(spec + "&layer=3")
    with pytest.raises(ValueError, match="layers must be one of"):
        load_upstream(spec.replace("trust_remote_code=1", "trust_remote_code=1&layers=some"))


def test_hf_spec_on_an_authors_style_model(tmp_path, seed):
    folder = write_toy_remote_model(tmp_path / "toy", seed)
    upstream = load_upstream(f"hf:{folder}?trust_remote_code=1")
    assert upstream.frame_rate == 16000 / TOY_HOP  # measured: config.json does not state it
    assert upstream.num_layers == 2 and upstream.dim == TOY_DIM  # hidden_states; encoder_out is the last
    reference = _auto_model(folder)
    waves, lengths = _batch(seed, [6000, 4321, 2000])
    out = upstream(waves, lengths)
    assert out.lengths.tolist() == [n // TOY_HOP for n in lengths.tolist()]
    for b, n in enumerate(lengths.tolist()):
        with torch.no_grad():
            alone = reference(waves[b : b + 1, :n], torch.tensor([n]))
        frames = n // TOY_HOP
        for layer, expected in zip(out.layers, alone["hidden_states"], strict=True):
            torch.testing.assert_close(layer[b, :frames], expected[0], rtol=1e-5, atol=1e-5)
            assert bool((layer[b, frames:] == 0).all())
    stated = load_upstream(f"hf:{write_toy_remote_model(tmp_path / 'toy2', seed, frame_rate_in_config=True)}"
                           f"?trust_remote_code=1")
    assert stated.frame_rate == 40.0


def _toy_variant(folder, hidden_states, tag):
    modeling = folder / "modeling_toy_spear.py"
    modeling.write_text(modeling.read_text().replace('"hidden_states": [first, second]', f'"hidden_states": {hidden_states}'))
    # a config file of its own too: transformers' AutoModel maps a config class (loaded by content
    # hash) to the first model class it saw with it, for the rest of the process
    configuration = folder / "configuration_toy_spear.py"
    configuration.write_text(configuration.read_text() + f"# variant: {tag}\n")
    return f"hf:{folder}?trust_remote_code=1"


def test_hf_spec_layer_rules(tmp_path, seed):
    # hidden_states without encoder_out: encoder_out is appended as the last layer
    spec = _toy_variant(write_toy_remote_model(tmp_path / "toy", seed), "[first]", "without encoder_out")
    upstream = load_upstream(spec)
    waves, lengths = _batch(seed, [4000, 2400])
    out = upstream(waves, lengths)
    assert upstream.num_layers == 2
    with torch.no_grad():
        direct = _auto_model(tmp_path / "toy")(waves[:1], lengths[:1])
    torch.testing.assert_close(out.layers[-1][:1], direct["encoder_out"], rtol=1e-5, atol=1e-5)
    # layers of different shapes cannot form one upstream: named, with the way out
    spec = _toy_variant(write_toy_remote_model(tmp_path / "toy2", seed), "[spectrum, first]", "shapes differ")
    with pytest.raises(ValueError, match="layers=last"):
        load_upstream(spec)
    assert load_upstream(spec + "&layers=last").num_layers == 1


def test_probe_extract_and_hear_side_by_side(tmp_path, seed):
    from test_eval_probe import _tone_corpus

    from spear_fast.eval.tasks import make_task

    toy = f"hf:{write_toy_remote_model(tmp_path / 'toy', seed)}?trust_remote_code=1"
    ours = tmp_path / "ours"
    random_export(ours, seed)
    manifest = _tone_corpus(tmp_path, seed, per_class=20)
    task = make_task(manifest, tmp_path / "tones", label_field="meta.tone", seed=seed)
    results = []
    for name, spec in (("toy", toy), ("ours", str(ours))):
        out = tmp_path / f"{name}.json"
        assert spear_main(["probe", "--model", spec, "--task", str(task), "--out", str(out), "--epochs", "300",
                           "--patience", "50", "--batch-size", "8", "--seed", str(seed % 100)]) == 0
        results.append(json.loads(out.read_text()))
    assert results[0]["upstream"]["kind"] == "hf" and results[0]["upstream"]["num_layers"] == 2
    # band-averaged log spectra separate three tones: 12 test clips, where guessing reaches 9 correct
    # with probability 0.004 (the features themselves are compared with the model's below)
    assert results[0]["tasks"]["tones"]["counts"]["test"] == 12
    assert results[0]["tasks"]["tones"]["test"]["accuracy"] >= 0.75
    assert results[1]["upstream"]["kind"] == "student"
    assert spear_main(["probe-table", str(tmp_path / "toy.json"), str(tmp_path / "ours.json")]) == 0

    assert spear_main(["extract", "--model", toy, "--manifest", str(manifest), "--out", str(tmp_path / "feats"),
                       "--layers", "all"]) == 0
    store = FeatureStore(tmp_path / "feats")
    assert store.meta["frame_rate"] == 40.0 and len(store.ids) == 60
    from spear_fast.audio import load_audio
    from spear_fast.data.manifest import read_manifest

    entry = read_manifest(manifest)[0]
    wave, _ = load_audio(entry.path, 16000)
    with torch.no_grad():
        direct = _auto_model(tmp_path / "toy")(wave[None], torch.tensor([wave.shape[0]]))
    torch.testing.assert_close(store[entry.id], torch.stack([h[0] for h in direct["hidden_states"]]),
                               rtol=1e-5, atol=1e-5)

    model = hear.load_model(toy, layers="all")
    assert model.timestamp_embedding_size == 2 * TOY_DIM
    embeddings, timestamps = hear.get_timestamp_embeddings(torch.randn(2, 16000) * 0.1, model)
    assert embeddings.shape == (2, 40, 2 * TOY_DIM)
    torch.testing.assert_close(timestamps[0], (torch.arange(40) + 0.5) * 25.0)
