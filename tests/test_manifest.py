"""spear_fast.data.manifest: JSON-lines round trip, validation messages, directory and lhotse builders."""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from spear_fast.data import (
    ManifestEntry,
    ManifestError,
    manifest_from_dir,
    manifest_from_lhotse,
    read_manifest,
    write_manifest,
)


def entry(**overrides) -> ManifestEntry:
    fields = {"id": "spk1/utt1", "path": "/data/a.flac", "duration": 3.5, "sample_rate": 44100, "domain": "speech"}
    fields.update(overrides)
    return ManifestEntry(**fields)


def test_round_trip_and_relative_paths(tmp_path, seed):
    rng = np.random.default_rng(seed)
    audio_dir = tmp_path / "corpus" / "audio"
    audio_dir.mkdir(parents=True)
    entries = []
    for i in range(6):
        duration = float(rng.uniform(1, 20))
        segment = None if i % 2 else float(rng.uniform(0.1, duration / 2))
        entries.append(
            ManifestEntry(
                id=f"u{i}-{rng.integers(1e9)}",
                path=str(audio_dir / f"f{i}.wav"),
                duration=duration,
                sample_rate=int(rng.choice([8000, 16000, 44100, 48000])),
                domain=["speech", "audio"][i % 2],
                offset=float(rng.uniform(0, duration / 2)),
                segment_duration=segment,
                meta={"licence": "CC0", "n": i, "nested": {"ü": [1.5, None]}},
            )
        )
    manifest = tmp_path / "corpus" / "train.jsonl"
    assert write_manifest(manifest, entries, relative_paths=True) == 6
    lines = manifest.read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[0])["path"] == "audio/f0.wav"  # stored relative to the manifest
    assert read_manifest(manifest) == entries  # resolved back to absolute paths
    assert read_manifest(manifest, resolve_paths=False)[3].path == "audio/f3.wav"
    assert [e.effective_duration for e in entries[:2]] == [entries[0].segment_duration, entries[1].duration - entries[1].offset]
    assert [p.name for p in manifest.parent.iterdir() if p.is_file()] == ["train.jsonl"]  # no temp left


def write_lines(path, records):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")


GOOD = {"id": "x", "path": "a.wav", "duration": 2.0, "sample_rate": 16000, "domain": "audio"}


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ('{"id": "y", oops}', r"line 3: invalid JSON"),
        ({**GOOD, "id": "y", "domain": "music"}, r"line 3: field 'domain' must be one of \('speech', 'audio'\), got 'music'"),
        ({k: v for k, v in GOOD.items() if k != "duration"} | {"id": "y"}, r"line 3: missing field\(s\) \['duration'\]"),
        ({**GOOD, "id": "y", "duration": -1.0}, r"line 3: field 'duration' must be a finite number of seconds > 0, got -1.0"),
        ({**GOOD, "id": "y", "sample_rate": 16000.5}, r"line 3: field 'sample_rate' must be a positive integer"),
        ({**GOOD, "id": "y", "offset": 1.5, "segment_duration": 1.0}, r"line 3: field 'segment_duration' runs past the end"),
        ({**GOOD, "id": "y", "offset": 2.0}, r"line 3: field 'offset' must be a number in \[0, duration=2.0\)"),
        ({**GOOD, "id": "y", "speaker": "s"}, r"line 3: unknown field\(s\) \['speaker'\]"),
        ({**GOOD, "id": ""}, r"line 3: field 'id' must be a non-empty string"),
        ({**GOOD, "id": "y", "meta": [1]}, r"line 3: field 'meta' must be a JSON object"),
        (GOOD, r"line 3: duplicate id 'x' \(first on line 1\)"),
        ("[1, 2]", r"line 3: expected a JSON object, got list"),
    ],
)
def test_read_errors_name_line_and_field(tmp_path, bad_line, message):
    path = tmp_path / "m.jsonl"
    write_lines(path, [GOOD, "", bad_line])
    with pytest.raises(ManifestError, match=message) as info:
        read_manifest(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_entry_and_writer_errors(tmp_path):
    with pytest.raises(ManifestError, match="field 'sample_rate'"):
        entry(sample_rate=0)
    with pytest.raises(ManifestError, match=r"duplicate id 'spk1/utt1'"):
        write_manifest(tmp_path / "m.jsonl", [entry(), entry()])
    assert not (tmp_path / "m.jsonl").exists()  # atomic: nothing half-written
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ManifestError, match="not found"):
        read_manifest(tmp_path / "missing.jsonl")


