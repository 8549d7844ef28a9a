"""Weighted-layer probes: metrics by hand, known answers (separable / random labels / one informative
layer), early stopping, determinism, tasks as data, and `spear probe` end to end on sine tones."""
import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from spear_fast.cli import main as spear_main
from spear_fast.config import check
from spear_fast.data.manifest import ManifestEntry, write_manifest
from spear_fast.eval.probe import (
    ProbeConfig,
    ProbeData,
    classification_metrics,
    format_table,
    frame_label_indexes,
    one_layer,
    run_probes,
    subset_scores,
    train_probe,
)
from spear_fast.eval.tasks import load_task, make_task

FREQS = (220.0, 660.0, 1980.0)  # three tones a 128-bin log-mel separates easily


def test_metrics_match_a_by_hand_count(seed):
    generator = torch.Generator().manual_seed(seed)
    target = torch.randint(0, 5, (200,), generator=generator)
    pred = torch.where(torch.rand(200, generator=generator) < 0.6, target, torch.randint(0, 4, (200,), generator=generator))
    got = classification_metrics(pred, target, num_classes=6)  # class 5 never occurs: left out of the mean
    t, p = target.tolist(), pred.tolist()
    f1s = []
    for c in sorted(set(t) | set(p)):
        tp = sum(1 for a, b in zip(t, p) if a == c and b == c)
        fp = sum(1 for a, b in zip(t, p) if a != c and b == c)
        fn = sum(1 for a, b in zip(t, p) if a == c and b != c)
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    assert got["accuracy"] == pytest.approx(sum(a == b for a, b in zip(t, p)) / 200, abs=1e-12)
    assert got["macro_f1"] == pytest.approx(sum(f1s) / len(f1s), abs=1e-12)


def _layered(generator, n, num_classes, informative, num_layers=4, dim=12, shift=1.5, random_labels=False):
    """x (n, L, d) noise; only layer `informative` carries the class (a class-dependent shift)."""
    y = torch.randint(0, num_classes, (n,), generator=generator)
    centres = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(7)) * shift
    x = torch.randn(n, num_layers, dim, generator=generator)
    x[:, informative] += centres[y]
    if random_labels:
        y = torch.randint(0, num_classes, (n,), generator=generator)
    return ProbeData(x, y)


def test_known_answers_and_layer_weights(seed):
    generator = torch.Generator().manual_seed(seed)
    informative = int(torch.randint(0, 4, (), generator=generator))
    config = ProbeConfig(epochs=60, patience=60, seed=seed % 1000)
    result = train_probe(*(_layered(generator, n, 3, informative, shift=2.5) for n in (180, 60, 300)), 3, config)
    assert result.test["accuracy"] > 0.95
    weights = torch.tensor(result.layer_weights)
    assert weights.sum().item() == pytest.approx(1.0, abs=1e-6) and bool((weights > 0).all())
    assert int(weights.argmax()) == informative and float(weights[informative]) > 0.7  # uniform: 0.25

    mlp = train_probe(*(_layered(generator, n, 3, informative, shift=2.5) for n in (240, 90, 300)), 3,
                      ProbeConfig(head="mlp", hidden_dim=32, epochs=15, patience=15, seed=seed % 1000))
    assert mlp.test["accuracy"] > 0.95 and int(torch.tensor(mlp.layer_weights).argmax()) == informative

    chance = train_probe(*(_layered(generator, n, 3, informative, random_labels=True) for n in (240, 90, 600)), 3,
                         ProbeConfig(epochs=30, patience=5, seed=seed % 1000))
    assert abs(chance.test["accuracy"] - 1 / 3) < 0.08  # 600 test items: 4 standard deviations


