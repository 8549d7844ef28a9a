"""HF SSL teachers (WavLM / HuBERT / wav2vec2): tiny random models saved in the real formats
(safetensors and pytorch_model.bin), loaded through load_teacher, compared with transformers."""
import os
import time

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from spear_fast.teachers import load_teacher  # noqa: E402
from spear_fast.teachers.hf_ssl import normalize_waves  # noqa: E402

TINY = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=48,
            conv_dim=(16, 16, 16), conv_stride=(5, 4, 4), conv_kernel=(10, 4, 4),
            num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2)
# (model class, config class, feat_extract_norm, do_stable_layer_norm): a "layer" (batched, masked)
# and a "group" (one clip at a time) conv stack among them.
MODELS = {
    "wavlm": ("WavLMModel", "WavLMConfig", "layer", True),
    "hubert": ("HubertModel", "HubertConfig", "group", False),
    "wav2vec2": ("Wav2Vec2Model", "Wav2Vec2Config", "layer", True),
}


def _save_tiny(kind, folder, safe, seed):
    model_cls, config_cls, norm, stable = MODELS[kind]
    torch.manual_seed(seed)
    config = getattr(transformers, config_cls)(**TINY, feat_extract_norm=norm, do_stable_layer_norm=stable)
    model = getattr(transformers, model_cls)(config).eval()
    if safe:
        model.save_pretrained(folder)
    else:  # the legacy format (transformers 5 only writes safetensors): config.json + pytorch_model.bin
        config.save_pretrained(folder)
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    return model


@pytest.mark.parametrize("kind,safe", [("wavlm", True), ("hubert", False), ("wav2vec2", False)])
def test_layers_match_transformers(kind, safe, tmp_path, seed):
    reference = _save_tiny(kind, tmp_path, safe, seed)
    assert (tmp_path / ("model.safetensors" if safe else "pytorch_model.bin")).is_file()
    gen = torch.Generator().manual_seed(seed)
    wave = torch.randn(1, 3001, generator=gen) * 0.3
    with torch.no_grad():
        hidden = reference(wave, output_hidden_states=True).hidden_states
    for layer in (1, 3):  # a middle layer and the last one (both cut the encoder differently)
        env_before = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
        teacher = load_teacher(f"{kind}:{tmp_path}?layer={layer}&normalize=false")
        assert {k: os.environ.get(k) for k in env_before} == env_before  # the offline switch is restored
        out = teacher(wave, torch.tensor([3001]))
        assert out.frames.shape == hidden[layer].shape and teacher.dim == 32 and teacher.layer == layer
        torch.testing.assert_close(out.frames, hidden[layer], rtol=1e-5, atol=1e-5)
        assert out.frame_lengths.tolist() == [hidden[layer].shape[1]]
        assert out.frame_rate == teacher.frame_rate == 16000 / 80


@pytest.mark.parametrize("kind", ["wavlm", "hubert"])
def test_padding_does_not_change_frames(kind, tmp_path, seed):
    _save_tiny(kind, tmp_path, True, seed)
    teacher = load_teacher(f"{kind}:{tmp_path}?layer=2")  # normalisation on (no preprocessor file, "layer")
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([4000, 2345, teacher.min_samples])
    waves = torch.randn(3, 4000, generator=gen) * 0.5  # samples past each length are noise, not zeros
    batch = teacher(waves, lengths)
    expected_lengths = ((((lengths - 10) // 5 + 1) - 4) // 4 + 1 - 4) // 4 + 1  # conv stack by hand
    assert batch.frame_lengths.tolist() == expected_lengths.tolist()
    for b in range(3):
        alone = teacher(waves[b : b + 1, : lengths[b]], lengths[b : b + 1])
        n = int(batch.frame_lengths[b])
        torch.testing.assert_close(batch.frames[b, :n], alone.frames[0], rtol=1e-4, atol=1e-5)
        assert batch.frames[b, n:].abs().max() == 0 if n < batch.frames.shape[1] else True


def test_normalisation_matches_feature_extractor(seed):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([1000, 777])
    waves = torch.randn(2, 1000, generator=gen) * 0.2 + 0.05
    ours = normalize_waves(waves, lengths)
    extractor = transformers.Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True)
    for b in range(2):
        n = int(lengths[b])
        ref = extractor(waves[b, :n].numpy().astype(np.float64), sampling_rate=16000, return_tensors="np").input_values[0]
        np.testing.assert_allclose(ours[b, :n].numpy(), ref, rtol=1e-5, atol=1e-5)
        assert ours[b, n:].abs().max() == 0 if n < 1000 else True


def test_wavlm_default_layer_is_spear_layer_21(tmp_path, seed):
    torch.manual_seed(seed)
    config = transformers.WavLMConfig(**{**TINY, "num_hidden_layers": 24}, feat_extract_norm="layer",
                                      do_stable_layer_norm=True)
    transformers.WavLMModel(config).save_pretrained(tmp_path)
    teacher = load_teacher(f"wavlm:{tmp_path}")
    assert teacher.layer == 21 and len(teacher.model.encoder.layers) == 21


def test_missing_folder_and_hub_name_fail_at_once(tmp_path):
    start = time.monotonic()
    for spec in ("wavlm:microsoft/wavlm-large", f"wavlm:{tmp_path / 'absent'}", "wavlm"):
        with pytest.raises(ValueError, match="local folder"):
            load_teacher(spec)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="model.safetensors"):
        load_teacher(f"hubert:{tmp_path}")
    assert time.monotonic() - start < 2.0  # no network attempt


def test_wrong_model_type_and_options_rejected(tmp_path, seed):
    _save_tiny("hubert", tmp_path, True, seed)
    with pytest.raises(ValueError, match="model_type 'hubert'"):
        load_teacher(f"wavlm:{tmp_path}")
    with pytest.raises(ValueError, match="unknown option"):
        load_teacher(f"hubert:{tmp_path}?layr=2")
    with pytest.raises(ValueError, match="outside"):
        load_teacher(f"hubert:{tmp_path}?layer=4")