def test_manifest_from_dir(tmp_path, seed):
    rng = np.random.default_rng(seed)
    root = tmp_path / "tree"
    (root / "spk1").mkdir(parents=True)
    (root / "spk2" / "deep").mkdir(parents=True)
    expected = {}
    for rel, sr, fmt, subtype in [
        ("spk1/a.wav", 16000, "WAV", "PCM_16"),
        ("spk1/b.flac", 44100, "FLAC", "PCM_16"),
        ("spk2/deep/c.ogg", 48000, "OGG", "VORBIS"),
        ("spk2/same.wav", 8000, "WAV", "PCM_16"),
        ("spk2/same.flac", 22050, "FLAC", "PCM_16"),
    ]:
        frames = int(rng.integers(sr // 4, 2 * sr))
        sf.write(root / rel, rng.uniform(-0.5, 0.5, frames), sr, format=fmt, subtype=subtype)
        expected[rel] = (frames / sr, sr)
    (root / "spk1" / "broken.wav").write_bytes(rng.integers(0, 256, 3000, dtype=np.uint8).tobytes())
    (root / "spk1" / "empty.flac").write_bytes(b"")
    sf.write(root / "spk2" / "zero.wav", np.zeros(0), 16000)
    (root / "notes.txt").write_text("not audio")
    entries, skipped = manifest_from_dir(root, "speech", meta={"licence": "CC0"})
    by_id = {e.id: e for e in entries}
    assert set(by_id) == {"spk1/a", "spk1/b", "spk2/deep/c", "spk2/same.wav", "spk2/same.flac"}
    for rel, (duration, sr) in expected.items():
        stem = rel.rsplit(".", 1)[0]
        e = by_id.get(stem) or by_id[rel]
        assert e.duration == pytest.approx(duration) and e.sample_rate == sr
        assert e.path == str(root / rel) and e.domain == "speech" and e.meta == {"licence": "CC0"}
    reasons = {path.split("/")[-1]: reason for path, reason in skipped}
    assert set(reasons) == {"broken.wav", "empty.flac", "zero.wav"}
    assert "corrupt" in reasons["broken.wav"] and "empty" in reasons["empty.flac"] and "zero-length" in reasons["zero.wav"]
    only_flac, _ = manifest_from_dir(root, "audio", extensions=("flac",))
    assert {e.id for e in only_flac} == {"spk1/b", "spk2/same"} and {e.domain for e in only_flac} == {"audio"}
    with pytest.raises(ValueError, match="domain"):
        manifest_from_dir(root, "music")


def test_manifest_from_lhotse(tmp_path, seed):
    lhotse = pytest.importorskip("lhotse")
    rng = np.random.default_rng(seed)
    sf.write(tmp_path / "a.flac", rng.uniform(-0.5, 0.5, 88200), 44100)
    sf.write(tmp_path / "b.wav", rng.uniform(-0.5, 0.5, 48000), 16000)
    recordings = lhotse.RecordingSet.from_recordings(
        [lhotse.Recording.from_file(tmp_path / "a.flac"), lhotse.Recording.from_file(tmp_path / "b.wav")]
    )
    start = float(np.round(rng.uniform(0.1, 1.0), 3))
    supervisions = lhotse.SupervisionSet.from_segments(
        [lhotse.SupervisionSegment(id="seg1", recording_id="b", start=start, duration=1.5, text="hello there", speaker="spk7")]
    )
    cuts = lhotse.CutSet.from_manifests(recordings=recordings) + lhotse.CutSet.from_manifests(
        recordings=recordings, supervisions=supervisions
    ).trim_to_supervisions()
    path = tmp_path / "cuts.jsonl.gz"
    cuts.to_file(path)
    entries, skipped = manifest_from_lhotse(path, "speech")
    assert skipped == []
    by_path = {}
    for e in entries:
        by_path.setdefault(e.path.split("/")[-1], []).append(e)
    whole_a = by_path["a.flac"][0]
    assert (whole_a.duration, whole_a.sample_rate, whole_a.offset, whole_a.segment_duration) == (2.0, 44100, 0.0, None)
    segment = next(e for e in by_path["b.wav"] if e.segment_duration is not None)
    assert segment.id == "seg1" and segment.offset == pytest.approx(start) and segment.segment_duration == pytest.approx(1.5)
    assert segment.meta["supervisions"] == [{"text": "hello there", "speaker": "spk7"}]
    assert segment.duration == pytest.approx(3.0) and segment.sample_rate == 16000
    from_object, _ = manifest_from_lhotse(cuts, "audio")
    assert [e.id for e in from_object] == [e.id for e in entries] and from_object[0].domain == "audio"


def test_cli_manifest_and_verify_tokens(tmp_path, seed, capsys):
    import argparse

    from spear_fast.data import TokenStoreMeta, TokenStoreWriter
    from spear_fast.data.commands import add_parser

    def main(argv):  # the `spear` parser with only this module's sub-commands (others may be absent)
        parser = argparse.ArgumentParser(prog="spear")
        add_parser(parser.add_subparsers())
        args = parser.parse_args(argv)
        return args.func(args)

    rng = np.random.default_rng(seed)
    (tmp_path / "speech").mkdir()
    (tmp_path / "sounds").mkdir()
    sf.write(tmp_path / "speech" / "a.wav", rng.uniform(-0.5, 0.5, 16000), 16000)
    sf.write(tmp_path / "sounds" / "b.flac", rng.uniform(-0.5, 0.5, 22050), 44100)
    (tmp_path / "sounds" / "bad.wav").write_bytes(b"RIFF0000WAVE")
    out = tmp_path / "m.jsonl"
    assert main(["manifest", "--out", str(out), "--dir", f"speech:{tmp_path / 'speech'}",
                 "--dir", f"audio:{tmp_path / 'sounds'}", "--relative-paths"]) == 0
    entries = read_manifest(out)
    assert [(e.id, e.domain, e.path) for e in entries] == [
        ("a", "speech", str(tmp_path / "speech" / "a.wav")), ("b", "audio", str(tmp_path / "sounds" / "b.flac"))]
    report = [json.loads(line) for line in (tmp_path / "m.jsonl.skipped.jsonl").read_text().splitlines()]
    assert [r["path"] for r in report] == [str(tmp_path / "sounds" / "bad.wav")]
    meta = TokenStoreMeta(teacher="t", layer=None, frame_rate=25.0, num_codebooks=2, quantizer_hash="h")
    with TokenStoreWriter(tmp_path / "store", meta) as writer:
        writer.add("a", rng.integers(0, 256, (7, 2)))
    writer.finalize()
    assert main(["verify-tokens", str(tmp_path / "store")]) == 0
    shard = next((tmp_path / "store" / "shards").glob("*.npy"))
    shard.write_bytes(shard.read_bytes()[:-1] + b"\x00" if shard.read_bytes()[-1] else shard.read_bytes()[:-1] + b"\x01")
    assert main(["verify-tokens", str(tmp_path / "store")]) == 1
    assert "sha256 mismatch" in capsys.readouterr().out
