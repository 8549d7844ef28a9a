"""Upstream adapters: fbank baseline, random-init student, export dir, training checkpoint, teachers
(tiny random Dasheng and WavLM/HuBERT saved in their real formats), each against an independent path."""
import pytest
import torch

from spear_fast.audio import fbank
from spear_fast.eval.upstreams import load_upstream
from spear_fast.model import SpearStudent, tiny
from spear_fast.teachers import load_teacher
from spear_fast.teachers.dasheng import DashengConfig, DashengModel


def _batch(seed, lengths):
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths)
    waves = torch.randn(len(lengths), int(lengths.max()), generator=generator) * 0.1  # noise in the padding too
    return waves, lengths


def test_fbank_baseline(seed):
    upstream = load_upstream("fbank")
    assert (upstream.num_layers, upstream.dim, upstream.frame_rate) == (1, 128, 100.0)
    waves, lengths = _batch(seed, [4000, 2555, 16000])
    out = upstream(waves, lengths)
    assert len(out.layers) == 1 and out.layers[0].shape == (3, 100, 128)
    for b, n in enumerate(lengths.tolist()):
        alone, count = fbank(waves[b, :n])
        assert int(out.lengths[b]) == int(count) == round(n / 160 + 1e-9)
        torch.testing.assert_close(out.layers[0][b, :n // 160], alone[: n // 160], rtol=1e-5, atol=1e-5)
        assert torch.equal(out.layers[0][b, int(count):], torch.zeros_like(out.layers[0][b, int(count):]))


def test_random_student_is_seeded(seed):
    waves, lengths = _batch(seed, [8000, 5000])
    a, b = load_upstream("random:tiny?seed=3"), load_upstream("random:tiny?seed=3")
    other = load_upstream("random:tiny?seed=4")
    assert (a.num_layers, a.dim, a.frame_rate) == (7, 256, 50.0)  # front-end output + 6 layers
    assert a.info.fingerprint == b.info.fingerprint != other.info.fingerprint
    torch.manual_seed(3)
    reference = SpearStudent(tiny()).eval()  # built by hand with the same seed
    out = a(waves, lengths)
    with torch.no_grad():
        want = reference(*fbank(waves, lengths))
    assert torch.equal(out.lengths, want.lengths)
    with torch.no_grad():  # hidden state 0: the front end's output, the Transformer's input
        front, _ = reference.subsampling(*fbank(waves, lengths))  # (B, T', d)
    for b, count in enumerate(want.lengths.tolist()):
        torch.testing.assert_close(out.layers[0][b, :count], front[b, :count], rtol=1e-5, atol=1e-5)
        assert not out.layers[0][b, count:].any()
    for got, expected in zip(out.layers[1:], want.layers, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(other(waves, lengths).layers[-1], out.layers[-1])
    with pytest.raises(ValueError, match="seed"):
        load_upstream("random:tiny?seed=x")
    with pytest.raises(ValueError, match="unknown preset"):
        load_upstream("random:huge")


def test_checkpoint_and_export_give_the_ema_student(tmp_path, seed):
    from spear_fast.cli import main as spear_main
    from spear_fast.checkpoint import load_checkpoint
    from spear_fast.train.config import train_config_from_dict
    from spear_fast.train.main import run
    from spear_fast.train.synthetic import train_argv, write_synthetic_corpus

    corpus = write_synthetic_corpus(tmp_path / "corpus", num_clips=4, seed=seed)
    checkpoint = run(train_argv(corpus, tmp_path / "run", "--max-steps", "1",
                                overrides=["checkpoint.ema_decay=0.5"])).checkpoint
    state = load_checkpoint(checkpoint)
    reference = SpearStudent(train_config_from_dict(state["config"]).model)
    reference.load_state_dict(state["ema"])
    reference.eval()
    assert spear_main(["export", str(checkpoint), str(tmp_path / "exported")]) == 0
    waves, lengths = _batch(seed, [6000, 3100])
    with torch.no_grad():
        want = reference(*fbank(waves, lengths))
    for spec, kind in ((str(checkpoint), "checkpoint"), (str(tmp_path / "exported"), "student")):
        upstream = load_upstream(spec)
        assert upstream.info.kind == kind and upstream.num_layers == 3 and upstream.dim == 64
        out = upstream(waves, lengths)
        for got, expected in zip(out.layers[1:], want.layers, strict=True):
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_dasheng_teacher_exposes_every_layer(tmp_path, seed):
    torch.manual_seed(seed)
    config = {"embed_dim": 32, "depth": 3, "num_heads": 4, "target_length": 32}  # 8-patch chunks: 1.2 s -> 4 chunks
    torch.save({"model": DashengModel(DashengConfig(**config)).state_dict(), "config": config}, tmp_path / "d.pt")
    upstream = load_upstream(f"teacher:dasheng:{tmp_path / 'd.pt'}?dtype=fp32")
    assert (upstream.num_layers, upstream.dim, upstream.frame_rate) == (3, 32, 25.0)
    waves, lengths = _batch(seed, [19200, 12000])
    out = upstream(waves, lengths)
    assert out.lengths.tolist() == [30, 19]  # (L // 160 + 1) // 4 patches
    for layer in (1, 2, 3):
        teacher = load_teacher(f"dasheng:{tmp_path / 'd.pt'}?layer={layer}&dtype=fp32")
        want = teacher(waves, lengths)
        assert torch.equal(out.lengths, want.frame_lengths)
        torch.testing.assert_close(out.layers[layer - 1], want.frames, rtol=1e-5, atol=1e-5)
    chosen = load_upstream(f"dasheng:{tmp_path / 'd.pt'}?dtype=fp32&layer=2&upstream_layers=chosen")
    assert chosen.num_layers == 1
    torch.testing.assert_close(chosen(waves, lengths).layers[0], out.layers[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["wavlm", "hubert"])  # batched with a mask / one clip at a time
def test_hf_teacher_layers_match_transformers(kind, tmp_path, seed):
    transformers = pytest.importorskip("transformers")
    model_cls, config_cls, norm, stable = {"wavlm": ("WavLMModel", "WavLMConfig", "layer", True),
                                          "hubert": ("HubertModel", "HubertConfig", "group", False)}[kind]
    torch.manual_seed(seed)
    config = getattr(transformers, config_cls)(
        hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=48, conv_dim=(16, 16, 16),
        conv_stride=(5, 4, 4), conv_kernel=(10, 4, 4), num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2,
        feat_extract_norm=norm, do_stable_layer_norm=stable)
    reference = getattr(transformers, model_cls)(config).eval()
    reference.save_pretrained(tmp_path)
    upstream = load_upstream(f"teacher:{kind}:{tmp_path}?layer=3&normalize=false&dtype=fp32")
    assert upstream.num_layers == 3 and upstream.frame_rate == 200.0
    waves, lengths = _batch(seed, [3001, 2200])
    out = upstream(waves, lengths)
    for b, n in enumerate(lengths.tolist()):
        with torch.no_grad():
            hidden = reference(waves[b : b + 1, :n], output_hidden_states=True).hidden_states
        frames = int(out.lengths[b])
        for layer in (1, 2):
            torch.testing.assert_close(out.layers[layer - 1][b, :frames], hidden[layer][0], rtol=1e-4, atol=1e-4)


def test_bad_specs():
    with pytest.raises(ValueError, match="none of"):
        load_upstream("wavlm-large-from-the-hub")
    with pytest.raises(ValueError, match="no such file"):
        load_upstream("/nonexistent/model.pt")
    with pytest.raises(ValueError, match="upstream_layers"):
        load_upstream("teacher:crepe-demo?upstream_layers=some")
    with pytest.raises(ValueError, match=r"lengths must lie in \[80"):
        load_upstream("fbank")(torch.randn(1, 100), torch.tensor([50]))
