"""prepare_demo_data(tiny=True) end to end: the tiny demo corpus, both demo teachers' frames, both
quantisers and both token stores; a rerun skips every stage and returns the same data."""
import json
import time

import pytest
import torch

from spear_fast.audio import load_audio
from spear_fast.data.manifest import read_manifest
from spear_fast.data.token_store import TokenStore
from spear_fast.mvq import Quantizer
from spear_fast.pipeline.demo import DemoDataConfig, prepare_demo_data
from spear_fast.teachers import load_teacher


def test_tiny_demo_data_chain(tmp_path, seed):
    pytest.importorskip("ctranslate2")
    config = DemoDataConfig.tiny_config(seed=seed % 1000)
    demo = prepare_demo_data(tmp_path, config=config, progress=False)
    entries = read_manifest(demo.manifest_path)
    corpus = read_manifest(tmp_path / "corpus" / "train.jsonl")
    assert len(entries) > 10 and {e.domain for e in entries} == {"speech", "audio"}
    assert {e.id for e in entries} <= {e.id for e in corpus}
    stores = {name: TokenStore(path) for name, path in demo.token_dirs.items()}
    for name, store in stores.items():
        quantizer = Quantizer.load(demo.quantizers[name])
        plan = config.teachers[name]
        assert store.meta.quantizer_hash == quantizer.fingerprint()
        assert store.meta.num_codebooks == quantizer.num_codebooks == plan.num_codebooks
        wanted = {e.id for e in entries if plan.domain in ("all", e.domain)}
        assert set(store.ids) >= wanted  # speech tokens on every clip, audio tokens on audio clips
        if plan.domain == "audio":
            assert not any(e.id in store for e in entries if e.domain == "speech")
        for entry in entries:
            if entry.id in wanted:  # token frames cover the clip's duration
                assert abs(store.num_frames(entry.id) / store.meta.frame_rate - entry.effective_duration) < 0.1
    assert (demo.probes_dir / "voice_id" / "task.json").is_file()

    # The stored tokens of a clip are the quantiser's codes of the teacher's frames of that clip.
    entry = next(e for e in entries if e.domain == "speech")
    teacher = load_teacher(demo.teachers["speech"])
    wave, _ = load_audio(entry.path, 16000)
    frames = teacher(wave[None], torch.tensor([wave.numel()])).frames[0]  # (T, D)
    expected = Quantizer.load(demo.quantizers["speech"]).encode(frames, config.refine_iters).numpy()
    same = (stores["speech"][entry.id] == expected).mean()
    assert same > 0.99, same  # the pass batched the clip with others (padding): rare near-tie flips allowed

    record = json.loads((tmp_path / "demo_data.json").read_text())
    assert set(record["stage_seconds"]) >= {"corpus", "collect-speech", "fit-speech", "tokenize-speech",
                                            "collect-audio", "fit-audio", "tokenize-audio", "total"}
    # A rerun finds every stage complete.
    mtimes = {name: (path / "meta.json").stat().st_mtime for name, path in demo.token_dirs.items()}
    started = time.perf_counter()
    again = prepare_demo_data(tmp_path, config=config, progress=False)
    assert time.perf_counter() - started < 15
    assert again.token_dirs == demo.token_dirs and again.quantizers == demo.quantizers
    assert {name: (path / "meta.json").stat().st_mtime for name, path in again.token_dirs.items()} == mtimes
    assert [e.id for e in read_manifest(again.manifest_path)] == [e.id for e in entries]
