"""spear_fast.data.token_store: round trip, resume after a crash, checksums, parallel workers, errors."""
from __future__ import annotations

import dataclasses
import json
import multiprocessing
import pickle

import numpy as np
import pytest
import torch

from spear_fast.data import (
    TokenStore,
    TokenStoreError,
    TokenStoreMeta,
    TokenStoreWriter,
    finalize_token_store,
)


def make_meta(num_codebooks: int = 6, quantizer_hash: str = "q-abc123") -> TokenStoreMeta:
    return TokenStoreMeta(teacher="wavlm-large", layer=21, frame_rate=50.0, num_codebooks=num_codebooks,
                          quantizer_hash=quantizer_hash)


def random_utterances(rng: np.random.Generator, count: int, num_codebooks: int = 6, prefix: str = "utt"):
    return {
        f"{prefix}{i:03d}/{rng.integers(1e6)}": rng.integers(0, 256, (int(rng.integers(1, 40)), num_codebooks))
        for i in range(count)
    }


def test_round_trip_many_shards(tmp_path, seed):
    rng = np.random.default_rng(seed)
    utterances = random_utterances(rng, 25)
    utterances["spk_ü/ütt ünïcode"] = rng.integers(0, 256, (3, 6))
    with TokenStoreWriter(tmp_path, make_meta(), shard_frames=60) as writer:
        for utt_id, tokens in utterances.items():
            # numpy int64 and torch tensors are both accepted
            assert writer.add(utt_id, torch.from_numpy(tokens) if rng.random() < 0.5 else tokens)
    assert len(writer.shards_written) >= 3
    store = finalize_token_store(tmp_path)
    assert len(store) == 26 and set(store.ids) == set(utterances) and list(store) == store.ids
    assert store.meta == make_meta()
    for utt_id, tokens in utterances.items():
        got = store[utt_id]
        assert got.dtype == np.uint8 and got.shape == tokens.shape
        np.testing.assert_array_equal(got, tokens)
        assert store.num_frames(utt_id) == len(tokens)
        assert utt_id in store
        assert not got.flags.writeable
    assert "absent" not in store
    with pytest.raises(KeyError, match="absent"):
        store["absent"]
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["num_frames"] == sum(len(t) for t in utterances.values())
    assert sum(s["frames"] for s in meta["shards"]) == meta["num_frames"]
    assert sum(s["utterances"] for s in meta["shards"]) == 26
    store.verify()
    clone = pickle.loads(pickle.dumps(store))
    key = next(iter(utterances))
    np.testing.assert_array_equal(clone[key], utterances[key])


def test_resume_after_crash(tmp_path, seed):
    rng = np.random.default_rng(seed)
    utterances = random_utterances(rng, 12)
    items = list(utterances.items())
    writer = TokenStoreWriter(tmp_path, make_meta(), shard_frames=50)
    def flushed_ids():
        return {i for name in writer.shards_written for i in json.loads((tmp_path / "shards" / f"{name}.json").read_text())["ids"]}

    count = 0
    while count < 9 or len(flushed_ids()) == count:  # stop with some utterances still in the buffer
        writer.add(*items[count])
        count += 1
    flushed = flushed_ids()
    assert 0 < len(flushed) < count
    del writer  # crash: the buffer is lost, no close()
    # An interrupted shard write: data file without its index, plus a stray temp file.
    (tmp_path / "shards" / "w0000of0001-000099.npy").write_bytes(b"partial")
    (tmp_path / "shards" / ".w0000of0001-000100.npy.x.tmp").write_bytes(b"partial")
    writer = TokenStoreWriter(tmp_path, make_meta(), shard_frames=50)
    assert writer.done_ids == flushed
    added = [writer.add(utt_id, tokens) for utt_id, tokens in items]
    assert added == [utt_id not in flushed for utt_id, _ in items]
    store = writer.finalize()
    assert set(store.ids) == set(utterances)
    for utt_id, tokens in items:
        np.testing.assert_array_equal(store[utt_id], tokens)
    leftovers = sorted(p.name for p in (tmp_path / "shards").iterdir() if p.suffix not in (".npy", ".json") or "000099" in p.name)
    assert leftovers == []
    # Reopening a finalized store with the same meta resumes too: nothing left to add.
    again = TokenStoreWriter(tmp_path, make_meta())
    assert all(not again.add(utt_id, tokens) for utt_id, tokens in items)


