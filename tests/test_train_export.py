"""`spear export` round trip, EMA arithmetic, and the augmentation/eval paths of the trainer."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from kernels.token_mix import draw_token_mix_plan, token_mix_torch
from spear_fast.audio import fbank
from spear_fast.cli import main as spear_main
from spear_fast.model.pretrained import SpearModel
from spear_fast.model.student import SpearStudent
from spear_fast.train.augment import augment_batch
from spear_fast.checkpoint import load_checkpoint
from spear_fast.train.config import MixingConfig, train_config_from_dict
from spear_fast.train.main import run
from spear_fast.train.synthetic import fresh_seed, train_argv, write_synthetic_corpus

DECAY = 0.75


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    seed = fresh_seed() % 1000
    root = tmp_path_factory.mktemp("export")
    corpus = write_synthetic_corpus(root / "corpus", num_clips=6, seed=seed)
    result = run(train_argv(corpus, root / "run", "--max-steps", "1",
                            overrides=[f"checkpoint.ema_decay={DECAY}", f"runtime.seed={seed}"]))
    return result.checkpoint, seed


def test_ema_is_the_decayed_average(trained):
    path, seed = trained
    state = load_checkpoint(path)
    config = train_config_from_dict(state["config"])
    torch.manual_seed(seed)  # the trainer builds the student right after seeding with runtime.seed
    initial = SpearStudent(config.model).state_dict()
    changed = 0
    for key, after in state["model"].items():
        expected = DECAY * initial[key].double() + (1 - DECAY) * after.double()  # one step of EMA
        assert torch.allclose(state["ema"][key].double(), expected, atol=1e-6), key
        changed += not torch.equal(initial[key], after)
    assert changed > 10


@pytest.mark.parametrize("ema", [True, False])
def test_export_round_trip(trained, tmp_path, ema):
    path, _ = trained
    out = tmp_path / "exported"
    assert spear_main(["export", str(path), str(out)] + ([] if ema else ["--no-ema"])) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "configuration_spear_fast.py", "model.safetensors",
                                                     "modeling_spear_fast.py"]  # + transformers remote code
    model = SpearModel.from_pretrained(out)
    assert not model.training
    state = load_checkpoint(path)
    reference = SpearStudent(train_config_from_dict(state["config"]).model)
    weights = state["ema"] if ema else state["model"]
    reference.load_state_dict(weights)
    reference.eval()
    generator = torch.Generator().manual_seed(fresh_seed())
    lengths = torch.tensor([16000, 9001])
    waves = torch.randn(2, 16000, generator=generator) * 0.1 * (torch.arange(16000)[None] < lengths[:, None])
    out_model = model.extract(waves, lengths)
    with torch.no_grad():
        feats, feat_lengths = fbank(waves, lengths)
        expected = reference(feats, feat_lengths)
    assert torch.equal(out_model.lengths, expected.lengths)
    assert len(out_model.layers) == len(expected.layers) == reference.config.encoder.num_layers
    for got, want in zip(out_model.layers, expected.layers):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    single = model.extract(waves[1, :9001])  # one wave alone = its row in the batch
    torch.testing.assert_close(single.hidden[0], out_model.hidden[1, : int(out_model.lengths[1])], rtol=1e-4,
                               atol=1e-5)


def test_from_pretrained_rejects_a_foreign_directory(tmp_path):
    with pytest.raises(ValueError, match="config.json: not found"):
        SpearModel.from_pretrained(tmp_path)


def _batch(seed: int):
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([16000, 12000, 8000, 16000])
    waves = torch.randn(4, 16000, generator=generator) * (torch.arange(16000)[None] < lengths[:, None])
    tokens = torch.randint(0, 256, (4, 50, 3), generator=generator)  # 50 Hz
    tokens[(torch.arange(50)[None] >= (lengths // 320)[:, None])] = -100
    return waves, lengths, tokens


def test_token_mixing_matches_the_kernel_and_noise_hits_its_snr(seed):
    waves, lengths, tokens = _batch(seed)
    config = MixingConfig(token_mix_prob=1.0, noise_prob=0.0)
    got = augment_batch(waves, lengths, {"speech": tokens}, {"speech": 50.0}, config,
                        torch.Generator().manual_seed(seed), seed)
    plan = draw_token_mix_plan(lengths, torch.Generator().manual_seed(seed), prob=1.0, snr_range=(-5.0, 5.0),
                               overlap_range=(0.2, 0.5), full_overlap_prob=0.5)
    want = token_mix_torch(waves, lengths, plan, (tokens,), (50.0,), seed)
    assert got.token_mixed == 4
    assert torch.equal(got.waves, want.waves) and torch.equal(got.targets["speech"], want.targets[0])
    assert not torch.equal(got.waves, waves)

    noise = dataclasses.replace(config, token_mix_prob=0.0, noise_prob=1.0, noise_snr_min_db=10.0,
                                noise_snr_max_db=10.0)
    got = augment_batch(waves, lengths, {"speech": tokens}, {"speech": 50.0}, noise,
                        torch.Generator().manual_seed(seed), seed)
    assert got.noised == 4 and torch.equal(got.targets["speech"], tokens)  # targets unchanged
    for b, n in enumerate(lengths.tolist()):
        signal = waves[b, :n].double()
        added = got.waves[b, :n].double() - signal
        snr = 10 * torch.log10(signal.pow(2).sum() / added.pow(2).sum())
        assert abs(float(snr) - 10.0) < 0.3  # 8000+ Gaussian samples: power within ~3 %
        assert torch.all(got.waves[b, n:] == 0)  # padding stays silent
    babble = dataclasses.replace(noise, noise_kind="batch")
    got = augment_batch(waves, lengths, {"speech": tokens}, {"speech": 50.0}, babble,
                        torch.Generator().manual_seed(seed), seed)
    assert got.noised == 4 and torch.equal(got.targets["speech"], tokens) and not torch.equal(got.waves, waves)
    off = augment_batch(waves, lengths, {"speech": tokens}, {"speech": 50.0}, MixingConfig(token_mix_prob=0.0),
                        torch.Generator().manual_seed(seed), seed)
    assert off.waves is waves and off.targets["speech"] is tokens


def test_eval_batches_are_neither_mixed_nor_masked(tmp_path):
    from spear_fast.data.manifest import read_manifest
    from spear_fast.config import apply_overrides
    from spear_fast.train.config import train_config
    from spear_fast.train.data import open_token_stores, validate_corpus
    from spear_fast.train.loop import Trainer
    from spear_fast.train.synthetic import TEST_OVERRIDES

    seed = fresh_seed() % 1000
    corpus = write_synthetic_corpus(tmp_path / "corpus", num_clips=6, seed=seed)
    config = apply_overrides(train_config("tiny"), TEST_OVERRIDES + ["mixing.token_mix_prob=1", "mixing.noise_prob=1"])
    stores = open_token_stores(corpus.token_dirs, config)
    entries, _ = validate_corpus(read_manifest(corpus.manifest), stores, config)
    trainer = Trainer(config, entries, stores, tmp_path / "run")
    # The first batch of a bucket may hold a single clip: take one with several (mixing needs a partner).
    batch = next((c.batch for c in trainer.loader if c.batch is not None and len(c.batch.ids) >= 2), None)
    assert batch is not None, "no batch of the synthetic corpus holds two clips"
    evaluation = trainer.prepare(batch, seed, train=False)
    feats, feat_lengths = fbank(batch.waves, batch.lengths)
    assert torch.equal(evaluation.feats, feats) and evaluation.feat_lengths == feat_lengths.tolist()
    assert not evaluation.time_mask.any() and not evaluation.output_mask.any()
    for name, (tokens, _) in evaluation.targets.items():
        assert torch.equal(tokens, batch.tokens[name])
    training = trainer.prepare(batch, seed, train=True)
    assert training.time_mask.any() and not torch.equal(training.feats, feats)
