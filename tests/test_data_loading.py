"""Duration-bucket batching and the pre-training dataset (audio + tokens, crops, collate)."""
from collections import Counter

import numpy as np
import pytest
import soundfile as sf
import torch

from kernels import IGNORE_INDEX
from spear_fast.data import ManifestEntry, TokenStore, TokenStoreMeta, TokenStoreWriter, finalize_token_store
from spear_fast.data.batching import DurationBucketSampler
from spear_fast.data.dataset import ALIGN_SAMPLES, BadItem, SpearDataset, collate


def random_durations(seed: int, count: int = 300) -> list[float]:
    generator = torch.Generator().manual_seed(seed)
    return (0.5 + 14.5 * torch.rand(count, generator=generator, dtype=torch.float64)).tolist()


def test_every_clip_once_and_padded_seconds_within_budget(seed):
    durations = random_durations(seed)
    sampler = DurationBucketSampler(durations, max_seconds=60.0, num_buckets=5, seed=seed)
    batches = list(sampler)
    counts = Counter(index for batch in batches for index in batch)
    assert sorted(counts) == list(range(len(durations))) and set(counts.values()) == {1}
    for batch in batches:
        assert max(durations[i] for i in batch) * len(batch) <= 60.0
    # Bucketing keeps lengths in a batch close: mean padding well under naive random batching's.
    waste = sum(max(durations[i] for i in b) * len(b) - sum(durations[i] for i in b) for b in batches)
    assert waste / sum(durations) < 0.25


def test_epochs_reshuffle_reproducibly(seed):
    durations = random_durations(seed)
    first = DurationBucketSampler(durations, 60.0, seed=seed)
    again = DurationBucketSampler(durations, 60.0, seed=seed)
    assert list(first) == list(again)
    again.set_epoch(1)
    assert list(again) != list(first)