def test_one_layer_alone(seed):
    generator = torch.Generator().manual_seed(seed)
    informative = int(torch.randint(0, 4, (), generator=generator))
    splits = [_layered(generator, n, 3, informative, shift=2.5) for n in (180, 60, 300)]
    config = ProbeConfig(epochs=40, patience=40, seed=seed % 1000)
    alone = train_probe(*(one_layer(d, informative, "m") for d in splits), 3, config)
    other = train_probe(*(one_layer(d, (informative + 1) % 4, "m") for d in splits), 3, config)
    assert alone.test["accuracy"] > 0.95 and alone.layer_weights == [1.0]
    assert abs(other.test["accuracy"] - 1 / 3) < 0.1  # a noise layer: chance (300 test items)
    with pytest.raises(ValueError, match=r"probe layer 4 does not exist: m exposes 4 hidden states \(0 \.\. 3\)"):
        one_layer(splits[0], 4, "m")
    with pytest.raises(ValueError, match="layer=-1 is out of range: must be >= 0"):
        check(ProbeConfig(layer=-1))


def test_early_stopping_keeps_the_best_epoch(seed):
    generator = torch.Generator().manual_seed(seed)
    train = _layered(generator, 60, 3, 0, shift=0.3)
    valid = _layered(generator, 60, 3, 0, random_labels=True)  # valid labels carry nothing: it stops early
    config = ProbeConfig(epochs=200, patience=4, seed=1)
    result = train_probe(train, valid, valid, 3, config)
    assert result.epochs_run == result.best_epoch + config.patience < config.epochs
    best = result.history[result.best_epoch - 1]
    assert result.valid["loss"] == pytest.approx(best["valid_loss"], rel=1e-6)
    # test = valid: scoring the restored state reproduces the best epoch, not the last one
    assert result.test["accuracy"] == pytest.approx(best["valid_accuracy"]) and result.test == result.valid
    again = train_probe(train, valid, valid, 3, config)
    assert again.layer_weights == result.layer_weights and again.history == result.history  # deterministic
    with pytest.raises(ValueError, match="labels must lie"):
        train_probe(train, valid, ProbeData(valid.x, valid.y + 3), 3, config)


