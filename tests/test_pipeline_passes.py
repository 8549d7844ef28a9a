"""collect-frames and tokenize on a small synthetic manifest (good clips plus every kind of bad file)
with a tiny random WavLM (transformers format, saved locally) and a random MVQ quantiser: tokens
equal the quantiser applied to the teacher's frames of each clip alone, skip reports, resume after an
interruption, and --shard runs that combine into the same store as one run."""
import json

import numpy as np
import pytest
import soundfile as sf
import torch

transformers = pytest.importorskip("transformers")

from spear_fast.audio import load_audio
from spear_fast.cli import main as spear_main
from spear_fast.data.manifest import ManifestEntry, read_manifest, write_manifest
from spear_fast.data.token_store import TokenStore
from spear_fast.mvq import FrameStore, Quantizer
from spear_fast.pipeline import CollectConfig, TokenizeConfig, collect_frames, tokenize
from spear_fast.pipeline.clips import duration_batches
from spear_fast.pipeline.collect import sample_rows
from spear_fast.pipeline.report import read_report
from spear_fast.pipeline.workers import parse_shard
from spear_fast.teachers import load_teacher

TINY_WAVLM = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48,
                  conv_dim=(16, 16, 16, 16), conv_stride=(5, 4, 4, 4), conv_kernel=(10, 4, 4, 4),  # 50 Hz
                  num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2,
                  feat_extract_norm="layer", do_stable_layer_norm=True)