def test_buffer_is_written_when_the_with_block_fails(tmp_path, seed):
    rng = np.random.default_rng(seed)
    utterances = random_utterances(rng, 4)
    with pytest.raises(RuntimeError, match="teacher crashed"), TokenStoreWriter(tmp_path, make_meta(), shard_frames=10_000) as writer:
        for utt_id, tokens in utterances.items():
            writer.add(utt_id, tokens)
        raise RuntimeError("teacher crashed")
    store = finalize_token_store(tmp_path)
    assert set(store.ids) == set(utterances)


def test_checksums_catch_corruption(tmp_path, seed):
    rng = np.random.default_rng(seed)
    utterances = random_utterances(rng, 10)
    with TokenStoreWriter(tmp_path, make_meta(), shard_frames=40) as writer:
        for utt_id, tokens in utterances.items():
            writer.add(utt_id, tokens)
    store = finalize_token_store(tmp_path)
    victim = sorted((tmp_path / "shards").glob("*.npy"))[1]
    data = bytearray(victim.read_bytes())
    data[-3] ^= 0x5A  # one token byte
    victim.write_bytes(bytes(data))
    with pytest.raises(TokenStoreError, match=f"{victim.name}: sha256 mismatch"):
        store.verify()
    with pytest.raises(TokenStoreError, match=victim.name):
        finalize_token_store(tmp_path)
    victim.unlink()
    fresh = TokenStore(tmp_path)
    with pytest.raises(TokenStoreError, match=f"{victim.name}: missing"):
        fresh.verify()
    lost = json.loads(victim.with_suffix(".json").read_text())["ids"][0]
    with pytest.raises(TokenStoreError, match=f"{victim.name}: shard file missing"):
        fresh[lost]


def _worker(directory: str, index: int, count: int, items: list) -> None:
    with TokenStoreWriter(directory, make_meta(), shard_frames=30, worker=(index, count)) as writer:
        for utt_id, tokens in items[index::count]:
            writer.add(utt_id, tokens)


def test_parallel_workers_then_finalize(tmp_path, seed):
    rng = np.random.default_rng(seed)
    items = list(random_utterances(rng, 21).items())
    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=_worker, args=(str(tmp_path), i, 3, items)) for i in range(3)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    names = {p.stem.split("-")[0] for p in (tmp_path / "shards").glob("*.json")}
    assert names == {"w0000of0003", "w0001of0003", "w0002of0003"}
    store = finalize_token_store(tmp_path)
    assert len(store) == 21
    for utt_id, tokens in items:
        np.testing.assert_array_equal(store[utt_id], tokens)
    # A worker that stores an id another worker already has: finalize names both shards.
    duplicate = TokenStoreWriter(tmp_path / "other", make_meta(), worker=(0, 1))  # elsewhere: no resume check
    duplicate.add(items[0][0], items[0][1])
    duplicate.close()
    (tmp_path / "other" / "shards" / "w0000of0001-000000.npy").rename(tmp_path / "shards" / "w0000of0001-000000.npy")
    (tmp_path / "other" / "shards" / "w0000of0001-000000.json").rename(tmp_path / "shards" / "w0000of0001-000000.json")
    with pytest.raises(TokenStoreError, match=rf"{items[0][0]}' is stored twice, in shards w0000of0001-000000 and w0000of0003-\d+"):
        finalize_token_store(tmp_path)


