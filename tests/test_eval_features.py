"""`spear extract` / extract_features: what is stored equals the upstream run alone on each clip; pooling,
layer selection, resuming, bad clips, settings mismatch."""
import json

import numpy as np
import pytest
import soundfile as sf
import torch

from spear_fast.audio import fbank
from spear_fast.cli import main as spear_main
from spear_fast.data.manifest import ManifestEntry, read_manifest, write_manifest
from spear_fast.eval.features import FeatureStore, extract_features, parse_layers
from spear_fast.eval.upstreams import load_upstream


def _corpus(tmp_path, seed, count=7):
    rng = np.random.default_rng(seed)
    entries = []
    for i in range(count):
        n = int(rng.integers(1200, 9000))
        wave = (rng.standard_normal(n) * 0.1).astype(np.float32)
        path = tmp_path / f"clip{i}.wav"
        sf.write(path, wave, 16000, subtype="FLOAT")
        entries.append(ManifestEntry(id=f"spk/{i}", path=str(path), duration=n / 16000, sample_rate=16000,
                                     domain="audio", meta={"label": str(i % 2)}))
    manifest = tmp_path / "m.jsonl"
    write_manifest(manifest, entries)
    return manifest, read_manifest(manifest)


def _tiny_student(directory, seed):
    from spear_fast.model import (
        EncoderConfig,
        SpearStudent,
        StudentConfig,
        SubsamplingConfig,
    )
    from spear_fast.model.pretrained import save_pretrained

    config = StudentConfig(subsampling=SubsamplingConfig(channels=16),
                           encoder=EncoderConfig(num_layers=3, dim=16, num_heads=2, ffn_dim=32, attention="sdpa"))
    torch.manual_seed(seed)
    save_pretrained(SpearStudent(config).state_dict(), config, directory)
    return directory


def test_parse_layers():
    assert parse_layers("all", 4) == [0, 1, 2, 3]
    assert parse_layers("last", 4) == [3]
    assert parse_layers("2,0,-1", 4) == [0, 2, 3]
    with pytest.raises(ValueError, match="outside"):
        parse_layers("4", 4)
    with pytest.raises(ValueError, match="comma-separated"):
        parse_layers("first", 4)