MAX_DURATION = 2.0  # the test's --max-duration: the 2.5 s file stands for the 2-hour one
# Bad files and the words their skip reason must contain.
BAD = {
    "corrupt": "corrupt",
    "empty": "empty file",
    "zerolen": "zero-length",
    "nan": "non-finite",
    "onesample": "too short",
    "wrongext": "corrupt",
    "toolong": "too long",
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(manifest path, teacher spec, quantizer path, good ids) built from a fresh seed."""
    root = tmp_path_factory.mktemp("pipeline")
    seed = int(torch.seed() % (2**31))
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    config = transformers.WavLMConfig(**TINY_WAVLM)
    transformers.WavLMModel(config).eval().save_pretrained(root / "wavlm")
    spec = f"wavlm:{root / 'wavlm'}?layer=2"
    quantizer = Quantizer(32, 4, 256)
    with torch.no_grad():  # spread the centres so that codes differ between frames
        quantizer.centers.normal_(0.0, 0.5)
    quantizer.save(root / "q.safetensors")

    audio = root / "audio"
    audio.mkdir()
    entries = []

    def add(name, path, duration, sample_rate, domain="speech"):
        entries.append(ManifestEntry(id=name, path=str(path), duration=duration, sample_rate=sample_rate, domain=domain))

    good = []
    for i in range(10):
        seconds = float(rng.uniform(0.3, 1.2))
        n = int(seconds * 16000)
        t = np.arange(n) / 16000
        wave = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 900) * t) + 0.05 * rng.standard_normal(n)
        path = audio / f"clip{i}.{'flac' if i % 2 else 'wav'}"
        sf.write(path, wave.astype(np.float32), 16000)
        add(f"clip{i}", path, n / 16000, 16000, "speech" if i < 6 else "audio")
        good.append(f"clip{i}")
    stereo = (0.2 * rng.standard_normal((int(0.8 * 44100), 2))).astype(np.float32)
    sf.write(audio / "stereo.wav", stereo, 44100)
    add("stereo", audio / "stereo.wav", 0.8, 44100, "audio")
    good.append("stereo")

    (audio / "corrupt.wav").write_bytes(rng.integers(0, 256, 3000, dtype=np.uint8).tobytes())
    add("corrupt", audio / "corrupt.wav", 1.0, 16000)
    (audio / "empty.wav").write_bytes(b"")
    add("empty", audio / "empty.wav", 1.0, 16000)
    sf.write(audio / "zerolen.wav", np.zeros((0,), np.float32), 16000)
    add("zerolen", audio / "zerolen.wav", 1.0, 16000)
    nan = (0.1 * rng.standard_normal(8000)).astype(np.float32)
    nan[rng.integers(0, 8000)] = np.nan
    sf.write(audio / "nan.wav", nan, 16000, subtype="FLOAT")
    add("nan", audio / "nan.wav", 0.5, 16000)
    sf.write(audio / "onesample.wav", np.array([0.5], np.float32), 16000)
    add("onesample", audio / "onesample.wav", 1 / 16000, 16000)
    (audio / "wrongext.txt").write_text("this is not audio, whatever its manifest row says\n")
    add("wrongext", audio / "wrongext.txt", 1.0, 16000)
    sf.write(audio / "toolong.wav", (0.1 * rng.standard_normal(int(2.5 * 8000))).astype(np.float32), 8000)
    add("toolong", audio / "toolong.wav", 2.5, 8000)
    order = rng.permutation(len(entries))
    manifest = root / "m.jsonl"
    write_manifest(manifest, [entries[i] for i in order])
    return manifest, spec, root / "q.safetensors", good


def _reference_tokens(corpus, refine_iters):
    """Each good clip alone: load_audio -> teacher -> quantizer.encode."""
    manifest, spec, q_path, good = corpus
    teacher = load_teacher(spec)
    quantizer = Quantizer.load(q_path)
    rows = {json.loads(line)["id"]: json.loads(line) for line in manifest.read_text().splitlines()}
    out = {}
    for utt_id in good:
        wave, _ = load_audio(rows[utt_id]["path"], 16000)
        frames = teacher(wave[None], torch.tensor([wave.numel()])).frames[0]  # (T, D)
        out[utt_id] = quantizer.encode(frames, refine_iters).numpy()
    return out


def _tokenize(corpus, out, **kw):
    manifest, spec, q_path, _ = corpus
    config = dict(manifest=manifest, teacher=spec, quantizer=q_path, out=out, batch_seconds=3.0,
                  max_duration=MAX_DURATION, refine_iters=1, progress=False)
    config.update(kw)
    return tokenize(TokenizeConfig(**config))


def test_tokens_equal_direct_encoding_and_skip_report(corpus, tmp_path):
    manifest, spec, q_path, good = corpus
    summary = _tokenize(corpus, tmp_path / "tok")
    assert summary.finalized and summary.tokenized == len(good) and summary.skipped == len(BAD)
    store = TokenStore(tmp_path / "tok")
    quantizer = Quantizer.load(q_path)
    assert sorted(store.ids) == sorted(good)
    assert store.meta.quantizer_hash == quantizer.fingerprint() and store.meta.num_codebooks == 4
    assert store.meta.frame_rate == 16000 / 320 and store.meta.layer == 2
    reference = _reference_tokens(corpus, refine_iters=1)
    for utt_id in good:  # clips were batched with others (padding) in the pass, alone in the reference
        np.testing.assert_array_equal(store[utt_id], reference[utt_id], err_msg=utt_id)
    report = {r.id: r for r in read_report(tmp_path / "tok" / "skipped.jsonl")}
    assert sorted(report) == sorted(BAD)
    for utt_id, words in BAD.items():
        assert words in report[utt_id].reason, (utt_id, report[utt_id].reason)
        assert report[utt_id].path.endswith(utt_id + (".txt" if utt_id == "wrongext" else ".wav"))
    marker = json.loads((tmp_path / "tok" / "workers" / "w0000of0001.json").read_text())
    assert marker["summary"]["teacher_seconds"] > 0 and marker["summary"]["mvq_seconds"] > 0
    totals = json.loads((tmp_path / "tok" / "summary.json").read_text())["totals"]
    assert totals["mvq_seconds"] == round(marker["summary"]["mvq_seconds"], 3)

    # A rerun finds the worker finished and changes nothing.
    before = (tmp_path / "tok" / "meta.json").read_bytes()
    again = _tokenize(corpus, tmp_path / "tok")
    assert again.tokenized == 0 and again.finalized
    assert (tmp_path / "tok" / "meta.json").read_bytes() == before


class _Interrupting:
    """Wraps a teacher; raises KeyboardInterrupt on call number `stop` (a Ctrl-C mid-run)."""

    def __init__(self, teacher, stop):
        self.teacher, self.stop, self.calls = teacher, stop, 0

    def __getattr__(self, name):
        return getattr(self.teacher, name)

    def __call__(self, waves, lengths):
        self.calls += 1
        if self.calls == self.stop:
            raise KeyboardInterrupt
        return self.teacher(waves, lengths)


def test_resume_after_interruption_loses_and_duplicates_nothing(corpus, tmp_path, monkeypatch):
    from spear_fast import teachers

    manifest, spec, q_path, good = corpus
    entries = read_manifest(manifest)
    real = teachers.load_teacher
    monkeypatch.setattr(teachers, "load_teacher", lambda s, device="cpu": _Interrupting(real(s, device), stop=3))
    with pytest.raises(KeyboardInterrupt):
        _tokenize(corpus, tmp_path / "tok", batch_seconds=1.3, shard_frames=50)
    monkeypatch.setattr(teachers, "load_teacher", real)
    shards = list((tmp_path / "tok" / "shards").glob("*.json"))
    stored = {i for p in shards for i in json.loads(p.read_text())["ids"]}
    # The teacher is called for every batch holding a readable clip; the third call was interrupted.
    called = [b for b in duration_batches(entries, 1.3) if any(e.id in good for e in b)]
    assert 0 < len(stored) < len(good)  # the first two calls' clips, flushed when interrupted
    assert stored == {e.id for b in called[:2] for e in b if e.id in good}
    (tmp_path / "tok" / "shards" / "w0000of0001-000777.npy").write_bytes(b"partial write of a killed run")

    summary = _tokenize(corpus, tmp_path / "tok", batch_seconds=1.3, shard_frames=50)
    assert summary.already_done == len(stored) and summary.tokenized == len(good) - len(stored)
    store = TokenStore(tmp_path / "tok")  # finalize refuses ids stored twice
    assert sorted(store.ids) == sorted(good)
    assert not (tmp_path / "tok" / "shards" / "w0000of0001-000777.npy").exists()
    reference = _reference_tokens(corpus, refine_iters=1)
    for utt_id in good:
        np.testing.assert_array_equal(store[utt_id], reference[utt_id], err_msg=utt_id)


class _FailingOn:
    """Wraps a teacher; raises like a device running out of memory whenever the batch holds the clip
    of `samples` samples (the same clip fails alone too: a teacher failure, not a batch-size one)."""

    def __init__(self, teacher, samples):
        self.teacher, self.samples = teacher, samples

    def __getattr__(self, name):
        return getattr(self.teacher, name)

    def __call__(self, waves, lengths):
        if self.samples in lengths.tolist():
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.teacher(waves, lengths)


@pytest.mark.parametrize("job", ["tokenize", "collect"])
def test_a_teacher_failure_stops_the_pass_naming_the_clip_and_a_rerun_resumes(job, corpus, tmp_path, monkeypatch):
    from spear_fast import teachers
    from spear_fast.pipeline.inference import TeacherError

    manifest, spec, q_path, good = corpus
    entries = {e.id: e for e in read_manifest(manifest)}
    batches = [[e for e in b if e.id in good] for b in duration_batches(list(entries.values()), 1.3)]
    batches = [b for b in batches if b]
    order = [e for b in batches for e in b]
    victim = order[len(order) // 2]
    # the batches before the victim's are done and committed when it fails; its own batch fails whole
    before = {e.id for b in batches[: next(i for i, b in enumerate(batches) if victim in b)] for e in b}
    samples = load_audio(victim.path, 16000)[0].numel()
    real = teachers.load_teacher
    monkeypatch.setattr(teachers, "load_teacher", lambda s, device="cpu": _FailingOn(real(s, device), samples))
    out = tmp_path / job
    run = (lambda: _tokenize(corpus, out, batch_seconds=1.3, shard_frames=10_000)) if job == "tokenize" else (
        lambda: _collect(corpus, out, batch_seconds=1.3, part_frames=100_000))
    with pytest.raises(TeacherError, match=f"clip {victim.id!r}.*out of memory"):
        run()
    # nothing was recorded as skipped for the teacher's sake, and the clips before it were committed
    report = out / ("skipped-w0000of0001.jsonl")
    assert victim.id not in {r.id for r in read_report(report)}
    if job == "tokenize":
        committed = {i for p in (out / "shards").glob("*.json") for i in json.loads(p.read_text())["ids"]}
    else:
        committed = set(json.loads((out / "collect-w0000of0001.json").read_text())["done"])
    assert committed == before

    monkeypatch.setattr(teachers, "load_teacher", real)
    summary = run()
    assert summary.finalized and summary.already_done == len(committed) and summary.skipped == len(BAD)
    if job == "tokenize":
        assert sorted(TokenStore(out).ids) == sorted(good)
    else:
        assert summary.collected_clips == len(good) - len(committed)


def test_a_rerun_repairs_a_store_that_lost_a_shard(corpus, tmp_path):
    """Every clip of the manifest ends in a shard or in the skip report: a rerun re-tokenizes the clips
    of a lost shard, also when the finished marker, meta.json and index.npz say otherwise."""
    manifest, spec, q_path, good = corpus
    out = tmp_path / "tok"
    _tokenize(corpus, out, batch_seconds=1.3, shard_frames=50)
    shards = sorted((out / "shards").glob("*.json"))
    assert len(shards) >= 3
    lost = set(json.loads(shards[1].read_text())["ids"])
    shards[1].unlink()
    shards[1].with_suffix(".npy").unlink()
    again = _tokenize(corpus, out, batch_seconds=1.3, shard_frames=50)  # meta.json and index.npz kept
    assert again.finalized and again.tokenized == len(lost)
    assert sorted(TokenStore(out).ids) == sorted(good)

    lost = set(json.loads(shards[0].read_text())["ids"])
    for path in (shards[0], shards[0].with_suffix(".npy"), out / "meta.json", out / "index.npz"):
        path.unlink()
    again = _tokenize(corpus, out, batch_seconds=1.3, shard_frames=50)
    assert again.finalized and again.tokenized == len(lost)
    store = TokenStore(out)
    assert sorted(store.ids) == sorted(good)
    reference = _reference_tokens(corpus, refine_iters=1)
    for utt_id in lost:
        np.testing.assert_array_equal(store[utt_id], reference[utt_id], err_msg=utt_id)
    assert sorted(r.id for r in read_report(out / "skipped.jsonl")) == sorted(BAD)


def test_finalize_refuses_a_store_missing_clips_of_a_worker(corpus, tmp_path):
    """--finalize with every marker present but a shard gone names the clips and the worker to rerun,
    and removes that worker's marker, so its rerun tokenizes exactly the lost clips."""
    from spear_fast.errors import UserError
    from spear_fast.pipeline.tokenize import finalize_tokens

    manifest, spec, q_path, good = corpus
    out = tmp_path / "tok"
    for worker in ((0, 2), (1, 2)):
        _tokenize(corpus, out, worker=worker, batch_seconds=1.3, shard_frames=50)
    victim = sorted((out / "shards").glob("w0000of0002-*.json"))[0]
    lost = json.loads(victim.read_text())["ids"]
    victim.unlink()
    victim.with_suffix(".npy").unlink()
    (out / "meta.json").unlink()
    with pytest.raises(UserError, match="in no shard and no skip report.*--shard 0/2 ") as caught:
        finalize_tokens(out, 2, manifest=manifest)
    assert any(repr(utt_id) in str(caught.value) for utt_id in lost), str(caught.value)
    assert "--shard 1/2" not in str(caught.value)
    assert not (out / "meta.json").exists() and not (out / "workers" / "w0000of0002.json").exists()
    assert _tokenize(corpus, out, worker=(0, 2), batch_seconds=1.3, shard_frames=50).tokenized == len(lost)
    assert sorted(TokenStore(out).ids) == sorted(good)


def test_encoding_settings_are_part_of_the_store(corpus, tmp_path, monkeypatch):
    """refine_iters and the teacher spec are in meta.json; resuming with another value is refused, naming
    it, instead of mixing two encodings in one store."""
    from spear_fast import teachers
    from spear_fast.errors import UserError

    manifest, spec, q_path, good = corpus
    out = tmp_path / "tok"
    real = teachers.load_teacher
    monkeypatch.setattr(teachers, "load_teacher", lambda s, device="cpu": _Interrupting(real(s, device), stop=3))
    with pytest.raises(KeyboardInterrupt):
        _tokenize(corpus, out, batch_seconds=1.3, shard_frames=50, refine_iters=1)
    monkeypatch.setattr(teachers, "load_teacher", real)
    assert list((out / "shards").glob("*.json")), "the interrupted run should have committed a shard"
    with pytest.raises(UserError, match="refine_iters: 2 vs 1"):  # this run's vs the store's
        _tokenize(corpus, out, batch_seconds=1.3, shard_frames=50, refine_iters=2)
    _tokenize(corpus, out, batch_seconds=1.3, shard_frames=50, refine_iters=1)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["refine_iters"] == 1 and meta["teacher_spec"] == spec
    with pytest.raises(UserError, match="refine_iters: 5 vs 1"):  # a finished store, too
        _tokenize(corpus, out, batch_seconds=1.3, shard_frames=50, refine_iters=5)
    with pytest.raises(UserError, match="teacher_spec: .*dtype=fp32.* vs "):
        _tokenize(corpus, out, batch_seconds=1.3, shard_frames=50, refine_iters=1, teacher=spec + "&dtype=fp32")


def test_shards_combine_into_one_store_via_cli(corpus, tmp_path):
    manifest, spec, q_path, good = corpus
    common = ["tokenize", "--manifest", str(manifest), "--teacher", spec, "--quantizer", str(q_path),
              "--out", str(tmp_path / "sharded"), "--max-duration", str(MAX_DURATION), "--batch-seconds", "2",
              "--refine-iters", "1", "--no-progress", "--device", "cpu"]
    assert spear_main(common + ["--shard", "1/2"]) == 0
    assert not (tmp_path / "sharded" / "meta.json").exists()  # worker 0 has not run yet
    assert spear_main(common + ["--shard", "0/2"]) == 0  # the last worker finalizes
    single = _tokenize(corpus, tmp_path / "single", batch_seconds=2.0)
    assert single.finalized
    a, b = TokenStore(tmp_path / "sharded"), TokenStore(tmp_path / "single")
    assert sorted(a.ids) == sorted(b.ids) == sorted(good)
    assert a.meta == b.meta
    for utt_id in good:
        np.testing.assert_array_equal(a[utt_id], b[utt_id], err_msg=utt_id)
    shard_names = sorted(p.stem for p in (tmp_path / "sharded" / "shards").glob("*.json"))
    assert {n.split("-")[0] for n in shard_names} == {"w0000of0002", "w0001of0002"}
    assert sorted(r.id for r in read_report(tmp_path / "sharded" / "skipped.jsonl")) == sorted(BAD)
    assert spear_main(["tokenize", "--manifest", str(manifest), "--teacher", spec, "--quantizer", str(q_path),
                       "--out", str(tmp_path / "sharded"), "--finalize", "--shard", "0/2"]) == 0


def _collect(corpus, out, **kw):
    manifest, spec, _, _ = corpus
    config = dict(manifest=manifest, teacher=spec, out=out, max_frames=100_000, frames_per_clip=7, seed=5,
                  batch_seconds=3.0, max_duration=MAX_DURATION, progress=False)
    config.update(kw)
    return collect_frames(CollectConfig(**config))


def test_collect_frames_samples_teacher_frames(corpus, tmp_path):
    manifest, spec, _, good = corpus
    summary = _collect(corpus, tmp_path / "frames")
    assert summary.finalized and summary.collected_clips == len(good) and summary.skipped == len(BAD)
    store = FrameStore(tmp_path / "frames")
    teacher = load_teacher(spec)
    entries = {e.id: e for e in read_manifest(manifest)}
    expected = []
    for entry in sorted((entries[i] for i in good), key=lambda e: (e.effective_duration, e.id)):  # pass order
        wave, _ = load_audio(entry.path, 16000)
        frames = teacher(wave[None], torch.tensor([wave.numel()])).frames[0]  # (T, D)
        rows = sample_rows(entry.id, frames.shape[0], 7, 5)
        assert rows.numel() == min(7, frames.shape[0]) and len(set(rows.tolist())) == rows.numel()
        expected.append(frames[rows])
    expected = torch.cat(expected)
    assert len(store) == expected.shape[0] == 7 * len(good)
    stored = store.read(np.arange(len(store)))
    torch.testing.assert_close(stored, expected.half().float(), rtol=2e-3, atol=2e-3)
    assert sorted(r.id for r in read_report(tmp_path / "frames" / "skipped.jsonl")) == sorted(BAD)
    assert not (tmp_path / "frames" / "parts").exists()


def test_collect_max_frames_resume_and_shards(corpus, tmp_path, monkeypatch):
    from spear_fast import teachers

    # max_frames: a seeded subset whose frames reach the target (audio-domain clips are all good ones).
    small = _collect(corpus, tmp_path / "small", max_frames=20, frames_per_clip=7, batch_seconds=0.01, domain="audio")
    assert small.clips == 3 and small.frames == 21 == len(FrameStore(tmp_path / "small"))  # 3 x 7 >= 20
    _collect(corpus, tmp_path / "other", max_frames=20, frames_per_clip=7, batch_seconds=0.01,
                     domain="audio", seed=6)
    assert not torch.equal(FrameStore(tmp_path / "other").read(np.arange(21)),
                           FrameStore(tmp_path / "small").read(np.arange(21)))  # another seed, other frames
    # One clip per batch below, so every run computes identical frames: exact comparisons.
    full = _collect(corpus, tmp_path / "full", batch_seconds=0.01)
    reference = FrameStore(tmp_path / "full").read(np.arange(full.frames))
    real = teachers.load_teacher
    monkeypatch.setattr(teachers, "load_teacher", lambda s, device="cpu": _Interrupting(real(s, device), stop=6))
    with pytest.raises(KeyboardInterrupt):
        _collect(corpus, tmp_path / "resumed", batch_seconds=0.01, part_frames=7)
    monkeypatch.setattr(teachers, "load_teacher", real)
    state = json.loads((tmp_path / "resumed" / "collect-w0000of0001.json").read_text())
    assert len(state["done"]) == 5 and not state["finished"]
    resumed = _collect(corpus, tmp_path / "resumed", batch_seconds=0.01, part_frames=7)
    assert resumed.already_done == 5
    torch.testing.assert_close(FrameStore(tmp_path / "resumed").read(np.arange(full.frames)), reference, rtol=0, atol=0)
    assert len(FrameStore(tmp_path / "resumed")) == full.frames

    for worker in ((1, 2), (0, 2)):
        _collect(corpus, tmp_path / "sharded", batch_seconds=0.01, worker=worker)
    sharded = FrameStore(tmp_path / "sharded")
    got = sharded.read(np.arange(len(sharded))).numpy()
    want = reference.numpy()
    assert got.shape == want.shape
    np.testing.assert_array_equal(got[np.lexsort(got.T[::-1])], want[np.lexsort(want.T[::-1])])


def test_parse_shard_and_torchrun_env(monkeypatch):
    assert parse_shard("2/5") == (2, 5)
    for bad in ("5/5", "-1/2", "a/b", "3", "1/0"):
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert parse_shard(None) == (3, 4)
    monkeypatch.delenv("RANK")
    assert parse_shard(None) == (0, 1)
