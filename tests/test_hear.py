"""HEAR 2021 API over a tiny random student exported in the `spear export` format."""
import math

import numpy as np
import pytest
import torch

from spear_fast import hear
from spear_fast.model import (
    EncoderConfig,
    SpearStudent,
    StudentConfig,
    SubsamplingConfig,
)
from spear_fast.model.pretrained import SpearModel, save_pretrained


def _export(directory, seed, time_stride=2):
    config = StudentConfig(name="test", subsampling=SubsamplingConfig(channels=16, time_stride=time_stride),
                           encoder=EncoderConfig(num_layers=3, dim=32, num_heads=2, ffn_dim=64, attention="sdpa"))
    torch.manual_seed(seed)
    student = SpearStudent(config)
    with torch.no_grad():  # move every weight off its init so a layer/weights mix-up cannot pass
        for p in student.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    save_pretrained(student.state_dict(), config, directory)
    return config


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    seed = int(torch.randint(0, 2**31 - 1, ()))
    directory = tmp_path_factory.mktemp("hear") / "model"
    return directory, _export(directory, seed)


def _audio(seed, n_sounds, n_samples):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(n_sounds, n_samples, generator=generator) * 0.1).numpy().astype(np.float32)


def _expected_frames(n_samples, time_stride):
    fbank_frames = math.floor(n_samples / 160 + 0.5)  # round(L / 160), halves up (Kaldi, snip_edges=False)
    out = fbank_frames
    for _ in range(time_stride // 2):
        out = math.ceil(out / 2)
    return out


@pytest.mark.parametrize("layers", ["last", "all"])
def test_shapes_attributes_and_layer_modes(exported, seed, layers):
    directory, _ = exported
    model = hear.load_model(str(directory), layers=layers)
    width = 32 * (3 if layers == "all" else 1)
    assert model.sample_rate == 16000
    assert model.scene_embedding_size == model.timestamp_embedding_size == width
    n_samples = 16000 + int(torch.randint(0, 400, ()))
    audio = _audio(seed, 3, n_samples)
    embeddings, timestamps = hear.get_timestamp_embeddings(audio, model)
    frames = _expected_frames(n_samples, 2)
    assert embeddings.shape == (3, frames, width) and timestamps.shape == (3, frames)
    # against the exported student itself, loaded independently of the HEAR wrapper
    reference = SpearModel.from_pretrained(directory).extract(torch.from_numpy(audio))
    want = torch.cat(reference.layers, -1) if layers == "all" else reference.hidden
    torch.testing.assert_close(embeddings, want, rtol=1e-5, atol=1e-5)
    scene = hear.get_scene_embeddings(audio, model)
    assert scene.shape == (3, width)
    torch.testing.assert_close(scene.double(), want.double().sum(1) / frames, rtol=1e-5, atol=1e-6)


def test_timestamps_follow_the_output_rate(exported, seed, tmp_path):
    directory, _ = exported
    for stride, path in ((2, directory), (4, tmp_path / "m25")):
        if stride == 4:
            _export(path, seed, time_stride=4)
        model = hear.load_model(str(path))
        assert model.frame_rate == 100 / stride
        n_samples = 8000 + 37
        _, timestamps = hear.get_timestamp_embeddings(_audio(seed, 2, n_samples), model)
        frames = _expected_frames(n_samples, stride)
        # frame j's receptive field is centred on fbank frame stride * j, itself centred on sample 160 i + 80
        want = torch.tensor([(160 * stride * j + 80) / 16.0 for j in range(frames)])
        assert timestamps.shape == (2, frames)
        assert torch.equal(timestamps[0], timestamps[1])
        torch.testing.assert_close(timestamps[0], want, rtol=0, atol=1e-4)
        steps = timestamps[0, 1:] - timestamps[0, :-1]
        assert bool((steps > 0).all())
        torch.testing.assert_close(steps, torch.full_like(steps, 1000 / model.frame_rate), rtol=0, atol=1e-4)
        assert float(timestamps[0, -1]) < n_samples / 16  # inside the sound


def test_batch_safe_and_deterministic(exported, seed):
    directory, _ = exported
    audio = _audio(seed, 5, 6400 + int(torch.randint(0, 160, ())))
    model = hear.load_model(str(directory), layers="all", batch_size=2)  # batches of 2, 2 and 1
    batched, _ = hear.get_timestamp_embeddings(audio, model)
    again, _ = hear.get_timestamp_embeddings(audio, model)
    assert torch.equal(batched, again)
    for i in range(5):
        alone, _ = hear.get_timestamp_embeddings(audio[i : i + 1], model)
        torch.testing.assert_close(alone[0], batched[i], rtol=1e-5, atol=1e-5)
    big = hear.load_model(str(directory), layers="all", batch_size=16)
    torch.testing.assert_close(hear.get_timestamp_embeddings(audio, big)[0], batched, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(batched[0], batched[1])  # different sounds, different embeddings


def test_environment_selects_model_and_layers(exported, monkeypatch):
    directory, _ = exported
    monkeypatch.setenv("SPEAR_HEAR_MODEL", str(directory))
    monkeypatch.setenv("SPEAR_HEAR_LAYERS", "all")
    model = hear.load_model()
    assert model.layers == "all" and model.timestamp_embedding_size == 96
    monkeypatch.delenv("SPEAR_HEAR_MODEL")
    with pytest.raises(ValueError, match="model_file_path"):
        hear.load_model("")


def test_bad_input_is_rejected(exported):
    directory, _ = exported
    model = hear.load_model(str(directory))
    with pytest.raises(ValueError, match=r"\(n_sounds, n_samples\)"):
        hear.get_scene_embeddings(np.zeros(1600, np.float32), model)
    with pytest.raises(ValueError, match="NaN"):
        hear.get_scene_embeddings(np.full((1, 1600), np.nan, np.float32), model)
    with pytest.raises(ValueError, match="layers"):
        hear.load_model(str(directory), layers="middle")
