"""The demo corpus (spear prepare-demo): a tiny build is checked for valid manifests, probe-set
hygiene (held-out phrases, kits and soundfonts), determinism and resumability."""
from __future__ import annotations

import json
import os
import random
import re

import numpy as np
import pytest
import soundfile as sf

from spear_fast.data.manifest import read_manifest
from spear_fast.demo import content
from spear_fast.demo import plan as plan_mod
from spear_fast.demo.audio_util import audio_checksum
from spear_fast.demo.corpus import build_corpus
from spear_fast.demo.plan import DemoConfig, Planner, gather_resources
from spear_fast.demo.music import midi_bytes, _varlen
from spear_fast.demo.render import ClipSpec, Job, clip_path, run_job

# The 16 General MIDI program families, in program order (GM 1 standard, 8 programs each).
GM_FAMILY_TABLE = ["piano", "chromatic_percussion", "organ", "guitar", "bass", "strings", "ensemble",
                   "brass", "reed", "pipe", "synth_lead", "synth_pad", "synth_effects", "ethnic",
                   "percussive", "sound_effects"]
NOTE_NAMES = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"]
TASKS = ("voice_id", "instrument_family", "pitch_class", "drum_type", "spoken_word", "spoken_letter")


def read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def corpus_seed() -> int:
    return int(os.environ.get("SPEAR_TEST_SEED", random.SystemRandom().randrange(2**31)))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, corpus_seed):
    out = str(tmp_path_factory.mktemp("demo"))
    summary = build_corpus(DemoConfig(out=out, seed=corpus_seed, tiny=True, jobs=2))
    return out, summary


def all_manifests(out: str) -> dict[str, list[dict]]:
    found = {"train.jsonl": read_jsonl(os.path.join(out, "train.jsonl"))}
    for task in TASKS:
        for split in ("train", "valid", "test"):
            name = f"probes/{task}/{split}.jsonl"
            found[name] = read_jsonl(os.path.join(out, name))
    return found


def test_tiny_manifests_are_valid(tiny):
    out, summary = tiny
    assert summary["failed_clips"] == 0, read_jsonl(os.path.join(out, "failures.jsonl"))
    manifests = all_manifests(out)
    for name, rows in manifests.items():
        assert rows, f"{name} is empty"
        entries = read_manifest(os.path.join(out, name))  # the project's manifest reader accepts it
        assert [e.id for e in entries] == [r["id"] for r in rows]
        base = os.path.dirname(os.path.join(out, name))
        ids = [r["id"] for r in rows]
        assert len(set(ids)) == len(ids), f"duplicate ids in {name}"
        for row in rows:
            assert set(row) >= {"id", "path", "duration", "sample_rate", "domain", "meta"}
            path = os.path.join(base, row["path"])
            assert not os.path.isabs(row["path"]) and os.path.exists(path), path
            wave, sr = sf.read(path, dtype="float64", always_2d=True)
            assert sr == 16000 == row["sample_rate"] and wave.shape[1] == 1, (path, sr, wave.shape)
            assert abs(wave.shape[0] / sr - row["duration"]) < 1e-6, (path, wave.shape[0], row["duration"])
            rms = np.sqrt(np.mean(wave[:, 0] ** 2))
            assert rms > 1e-3, f"{path} is silent (RMS {rms})"
            assert row["domain"] in ("speech", "audio")
            assert row["meta"]["source"] and row["meta"]["licence"], row
    train = manifests["train.jsonl"]
    sources = {r["meta"]["source"] for r in train}
    assert {r["domain"] for r in train} == {"speech", "audio"}
    assert sources == {"espeak", "flite", "hedgewars", "music", "mixture", "drums", "sonic_pi"}, sources
    # summary hours are the manifest durations summed
    assert abs(summary["train_hours"] - sum(r["duration"] for r in train) / 3600) < 1e-3
    sources_json = json.load(open(os.path.join(out, "sources.json")))
    names = {s["name"] for s in sources_json}
    assert {"hedgewars-data", "fluid-soundfont-gm", "timgm6mb-soundfont", "hydrogen-drumkits",
            "sonic-pi-samples", "espeak-ng", "flite", "fluidsynth", *content.RECORDINGS["spoken_word"]} <= names
    for s in sources_json:
        assert s["version"] and not s["licence"].startswith("unverified"), s
        assert os.path.exists(os.path.join(out, s["copyright_file"])), s


