"""The HEAR 2021 validator's checks (hear-validator's hearvalidator/validate.py; it and heareval need
Python < 3.9, so they are restated here) on spear_fast.hear, for a spear-fast export (50 and 25 Hz)
and for a remote-code model through hf:PATH: attributes and their types, return types, float32,
timestamps in ms (increasing, regular, consistent with the hop, covering the sound), finite
embeddings, batch independence, sounds from 0.1 s to 60 s."""
import numpy as np
import pytest
import torch
from harness_models import TOY_HOP, random_export, write_toy_remote_model

from spear_fast import hear

ACCEPTABLE_SAMPLE_RATES = (16000, 22050, 44100, 48000)  # the validator's list
LENGTHS = (0.1, 1.07, 1.98, 4.0, 60.0)  # seconds: the validator's three plus the extremes


@pytest.fixture(scope="module", params=["export-50Hz", "export-25Hz", "hf-remote-code"])
def spec(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp("hear-conformance")
    seed = int(torch.randint(0, 2**31 - 1, ()))
    if request.param == "hf-remote-code":
        return f"hf:{write_toy_remote_model(directory / 'toy', seed)}?trust_remote_code=1", 16000 / TOY_HOP
    stride = 2 if request.param == "export-50Hz" else 4
    random_export(directory / "model", seed, time_stride=stride)
    return str(directory / "model"), 100.0 / stride


def _noise(generator, n_sounds, seconds, sample_rate):
    return torch.rand(n_sounds, int(seconds * sample_rate), generator=generator) * 2 - 1  # [-1, 1], as the validator


def test_api_and_attributes(spec):
    for name in ("load_model", "get_scene_embeddings", "get_timestamp_embeddings"):
        assert callable(getattr(hear, name))
    model = hear.load_model(spec[0])
    assert isinstance(model, torch.nn.Module)
    assert model.to("cpu") is model  # the validator moves the model to its device
    assert model.sample_rate in ACCEPTABLE_SAMPLE_RATES and model.sample_rate == 16000
    for size in (model.scene_embedding_size, model.timestamp_embedding_size):
        assert type(size) is int and size > 0


@pytest.mark.parametrize("seconds", LENGTHS)
def test_timestamp_embeddings(spec, seed, seconds):
    path, frame_rate = spec
    model = hear.load_model(path)
    generator = torch.Generator().manual_seed(seed)
    embeddings, timestamps = hear.get_timestamp_embeddings(_noise(generator, 2, seconds, model.sample_rate), model)
    assert isinstance(embeddings, torch.Tensor) and isinstance(timestamps, torch.Tensor)
    assert embeddings.dtype == torch.float32
    assert embeddings.ndim == 3 and timestamps.ndim == 2
    assert embeddings.shape[0] == 2 and embeddings.shape[:2] == timestamps.shape
    assert embeddings.shape[2] == model.timestamp_embedding_size
    assert bool(torch.isfinite(embeddings).all())
    ts = timestamps.detach().cpu().numpy().astype(np.float64)
    length_ms = 1000 * seconds
    hop_ms = 1000 / frame_rate
    assert (ts[0] == ts[1]).all()
    if ts.shape[1] > 1:
        diff = np.diff(ts, axis=1)
        assert (diff > 0).all()  # increasing
        assert np.max(np.abs(diff - diff.mean())) <= 1  # regular: the validator's 1 ms
        assert np.allclose(diff, hop_ms, atol=1e-3)  # consistent with the hop (in ms, not s or frames)
        assert ts.min() <= diff.mean()  # starts at the beginning
        assert ts.max() >= length_ms - 2 * diff.mean()  # reaches the end
    assert ts.max() <= length_ms  # never past the sound


def test_scene_embeddings(spec, seed):
    model = hear.load_model(spec[0], layers="all")
    generator = torch.Generator().manual_seed(seed)
    scene = hear.get_scene_embeddings(_noise(generator, 4, 2.74, model.sample_rate), model)
    assert isinstance(scene, torch.Tensor) and scene.dtype == torch.float32
    assert scene.shape == (4, model.scene_embedding_size) and bool(torch.isfinite(scene).all())
    numpy_scene = hear.get_scene_embeddings(_noise(generator, 1, 1.0, model.sample_rate).numpy(), model)
    assert numpy_scene.shape == (1, model.scene_embedding_size)  # numpy input is accepted too


def test_batch_independence(spec, seed):
    model = hear.load_model(spec[0], batch_size=2)
    generator = torch.Generator().manual_seed(seed)
    audio = _noise(generator, 5, 1.5, model.sample_rate)
    together, _ = hear.get_timestamp_embeddings(audio, model)
    for i in range(5):
        alone, _ = hear.get_timestamp_embeddings(audio[i : i + 1], model)
        torch.testing.assert_close(alone[0], together[i], rtol=1e-5, atol=1e-5)
    shuffled, _ = hear.get_timestamp_embeddings(audio.flip(0), model)
    torch.testing.assert_close(shuffled.flip(0), together, rtol=1e-5, atol=1e-5)


def test_bad_input_is_named(spec):
    model = hear.load_model(spec[0])
    good = torch.rand(2, 16000) * 2 - 1
    cases = [
        (dict(audio=good, sample_rate=44100), "expected 16000 Hz audio, got sample rate 44100"),
        (dict(audio=torch.rand(2, 16000, 2)), r"expected mono audio \(n_sounds, n_samples\), got shape \(2, 16000, 2\)"),
        (dict(audio=good[0]), r"\(n_sounds, n_samples\)"),
        (dict(audio=torch.zeros(0, 16000)), "audio is empty"),
        (dict(audio=(good * 32767).to(torch.int16)), "expected float audio in .*int16"),
        (dict(audio=good * 32767), "peak of .*integer PCM"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            hear.get_timestamp_embeddings(model=model, **kwargs)