def test_ranks_split_the_global_batches_evenly(seed):
    durations = random_durations(seed, 301)
    single = DurationBucketSampler(durations, 45.0, seed=seed).global_batches()
    ranks = [list(DurationBucketSampler(durations, 45.0, seed=seed, rank=r, world_size=3)) for r in range(3)]
    assert len({len(r) for r in ranks}) == 1
    interleaved = [ranks[i % 3][i // 3] for i in range(3 * len(ranks[0]))]
    assert interleaved == single[: len(interleaved)]


def test_resume_skips_consumed_batches(seed):
    durations = random_durations(seed)
    sampler = DurationBucketSampler(durations, 60.0, seed=seed)
    sampler.set_epoch(2)
    full = list(sampler)
    state = sampler.state_dict(batches_done=5)
    resumed = DurationBucketSampler(durations, 60.0, seed=seed)
    resumed.load_state_dict(state)
    assert list(resumed) == full[5:]
    assert list(resumed) == full  # the skip applies to the interrupted epoch's first pass only


@pytest.mark.parametrize(
    "durations, max_seconds, message",
    [([1.0, -2.0], 10.0, "index 1"), ([1.0, 20.0], 10.0, "longest clip"), ([], 10.0, "empty"), ([1.0], 0.0, "max_seconds")],
)
def test_sampler_rejects_bad_input(durations, max_seconds, message):
    with pytest.raises(ValueError, match=message):
        DurationBucketSampler(durations, max_seconds)


def make_corpus(tmp_path, seed):
    """Three clips with token stores whose token at frame f is f % 256 (so alignment is checkable)."""
    generator = np.random.default_rng(seed)
    lengths = {"a": 16000 * 3 + 123, "b": 16000 * 1, "c": 16000 * 2}
    entries = []
    for utt_id, length in lengths.items():
        path = tmp_path / f"{utt_id}.wav"
        sf.write(path, (0.1 * generator.standard_normal(length)).astype(np.float32), 16000, subtype="FLOAT")
        entries.append(ManifestEntry(utt_id, str(path), length / 16000, 16000, "audio" if utt_id == "c" else "speech"))
    stores = {}
    for name, rate, codebooks, ids in (("speech", 50.0, 4, "abc"), ("audio", 25.0, 2, "c")):
        meta = TokenStoreMeta(teacher=name, layer=None, frame_rate=rate, num_codebooks=codebooks, quantizer_hash=f"q-{name}")
        with TokenStoreWriter(tmp_path / name, meta) as writer:
            for utt_id in ids:
                frames = int(np.ceil(lengths[utt_id] * rate / 16000))
                writer.add(utt_id, np.repeat((np.arange(frames) % 256)[:, None], codebooks, axis=1).astype(np.uint8))
        finalize_token_store(tmp_path / name)
        stores[name] = TokenStore(tmp_path / name)
    return entries, stores, lengths


def test_dataset_crops_audio_and_tokens_at_aligned_starts(tmp_path, seed):
    entries, stores, lengths = make_corpus(tmp_path, seed)
    dataset = SpearDataset(entries, stores, max_duration=1.5, seed=seed)
    starts = set()
    for epoch in range(6):
        dataset.set_epoch(epoch)
        example = dataset[0]  # "a": 3 s, cropped to 1.5 s
        original, _ = sf.read(entries[0].path, dtype="float32")
        keep = example.wave.numel()
        assert keep == int(1.5 * 16000) // ALIGN_SAMPLES * ALIGN_SAMPLES
        matches = [s for s in range(0, lengths["a"] - keep + 1, ALIGN_SAMPLES) if np.array_equal(original[s : s + keep], example.wave.numpy())]
        assert len(matches) == 1
        start = matches[0]
        starts.add(start)
        tokens = example.tokens["speech"]
        assert tokens[0, 0] == (start // 320) % 256 and tokens.shape[0] == int(np.ceil(keep / 320))
        assert example.tokens["audio"] is None  # the audio store lacks "a"
    assert len(starts) > 1  # crops move between epochs


def test_collate_pads_with_ignore_and_reports_missing_teachers(tmp_path, seed):
    entries, stores, lengths = make_corpus(tmp_path, seed)
    dataset = SpearDataset(entries, stores)
    batch = collate([dataset[i] for i in range(3)], codebooks={"speech": 4, "audio": 2}).batch
    assert batch.waves.shape == (3, lengths["a"]) and batch.lengths.tolist() == list(lengths.values())
    assert batch.domains == ["speech", "speech", "audio"] and batch.num_samples == list(lengths.values())
    assert batch.tokens["speech"].shape == (3, int(np.ceil(lengths["a"] / 320)), 4)
    assert batch.token_lengths["audio"].tolist() == batch.num_token_frames["audio"] == [0, 0, 50]
    assert (batch.tokens["audio"][:2] == IGNORE_INDEX).all() and (batch.tokens["audio"][2, :50, 0] == torch.arange(50)).all()
    assert (batch.tokens["speech"][1, 50:] == IGNORE_INDEX).all() and (batch.waves[1, 16000:] == 0).all()


def test_unreadable_clip_is_skipped_and_reported(tmp_path, seed):
    entries, stores, _ = make_corpus(tmp_path, seed)
    entries[1].path = str(tmp_path / "missing.wav")
    dataset = SpearDataset(entries, stores)
    bad = dataset[1]
    assert isinstance(bad, BadItem) and bad.id == "b" and "missing.wav" in bad.reason
    collated = collate([dataset[i] for i in range(3)], codebooks={"speech": 4})
    assert collated.batch.ids == ["a", "c"] and collated.skipped == [bad]


def test_epoch_keys_select_the_crop_without_set_epoch(tmp_path, seed):
    entries, stores, _ = make_corpus(tmp_path, seed)
    dataset = SpearDataset(entries, stores, max_duration=1.5, seed=seed)
    crops = [dataset[(epoch, 0)].wave for epoch in range(6)]
    assert dataset.epoch == 0  # keys do not touch the dataset's own epoch (worker copies never see one)
    for epoch, crop in enumerate(crops):
        dataset.set_epoch(epoch)
        assert torch.equal(dataset[0].wave, crop)
    assert len({tuple(crop[:8].tolist()) for crop in crops}) > 1


def test_sampler_keyed_by_epoch_yields_epoch_index_pairs(seed):
    durations = random_durations(seed)
    plain = DurationBucketSampler(durations, 60.0, seed=seed)
    keyed = DurationBucketSampler(durations, 60.0, seed=seed, keyed_by_epoch=True)
    plain.set_epoch(3)
    keyed.set_epoch(3)
    assert list(keyed) == [[(3, index) for index in batch] for batch in plain]