def test_probe_sets_are_held_out(tiny):
    out, _ = tiny
    manifests = all_manifests(out)
    train_paths = {os.path.realpath(os.path.join(out, r["path"])) for r in manifests["train.jsonl"]}
    train_ids = {r["id"] for r in manifests["train.jsonl"]}
    train_words = {w for r in manifests["train.jsonl"] for w in r["meta"].get("text", "").split()}
    for task in TASKS:
        spec = json.load(open(os.path.join(out, "probes", task, "task.json")))
        assert spec["name"] == task and spec["type"] == "utterance" and spec["metric"] == "accuracy"
        splits = {s: manifests[f"probes/{task}/{s}.jsonl"] for s in ("train", "valid", "test")}
        for split, rows in splits.items():
            base = os.path.join(out, "probes", task)
            paths = {os.path.realpath(os.path.join(base, r["path"])) for r in rows}
            assert not paths & train_paths and not {r["id"] for r in rows} & train_ids
            assert spec["label_field"] == "meta.label"
            assert {r["meta"]["label"] for r in rows} <= set(spec["labels"]), (task, split)
        assert {r["meta"]["label"] for r in splits["train"]} == {r["meta"]["label"] for r in splits["test"]}, task

    # voice ID: phrases (texts / hedgewars phrase stems) never repeat across splits or in pre-training
    voice = {s: manifests[f"probes/voice_id/{s}.jsonl"] for s in ("train", "valid", "test")}
    words = {s: {w for r in rows for w in r["meta"].get("text", "").split()} for s, rows in voice.items()}
    stems = {s: {r["meta"]["phrase"] for r in rows if "phrase" in r["meta"]} for s, rows in voice.items()}
    assert words["test"] and stems["test"]
    for a, b in (("train", "test"), ("train", "valid"), ("valid", "test")):
        assert not words[a] & words[b] and not stems[a] & stems[b], (a, b)
    assert not (words["valid"] | words["test"]) & train_words
    assert {r["meta"]["label"].split(":")[0] for r in voice["test"]} == {"espeak", "flite", "hedgewars"}

    # instrument family / pitch class: FluidR3 for train+valid, TimGM6mb for test; labels follow the
    # GM table and the MIDI note number
    for task in ("instrument_family", "pitch_class"):
        for split in ("train", "valid", "test"):
            for row in manifests[f"probes/{task}/{split}.jsonl"]:
                expected = "TimGM6mb" if split == "test" else "FluidR3_GM"
                assert row["meta"]["soundfont"] == expected, (task, split, row["meta"])
                if task == "instrument_family":
                    assert row["meta"]["label"] == GM_FAMILY_TABLE[row["meta"]["program"] // 8], row
                else:
                    assert row["meta"]["label"] == NOTE_NAMES[row["meta"]["midi_pitch"] % 12], row
    assert all(r["meta"]["soundfont"] == "FluidR3_GM" for r in manifests["train.jsonl"] if "soundfont" in r["meta"])

    # drum type: kits of the three splits are disjoint, held-out kits are absent from pre-training,
    # and each label matches the kit's instrument name
    kits = {s: {r["meta"]["kit"] for r in manifests[f"probes/drum_type/{s}.jsonl"]} for s in ("train", "valid", "test")}
    assert not kits["train"] & kits["test"] and not kits["train"] & kits["valid"] and not kits["valid"] & kits["test"]
    assert not (kits["valid"] | kits["test"]) & {r["meta"].get("kit") for r in manifests["train.jsonl"]}
    keywords = {"kick": ("kick", "bass"), "snare": ("snare", "rim"), "hihat": ("hat", "hh"),
                "tom": ("tom",), "cymbal": ("crash", "ride", "cymbal", "splash", "china")}
    for split in ("train", "valid", "test"):
        for row in manifests[f"probes/drum_type/{split}.jsonl"]:
            name = row["meta"]["instrument"].lower()
            assert any(k in name for k in keywords[row["meta"]["label"]]), row["meta"]


def test_content_probes_hold_voices_out(tiny):
    """Spoken word / letter: voices never repeat across splits, the valid and test voices and the
    probe words are absent from the pre-training clips, and real recordings sit on the test side."""
    out, _ = tiny
    manifests = all_manifests(out)
    pretrain = manifests["train.jsonl"]
    pretrain_voices = {r["meta"]["voice"] for r in pretrain if r["meta"]["source"] in ("espeak", "flite")}
    pretrain_accents = {v.split("+")[0].lower() for v in pretrain_voices if "+" in v}
    pretrain_variants = {v.split("+")[1] for v in pretrain_voices if "+" in v}
    pretrain_words = {w for r in pretrain for w in r["meta"].get("text", "").split()}
    assert not pretrain_words & content.probe_words()
    for task, (classes, _) in content.TASKS.items():
        spec = json.load(open(os.path.join(out, "probes", task, "task.json")))
        assert spec["subset_field"] == "meta.subset" and spec["labels"] == list(classes[:4])
        splits = {s: manifests[f"probes/{task}/{s}.jsonl"] for s in ("train", "valid", "test")}
        voices = {s: {r["meta"]["voice"] for r in rows} for s, rows in splits.items()}
        assert not voices["train"] & voices["valid"] and not voices["train"] & voices["test"]
        assert not voices["valid"] & voices["test"]
        for split in ("valid", "test"):
            for row in splits[split]:
                kind, voice = row["meta"]["voice"].split(":", 1)
                if kind == "espeak":
                    accent, variant = voice.split("+")
                    assert accent.lower() not in pretrain_accents and variant not in pretrain_variants, row
                elif kind == "flite":
                    assert voice not in pretrain_voices, row
        for split, rows in splits.items():
            subsets = {r["meta"]["subset"] for r in rows}
            assert subsets == ({"synthetic", "real"} if split == "test" else {"synthetic"}), (task, split)
            for row in rows:  # a synthetic clip says its label; a real one is the speaker's file of it
                if row["meta"]["subset"] == "synthetic":
                    assert row["meta"]["text"] == content.spoken_text(row["meta"]["label"])
                else:
                    assert row["meta"]["source"] == "asterisk" and row["meta"]["file"].endswith(".wav")


def dominant_pitch_class(wave: np.ndarray, sr: int = 16000) -> int:
    """Pitch class of the strongest harmonic series (harmonic product spectrum, float64)."""
    segment = wave[: sr // 2 * 2]
    spectrum = np.abs(np.fft.rfft(segment * np.hanning(len(segment)), n=1 << 16))
    freqs = np.fft.rfftfreq(1 << 16, 1 / sr)
    product = np.log(spectrum + 1e-9)
    for h in (2, 3):
        product[: len(product) // h] += np.log(spectrum[::h][: len(product) // h] + 1e-9)
    band = (freqs > 25) & (freqs < 2100)
    f0 = freqs[band][np.argmax(product[band])]
    return int(round(12 * np.log2(f0 / 440.0) + 69)) % 12


def test_pitch_class_audio_matches_label(tiny):
    """The rendered notes really have the labelled pitch class (sustained families only)."""
    out, _ = tiny
    sustained = {"piano", "organ", "strings", "ensemble", "brass", "reed", "pipe", "synth_lead", "guitar"}
    rows = [r for s in ("train", "valid", "test")
            for r in read_jsonl(os.path.join(out, "probes", "pitch_class", f"{s}.jsonl"))
            if GM_FAMILY_TABLE[r["meta"]["program"] // 8] in sustained]
    assert len(rows) >= 10
    hits = 0
    for row in rows:
        wave, sr = sf.read(os.path.join(out, "probes", "pitch_class", row["path"]), dtype="float64")
        hits += NOTE_NAMES[dominant_pitch_class(wave, sr)] == row["meta"]["label"]
    assert hits >= 0.8 * len(rows), f"{hits}/{len(rows)} clips have the labelled pitch class"


def one_job_per_kind(config: DemoConfig, res) -> list[Job]:
    planner = Planner(config, res)
    planner.pretraining()
    planner.probes()
    jobs, seen = [], set()
    for job in planner.jobs:
        if job.kind not in seen:
            seen.add(job.kind)
            jobs.append(Job(job.kind, job.clips[:3], job.shared))
    return jobs


def test_determinism_same_seed_same_audio(tiny, corpus_seed, tmp_path):
    out, _ = tiny
    res = gather_resources(None)
    planner = Planner(DemoConfig(out=str(tmp_path), seed=corpus_seed, tiny=True), res)
    planner.pretraining()
    planned = {c.id for job in planner.jobs for c in job.clips}
    assert planned == {r["id"] for r in read_jsonl(os.path.join(out, "train.jsonl"))}
    jobs = one_job_per_kind(DemoConfig(out=str(tmp_path), seed=corpus_seed, tiny=True), res)
    assert {j.kind for j in jobs} == set(plan_mod.KIND_DOMAIN)
    for job in jobs:
        records = run_job(job, str(tmp_path))
        assert all(r["status"] == "written" for r in records), records
        for clip in job.clips:
            assert audio_checksum(clip_path(str(tmp_path), clip)) == audio_checksum(clip_path(out, clip)), clip.id
    # a different seed gives other ids and other audio at the same plan positions
    other_dir = str(tmp_path / "other")
    other = one_job_per_kind(DemoConfig(out=other_dir, seed=corpus_seed + 1, tiny=True), res)
    compared = differing = 0
    for job, mine in zip(other, jobs):
        assert job.kind == mine.kind
        if job.kind == "drum_hit":  # probe hits are the kit samples themselves (only the lead-in varies)
            continue
        run_job(job, other_dir)
        for clip, same_slot in zip(job.clips, mine.clips):
            assert clip.id != same_slot.id
            compared += 1
            differing += audio_checksum(clip_path(other_dir, clip)) != audio_checksum(clip_path(out, same_slot))
    assert compared >= 20 and differing >= 0.9 * compared, (differing, compared)


def test_resume_rebuilds_only_missing_clips(tiny, corpus_seed):
    out, _ = tiny
    rows = read_jsonl(os.path.join(out, "train.jsonl"))
    probe_rows = read_jsonl(os.path.join(out, "probes", "pitch_class", "test.jsonl"))
    rng = np.random.default_rng(corpus_seed)
    victims = [os.path.join(out, rows[i]["path"]) for i in rng.choice(len(rows), 4, replace=False)]
    victims.append(os.path.join(out, "probes", "pitch_class", probe_rows[0]["path"]))
    before = {v: audio_checksum(v) for v in victims}
    others = [os.path.join(out, r["path"]) for r in rows if os.path.join(out, r["path"]) not in before]
    stamps = {p: os.stat(p).st_mtime_ns for p in others}
    manifest_before = open(os.path.join(out, "train.jsonl")).read()
    for v in victims:
        os.remove(v)
    summary = build_corpus(DemoConfig(out=out, seed=corpus_seed, tiny=True, jobs=1))
    assert summary["failed_clips"] == 0
    for v in victims:
        assert audio_checksum(v) == before[v], v
    assert all(os.stat(p).st_mtime_ns == stamps[p] for p in others)
    assert open(os.path.join(out, "train.jsonl")).read() == manifest_before


def test_failed_renders_are_reported_not_fatal(tmp_path):
    good = ClipSpec("ok-0", "audio/ok-0.flac", "train.jsonl", "speech", (1, 2), {
        "text": "plain words here", "voice": "en-us", "rate": 170, "pitch": 50}, {})
    bad_voice = ClipSpec("bad-0", "audio/bad-0.flac", "train.jsonl", "speech", (1, 3), {
        "text": "plain words here", "voice": "no-such-voice-xyz", "rate": 170, "pitch": 50}, {})
    silent = ClipSpec("bad-1", "audio/bad-1.flac", "train.jsonl", "speech", (1, 4), {
        "text": "", "voice": "en-us", "rate": 170, "pitch": 50}, {})
    records = {r["id"]: r for r in run_job(Job("espeak", [bad_voice, good, silent]), str(tmp_path))}
    assert records["ok-0"]["status"] == "written" and os.path.exists(tmp_path / "audio" / "ok-0.flac")
    for clip_id in ("bad-0", "bad-1"):
        assert records[clip_id]["status"] == "failed" and records[clip_id]["error"]
        assert not os.path.exists(tmp_path / "audio" / f"{clip_id}.flac")
    # a batch whose soundfont is missing fails as a whole, reported per clip
    note = ClipSpec("n-0", "audio/n-0.flac", "train.jsonl", "audio", (5,), {
        "duration": 1.0, "program": 0, "pitch": 60, "velocity": 90, "peak": 0.5}, {})
    records = run_job(Job("note", [note], {"soundfont": str(tmp_path / "missing.sf2")}), str(tmp_path))
    assert records[0]["status"] == "failed" and "missing.sf2" in records[0]["error"]
    unknown_flite = ClipSpec("bad-2", "audio/bad-2.flac", "train.jsonl", "speech", (6,), {
        "text": "plain words", "voice": "no_such_voice", "stretch": 1.0, "f0_mean": 100.0}, {})
    records = run_job(Job("flite", [unknown_flite]), str(tmp_path))
    assert records[0]["status"] == "failed" and "no_such_voice" in records[0]["error"]


def test_midi_variable_length_quantities_follow_the_spec():
    # examples from the Standard MIDI File 1.0 specification
    spec = {0x00: "00", 0x40: "40", 0x7F: "7F", 0x80: "81 00", 0x2000: "C0 00", 0x3FFF: "FF 7F",
            0x4000: "81 80 00", 0x100000: "C0 80 00", 0x1FFFFF: "FF FF 7F", 0x200000: "81 80 80 00",
            0x8000000: "C0 80 80 00", 0xFFFFFFF: "FF FF FF 7F"}
    for value, hex_bytes in spec.items():
        assert _varlen(value) == bytes.fromhex(hex_bytes), hex(value)
    data = midi_bytes([(0, 0, bytes([0x90, 60, 100])), (960, 1, bytes([0x80, 60, 0]))])
    assert data[:4] == b"MThd" and data[14:18] == b"MTrk"
    length = int.from_bytes(data[18:22], "big")
    assert length == len(data) - 22 and data[-4:] == b"\x00\xff\x2f\x00"
    assert re.search(rb"\x00\x90\x3c\x64\x87\x40\x80\x3c\x00", data)  # delta 960 = 0x87 0x40


def test_config_rejects_bad_values(tmp_path):
    with pytest.raises(ValueError, match="hours"):
        DemoConfig(out=str(tmp_path), hours=0)
    with pytest.raises(ValueError, match="jobs"):
        DemoConfig(out=str(tmp_path), jobs=0)
    with pytest.raises(ValueError, match="seed"):
        DemoConfig(out=str(tmp_path), seed=-1)
    assert DemoConfig(out=str(tmp_path), hours=0.05).tiny and not DemoConfig(out=str(tmp_path), hours=0.2).tiny