def test_stored_features_match_the_upstream_alone(tmp_path, seed):
    _, entries = _corpus(tmp_path, seed)
    upstream = load_upstream(str(_tiny_student(tmp_path / "student", seed)))
    out = tmp_path / "feats"
    report = extract_features(upstream, entries, out, layers="0,2", batch_seconds=1.0, shard_utterances=3,
                              progress=False)
    assert report.extracted == 7 and report.skipped == 0 and not report.failed
    store = FeatureStore(out)
    assert store.meta["layers"] == [0, 2] and store.meta["frame_rate"] == 50.0 and len(store) == 7
    assert len(set(store.shards.values())) >= 2  # several shards were written
    for entry in entries:
        wave = torch.from_numpy(sf.read(entry.path, dtype="float32")[0])
        alone = upstream.student(*fbank(wave[None]))  # the student on this clip only, no padding
        got = store[entry.id]
        assert got.shape == (2, alone.layers[0].shape[1], 16) and store.frames[entry.id] == got.shape[1]
        # upstream hidden state 0 is the front end's output, state i >= 1 the student's layer i - 1
        torch.testing.assert_close(got[0], alone.embedding[0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(got[1], alone.layers[1][0], rtol=1e-4, atol=1e-5)

    pooled = extract_features(upstream, entries, tmp_path / "pooled", layers="all", pool="mean", progress=False)
    assert pooled.extracted == 7
    store_all, store_mean = FeatureStore(tmp_path / "pooled"), store
    for entry in entries:
        mean = store_all[entry.id]  # (4, 16)
        torch.testing.assert_close(mean[[0, 2]], store_mean[entry.id].double().mean(1).float(), rtol=1e-4, atol=1e-5)


def test_resume_bad_clips_and_settings(tmp_path, seed):
    _, entries = _corpus(tmp_path, seed)
    upstream = load_upstream("fbank")
    out = tmp_path / "feats"
    first = extract_features(upstream, entries[:4], out, shard_utterances=2, progress=False)
    assert first.extracted == 4
    shard_times = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.safetensors")}
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF not really a wave file")
    bad = ManifestEntry(id="bad", path=str(broken), duration=1.0, sample_rate=16000, domain="audio")
    second = extract_features(upstream, entries + [bad], out, shard_utterances=2, progress=False)
    assert second.skipped == 4 and second.extracted == 3 and list(second.failed) == ["bad"]
    assert json.loads((out / "failed.json").read_text()).keys() == {"bad"}
    for name, mtime in shard_times.items():  # finished shards are left alone
        assert (out / name).stat().st_mtime_ns == mtime
    store = FeatureStore(out)
    assert sorted(store.ids) == sorted(e.id for e in entries)
    for entry in entries:
        wave = torch.from_numpy(sf.read(entry.path, dtype="float32")[0])
        torch.testing.assert_close(store[entry.id][0], fbank(wave)[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="other settings"):
        extract_features(upstream, entries, out, pool="mean", progress=False)
    assert not list(out.glob(".*.tmp"))  # no temp file left behind


def test_an_upstream_failure_stops_extract_naming_the_clip_and_keeps_the_finished_clips(tmp_path, seed):
    """A failure of the model is not a bad clip: extract stops, naming the clip, after committing the
    clips finished before it; a rerun resumes from them."""
    from spear_fast.pipeline.inference import TeacherError

    _, entries = _corpus(tmp_path, seed)
    upstream = load_upstream("fbank")
    ordered = sorted(entries, key=lambda e: (e.effective_duration, e.id))  # one clip per batch, in this order
    samples = [sf.info(e.path).frames for e in ordered]
    first = samples.index(samples[4])  # the first clip the upstream fails on
    real = upstream.forward

    def failing(waves, lengths=None):
        if samples[first] in lengths.tolist():
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(waves, lengths)

    upstream.forward = failing
    out = tmp_path / "feats"
    with pytest.raises(TeacherError, match=f"clip {ordered[first].id!r}.*out of memory"):
        extract_features(upstream, entries, out, batch_seconds=1e-3, shard_utterances=3, progress=False)
    assert sorted(FeatureStore(out).ids) == sorted(e.id for e in ordered[:first])
    del upstream.forward
    report = extract_features(upstream, entries, out, batch_seconds=1e-3, shard_utterances=3, progress=False)
    assert report.skipped == first and report.extracted == len(entries) - first and not report.failed
    assert sorted(FeatureStore(out).ids) == sorted(e.id for e in entries)


def test_clips_over_the_duration_cap_are_skipped_and_listed(tmp_path, seed):
    """extract caps clip length like collect-frames and tokenize (600 s by default): a longer clip is
    listed in failed.json with the reason instead of costing minutes and gigabytes."""
    from spear_fast.pipeline.clips import DEFAULT_MAX_DURATION

    manifest, entries = _corpus(tmp_path, seed, count=3)
    rate = 1000  # a long clip that is small on disk; the cap is checked from the header, before decoding
    seconds = DEFAULT_MAX_DURATION + 1.0
    long_path = tmp_path / "long.wav"
    sf.write(long_path, np.zeros(int(seconds * rate), np.int16), rate, subtype="PCM_16")
    long = ManifestEntry(id="long", path=str(long_path), duration=seconds, sample_rate=rate, domain="audio")
    report = extract_features(load_upstream("fbank"), entries + [long], tmp_path / "feats", progress=False)
    assert report.extracted == 3 and list(report.failed) == ["long"]
    assert "too long" in report.failed["long"] and f"max_duration={DEFAULT_MAX_DURATION}" in report.failed["long"]
    assert sorted(FeatureStore(tmp_path / "feats").ids) == sorted(e.id for e in entries)
    shortest = min(e.duration for e in entries)
    out = tmp_path / "cli"
    assert spear_main(["extract", "--model", "fbank", "--manifest", str(manifest), "--layers", "last",
                       "--out", str(out), "--max-duration", str(shortest * 1.01)]) == 0
    failed = json.loads((out / "failed.json").read_text())
    assert sorted(failed) == sorted(e.id for e in entries if e.duration > shortest * 1.01)
    assert all("too long" in reason for reason in failed.values())


def test_extract_command(tmp_path, seed):
    manifest, entries = _corpus(tmp_path, seed, count=3)
    out = tmp_path / "cli"
    assert spear_main(["extract", "--model", "fbank", "--manifest", str(manifest), "--layers", "last",
                       "--out", str(out), "--pool", "mean", "--dtype", "float16"]) == 0
    store = FeatureStore(out)
    assert store.meta["dtype"] == "float16" and store.meta["pool"] == "mean"
    for entry in entries:
        wave = torch.from_numpy(sf.read(entry.path, dtype="float32")[0])
        torch.testing.assert_close(store[entry.id][0], fbank(wave)[0].mean(0), rtol=2e-3, atol=2e-2)
    assert spear_main(["extract", "--model", "fbank", "--manifest", str(manifest), "--layers", "last",
                       "--out", str(out), "--pool", "mean", "--dtype", "float16"]) == 0  # a no-op rerun