def test_frame_label_alignment():
    # 50 Hz frames (centres 10, 30, 50 ... ms) on 10 Hz labels: frames 0-4 -> label 0, 5-9 -> 1, ...
    index = frame_label_indexes(27, 50.0, 5, 10.0)
    want = [j * 20 + 10 for j in range(27)]  # centres in ms
    assert index.tolist() == [c // 100 if c // 100 < 5 else -1 for c in want]


def _tone_corpus(tmp_path, seed, per_class=14, duration=0.25, frame_task=False):
    rng = np.random.default_rng(seed)
    entries = []
    t = np.arange(int(16000 * duration)) / 16000
    for i in range(per_class * len(FREQS)):
        if frame_task:  # 4 segments of 0.1 s, each a random tone; labels at 10 Hz
            labels = rng.integers(0, len(FREQS), 4)
            seg = np.arange(1600) / 16000
            wave = np.concatenate([np.sin(2 * np.pi * FREQS[k] * seg + rng.uniform(0, 6.3)) for k in labels])
            label = [str(int(k)) for k in labels]
        else:
            k = i % len(FREQS)
            wave = np.sin(2 * np.pi * FREQS[k] * (1 + rng.uniform(-0.02, 0.02)) * t + rng.uniform(0, 6.3))
            label = str(k)
        wave = (0.3 * wave + 0.01 * rng.standard_normal(wave.shape)).astype(np.float32)
        path = tmp_path / f"tone{i}.wav"
        sf.write(path, wave, 16000)
        entries.append(ManifestEntry(id=f"tone{i}", path=str(path), duration=len(wave) / 16000, sample_rate=16000,
                                     domain="audio", meta={"tone": label, "noise": str(int(rng.integers(0, 3)))}))
    manifest = tmp_path / "tones.jsonl"
    write_manifest(manifest, entries)
    return manifest


def test_probe_command_on_tones(tmp_path, seed, capsys):
    manifest = _tone_corpus(tmp_path, seed, per_class=20)
    tones = make_task(manifest, tmp_path / "tones", label_field="meta.tone", seed=seed)
    noise = make_task(manifest, tmp_path / "noise", label_field="meta.noise", seed=seed)  # labels unrelated to audio
    task = load_task(tones)
    assert task.labels == ["0", "1", "2"] and task.type == "utterance"
    assert sum(len(rows) for rows in task.splits.values()) == 60
    assert not {e.id for e in task.splits["train"]} & {e.id for e in task.splits["test"]}
    out = tmp_path / "results.json"
    argv = ["probe", "--model", "fbank", "--task", str(tones), "--task", str(noise), "--out", str(out),
            "--epochs", "40", "--patience", "10", "--batch-size", "8", "--seed", str(seed % 100)]
    assert spear_main(argv) == 0
    results = json.loads(out.read_text())
    assert results["upstream"]["kind"] == "fbank"
    assert results["tasks"]["tones"]["test"]["accuracy"] > 0.9
    assert results["tasks"]["tones"]["layer_weights"] == [1.0]
    assert results["tasks"]["noise"]["test"]["accuracy"] <= 0.75  # 3 classes, no signal: P(>= 10 of 12) ~ 3e-4
    assert (tmp_path / "features").is_dir()
    assert spear_main(argv) == 0  # finished tasks are kept, not rerun
    assert json.loads(out.read_text())["tasks"] == results["tasks"]
    (model_cache,) = (tmp_path / "features").iterdir()
    assert len(list(model_cache.iterdir())) == 2  # one feature cache per task
    record = json.loads((tones / "task.json").read_text())
    (tones / "task.json").write_text(json.dumps(dict(record, description="rebuilt")))
    assert spear_main(argv) == 0  # the task changed: extracted and probed again
    assert len(list(model_cache.iterdir())) == 3
    assert json.loads(out.read_text())["tasks"]["tones"]["task_fingerprint"] == load_task(tones).fingerprint

    other = dict(results, model="other", tasks={"tones": results["tasks"]["tones"]})
    table = format_table([results, other]).splitlines()
    assert table[0].split() == ["model", "tones", "mean"]  # only the task both have
    accuracy, count = results["tasks"]["tones"]["test"]["accuracy"], results["tasks"]["tones"]["counts"]["test"]
    cell = f"{100 * accuracy:.1f}±{100 * math.sqrt(accuracy * (1 - accuracy) / count):.1f}"  # binomial error
    assert table[1].split() == ["fbank", cell, cell] and table[2].split()[0] == "other"
    (tmp_path / "other.json").write_text(json.dumps(other))
    assert spear_main(["probe-table", str(out), str(tmp_path / "other.json")]) == 0

    # --layer reaches the probe: fbank has one hidden state, so layer 0 is itself and layer 1 is named missing
    layer_out = tmp_path / "layer0.json"
    assert spear_main(argv[:5] + ["--out", str(layer_out), "--layer", "0"] + argv[9:]) == 0
    assert json.loads(layer_out.read_text())["probe"]["layer"] == 0
    capsys.readouterr()
    assert spear_main(argv[:5] + ["--out", str(tmp_path / "layer1.json"), "--layer", "1"] + argv[9:]) == 2
    assert "probe layer 1 does not exist: fbank exposes 1 hidden states" in capsys.readouterr().err


def test_frame_level_task(tmp_path, seed):
    from spear_fast.eval.probe import run_probes

    manifest = _tone_corpus(tmp_path, seed, per_class=6, frame_task=True)
    directory = make_task(manifest, tmp_path / "frames", label_field="meta.tone", task_type="frame", label_rate=10.0,
                          seed=seed)
    task = load_task(directory)
    assert task.type == "frame" and task.label_rate == 10.0 and len(task.targets("train")[0]) == 4
    results = run_probes("fbank", [directory], tmp_path / "r.json", ProbeConfig(epochs=15, patience=5, frame_batch_size=64),
                          progress=False)
    record = results["tasks"]["frames"]
    assert record["type"] == "frame" and record["counts"]["test"] > 20 * len(task.splits["test"])  # frames, not clips
    assert record["test"]["accuracy"] > 0.85  # frames within a window of a segment edge may mix two tones


def test_task_files_are_checked(tmp_path, seed):
    manifest = _tone_corpus(tmp_path, seed, per_class=4)
    directory = make_task(manifest, tmp_path / "t", label_field="meta.tone", seed=seed)
    record = json.loads((directory / "task.json").read_text())
    record["labels"] = ["0", "1"]  # "2" occurs in the rows
    (directory / "task.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="label '2' is not one of"):
        load_task(directory)
    record["type"] = "sequence"
    (directory / "task.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="type 'sequence'"):
        load_task(directory)
    with pytest.raises(ValueError, match="not found"):
        load_task(tmp_path / "nowhere")


def test_make_task_command_with_a_split_field(tmp_path, seed):
    rng = np.random.default_rng(seed)
    splits = ["train"] * 6 + ["valid"] * 3 + ["test"] * 3
    entries = [ManifestEntry(id=f"u{i}", path=str(tmp_path / f"u{i}.wav"), duration=1.0, sample_rate=16000,
                             domain="speech", meta={"who": f"spk{int(rng.integers(0, 3))}", "part": split})
               for i, split in enumerate(splits)]
    entries[0].meta["who"], entries[1].meta["who"] = "spk0", "spk9"  # at least two distinct labels
    write_manifest(tmp_path / "m.jsonl", entries)
    out = tmp_path / "speakers"
    assert spear_main(["make-task", "--manifest", str(tmp_path / "m.jsonl"), "--out", str(out), "--label-field",
                       "meta.who", "--split-field", "meta.part"]) == 0
    task = load_task(out)
    assert task.name == "speakers" and task.labels == sorted({e.meta["who"] for e in entries})
    for split in ("train", "valid", "test"):
        assert [e.id for e in task.splits[split]] == [e.id for e, s in zip(entries, splits) if s == split]
        assert task.targets(split) == [task.labels.index(e.meta["who"]) for e, s in zip(entries, splits) if s == split]
    entries[2].meta["part"] = "dev"
    write_manifest(tmp_path / "m.jsonl", entries)
    with pytest.raises(ValueError, match="part='dev'"):
        make_task(tmp_path / "m.jsonl", tmp_path / "bad", label_field="meta.who", split_field="meta.part")


def test_subset_scores_by_hand(seed):
    generator = torch.Generator().manual_seed(seed)
    target = torch.randint(0, 4, (120,), generator=generator)
    pred = torch.where(torch.rand(120, generator=generator) < 0.5, target, torch.randint(0, 4, (120,), generator=generator))
    names = [["real", "synthetic"][int(b)] for b in torch.rand(120, generator=generator) < 0.7]
    scores = subset_scores(pred, ProbeData(torch.zeros(120, 1, 2), target, names), num_classes=4)
    assert set(scores) == set(names)
    for name, got in scores.items():
        rows = [i for i, n in enumerate(names) if n == name]
        assert got["count"] == len(rows)
        assert got["accuracy"] == pytest.approx(sum(int(pred[i] == target[i]) for i in rows) / len(rows), abs=1e-12)
    assert subset_scores(pred, ProbeData(torch.zeros(120, 1, 2), target), num_classes=4) == {}


def test_subset_field_scores_the_test_split_per_subset(tmp_path, seed):
    """A task whose rows name a subset: the probe reports each subset's test accuracy, and the
    count-weighted mean of the subsets is the overall accuracy; a row without the field is refused."""
    manifest = _tone_corpus(tmp_path, seed, per_class=12)
    directory = make_task(manifest, tmp_path / "tones", label_field="meta.tone", seed=seed)
    record = json.loads((directory / "task.json").read_text())
    (directory / "task.json").write_text(json.dumps(dict(record, subset_field="meta.noise")))
    task = load_task(directory)
    assert task.subsets("test") == [e.meta["noise"] for e in task.splits["test"]]
    results = run_probes("fbank", [directory], tmp_path / "out.json", ProbeConfig(epochs=30, patience=30, seed=seed))
    tones = results["tasks"]["tones"]
    subsets = tones["test_subsets"]
    assert sum(s["count"] for s in subsets.values()) == tones["counts"]["test"]
    weighted = sum(s["accuracy"] * s["count"] for s in subsets.values()) / tones["counts"]["test"]
    assert weighted == pytest.approx(tones["test"]["accuracy"], abs=1e-9)
    (directory / "task.json").write_text(json.dumps(dict(record, subset_field="meta.speaker")))
    with pytest.raises(ValueError, match="no field 'meta.speaker'"):
        load_task(directory)
    (directory / "task.json").write_text(json.dumps(dict(record, subset_field=3)))
    with pytest.raises(ValueError, match="subset_field must be"):
        load_task(directory)