def test_mismatches_and_bad_input(tmp_path, seed):
    rng = np.random.default_rng(seed)
    with TokenStoreWriter(tmp_path, make_meta(), shard_frames=100) as writer:
        writer.add("a", rng.integers(0, 256, (5, 6)))
        with pytest.raises(ValueError, match=r"\(T >= 1, 6\), got \(5, 4\)"):
            writer.add("b", rng.integers(0, 256, (5, 4)))
        with pytest.raises(ValueError, match="max 256"):
            writer.add("b", np.full((3, 6), 256))
        with pytest.raises(ValueError, match="min -1"):
            writer.add("b", np.full((3, 6), -1))
        with pytest.raises(ValueError, match="integers"):
            writer.add("b", rng.random((3, 6)))
        with pytest.raises(ValueError, match="one-line string"):
            writer.add("two\nlines", rng.integers(0, 256, (5, 6)))
        with pytest.raises(ValueError, match=r"got \(0, 6\)"):
            writer.add("b", np.zeros((0, 6), dtype=np.int64))
    with pytest.raises(TokenStoreError, match="never finalized"):
        TokenStore(tmp_path)
    finalize_token_store(tmp_path)
    with pytest.raises(TokenStoreError, match=r"meta.json: num_codebooks is 6, expected 16"):
        TokenStore(tmp_path, num_codebooks=16)
    with pytest.raises(TokenStoreError, match=r"quantizer_hash is 'q-abc123', expected 'q-zzz'"):
        TokenStore(tmp_path, quantizer_hash="q-zzz")
    with pytest.raises(TokenStoreError, match=r"meta.json: .*num_codebooks: 8 vs 6.*quantizer_hash: 'q-new' vs 'q-abc123'"):
        TokenStoreWriter(tmp_path, make_meta(num_codebooks=8, quantizer_hash="q-new"))
    with pytest.raises(TokenStoreError, match="directory not found"):
        TokenStore(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="worker"):
        TokenStoreWriter(tmp_path / "w", make_meta(), worker=(3, 3))
    with pytest.raises(ValueError, match="num_codebooks"):
        TokenStoreMeta(teacher="t", layer=None, frame_rate=25.0, num_codebooks=0, quantizer_hash="h")
    assert TokenStore(tmp_path, num_codebooks=6, teacher="wavlm-large", frame_rate=50.0)["a"].shape == (5, 6)


def test_encoding_settings_in_meta_and_stores_written_before_them(tmp_path, seed):
    """teacher_spec and refine_iters travel to meta.json and take part in the writer's check; a store
    written before they were recorded still opens (both None)."""
    rng = np.random.default_rng(seed)
    meta = dataclasses.replace(make_meta(), teacher_spec="wavlm:/m?layer=21", refine_iters=5)
    with TokenStoreWriter(tmp_path, meta) as writer:
        writer.add("a", rng.integers(0, 256, (5, 6)))
    store = finalize_token_store(tmp_path)
    assert store.meta.teacher_spec == "wavlm:/m?layer=21" and store.meta.refine_iters == 5
    with pytest.raises(TokenStoreError, match="refine_iters: 1 vs 5"):
        TokenStoreWriter(tmp_path, dataclasses.replace(meta, refine_iters=1))
    record = json.loads((tmp_path / "meta.json").read_text())
    del record["teacher_spec"], record["refine_iters"]
    (tmp_path / "meta.json").write_text(json.dumps(record))
    old = TokenStore(tmp_path)
    assert old.meta.teacher_spec is None and old.meta.refine_iters is None and old["a"].shape == (5, 6)
    with pytest.raises(ValueError, match="refine_iters"):
        dataclasses.replace(meta, refine_iters=-1)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_a_corrupt_index_is_one_clear_error(tmp_path, seed, damage):
    """A damaged index.npz gives a TokenStoreError naming the file and the repair, not a raw BadZipFile."""
    rng = np.random.default_rng(seed)
    with TokenStoreWriter(tmp_path, make_meta()) as writer:
        writer.add("a", rng.integers(0, 256, (5, 6)))
    finalize_token_store(tmp_path)
    index = tmp_path / "index.npz"
    data = index.read_bytes()
    index.write_bytes(data[: len(data) // 2] if damage == "truncate" else rng.integers(0, 256, len(data), dtype=np.uint8).tobytes())
    with pytest.raises(TokenStoreError, match=f"{index}: not a readable index.*--finalize"):
        TokenStore(tmp_path)
