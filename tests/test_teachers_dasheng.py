"""Dasheng: our implementation vs the official code (dasheng 0.0.9, imported with a torchaudio
stand-in for its front-end only), the official key names, the mel front-end vs float64 numpy,
10 s chunking, padding invariance."""
import importlib
import importlib.util
import sys
import types

import numpy as np
import pytest
import torch
from torch import nn

from spear_fast.teachers import load_teacher
from spear_fast.teachers.dasheng import (DashengConfig, DashengModel, DashengTeacher, htk_mel_filterbank,
                                         load_dasheng_checkpoint)

# State-dict keys of the official AudioTransformerMAE_Encoder / Dasheng (dasheng 0.0.9,
# dasheng/train/models.py) for pooling="mean", init_values=None, read from its __init__:
# front_end = Sequential(torchaudio MelSpectrogram (buffers spectrogram.window, mel_scale.fb),
# AmplitudeToDB); init_bn = Sequential(Rearrange, BatchNorm2d, Rearrange); patch_embed.proj Conv2d
# (norm = Identity); time_pos_embed, freq_pos_embed; blocks.N = Block(norm1, attn.qkv, attn.proj,
# ls1 = Identity, norm2, mlp.fc1, mlp.fc2, ls2 = Identity); norm. Written here as data because the
# official module cannot be built without torchaudio.
OFFICIAL_TOP_KEYS = [
    "front_end.0.spectrogram.window", "front_end.0.mel_scale.fb",
    "init_bn.1.weight", "init_bn.1.bias", "init_bn.1.running_mean", "init_bn.1.running_var",
    "init_bn.1.num_batches_tracked", "patch_embed.proj.weight", "patch_embed.proj.bias",
    "time_pos_embed", "freq_pos_embed", "norm.weight", "norm.bias",
]
OFFICIAL_BLOCK_KEYS = [
    "norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
    "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias",
]
TINY = dict(embed_dim=32, depth=2, num_heads=4)


def _randomise(model, seed):
    """Non-trivial batch-norm statistics and affine (the init leaves init_bn nearly an identity)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bn = model.init_bn[1]
        bn.running_mean.copy_(torch.randn(64, generator=gen) * 10 - 40)
        bn.running_var.copy_(torch.rand(64, generator=gen) * 200 + 50)
        bn.weight.copy_(torch.randn(64, generator=gen))
        bn.bias.copy_(torch.randn(64, generator=gen))


def _save(model, config, path):
    torch.save({"model": model.state_dict(), "config": config}, path)
    return str(path)


# The official code (pip install --no-deps dasheng einops) imported with a stand-in for
# torchaudio.transforms, which does not load here. The stand-ins compute what torchaudio's
# MelSpectrogram and AmplitudeToDB compute (torch.stft centred with reflect padding, power 2, the
# filterbank buffer; 10 log10 with the top_db floor taken over the whole 3-D batch, as torchaudio
# packs it) and hold their buffers under torchaudio's names; everything else is the official code.
# (The filterbank values themselves are checked against float64 numpy in test_front_end_matches_numpy.)


class _Spectrogram(nn.Module):
    def __init__(self, n_fft, win_length, hop_length, center):
        super().__init__()
        self.n_fft, self.win_length, self.hop_length, self.center = n_fft, win_length, hop_length, center
        self.register_buffer("window", torch.hann_window(win_length))

    def forward(self, x):
        spec = torch.stft(x, self.n_fft, self.hop_length, self.win_length, self.window, center=self.center,
                          pad_mode="reflect", normalized=False, onesided=True, return_complex=True)
        return spec.abs().pow(2.0)


class _MelScale(nn.Module):
    def __init__(self, n_mels, sample_rate, f_min, f_max, n_stft):
        super().__init__()
        self.register_buffer("fb", htk_mel_filterbank(n_stft, f_min, f_max, n_mels, sample_rate))

    def forward(self, spec):
        return torch.matmul(spec.transpose(-1, -2), self.fb).transpose(-1, -2)


class MelSpectrogram(nn.Module):
    def __init__(self, sample_rate=16000, n_fft=400, win_length=None, hop_length=None, f_min=0.0, f_max=None,
                 n_mels=128, center=True, **_):
        super().__init__()
        win_length = win_length or n_fft
        self.spectrogram = _Spectrogram(n_fft, win_length, hop_length or win_length // 2, center)
        self.mel_scale = _MelScale(n_mels, sample_rate, f_min, f_max or sample_rate / 2, n_fft // 2 + 1)

    def forward(self, x):
        return self.mel_scale(self.spectrogram(x))


class AmplitudeToDB(nn.Module):
    def __init__(self, stype="power", top_db=None):
        super().__init__()
        self.top_db = top_db

    def forward(self, x):
        x_db = 10.0 * torch.log10(torch.clamp(x, min=1e-10))
        if self.top_db is not None:  # torchaudio.functional.amplitude_to_DB's packing of a 3-D input
            shape = x_db.size()
            packed = shape[-3] if x_db.dim() > 2 else 1
            x_db = x_db.reshape(-1, packed, shape[-2], shape[-1])
            x_db = torch.max(x_db, (x_db.amax(dim=(-3, -2, -1)) - self.top_db).view(-1, 1, 1, 1))
            x_db = x_db.reshape(shape)
        return x_db


def import_official_dasheng():
    """The official `Dasheng` class (dasheng.pretrained.pretrained), imported with the stand-in."""
    fake = types.ModuleType("torchaudio")
    fake.transforms = types.ModuleType("torchaudio.transforms")
    fake.transforms.MelSpectrogram = MelSpectrogram
    fake.transforms.AmplitudeToDB = AmplitudeToDB
    saved = {k: sys.modules.get(k) for k in ("torchaudio", "torchaudio.transforms")}
    sys.modules["torchaudio"], sys.modules["torchaudio.transforms"] = fake, fake.transforms
    try:
        return importlib.import_module("dasheng.pretrained.pretrained").Dasheng
    finally:
        for key, value in saved.items():
            if value is None:
                sys.modules.pop(key, None)
            else:
                sys.modules[key] = value


def test_official_key_names_and_strict_load(tmp_path, seed):
    cfg = DashengConfig(**TINY)
    ours = DashengModel(cfg)
    expected = OFFICIAL_TOP_KEYS + [f"blocks.{i}.{k}" for i in range(2) for k in OFFICIAL_BLOCK_KEYS]
    assert sorted(ours.state_dict()) == sorted(expected)
    assert ours.state_dict()["front_end.0.mel_scale.fb"].shape == (257, 64)
    assert ours.state_dict()["time_pos_embed"].shape == (1, 32, 1, 252)
    path = _save(ours, dict(TINY), tmp_path / "tiny.pt")
    loaded = load_dasheng_checkpoint(path)
    for key, value in ours.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    state = ours.state_dict()
    state.pop("norm.bias")
    bad = _save_state(state, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="norm.bias"):
        load_dasheng_checkpoint(bad)


def _save_state(state, path):
    torch.save({"model": state, "config": dict(TINY)}, path)
    return str(path)


def test_matches_official_code_including_chunks(tmp_path, seed):
    pytest.importorskip("einops")
    if importlib.util.find_spec("dasheng") is None:
        pytest.skip("the official dasheng package is not installed (test extra: pip install --no-deps dasheng)")
    official_cls = import_official_dasheng()
    torch.manual_seed(seed)
    config = dict(TINY, target_length=48, init_values=0.1)  # 12 patches (0.48 s) per chunk, LayerScale on
    official = official_cls(**config).eval()
    _randomise(official, seed)
    with torch.no_grad():
        for block in official.blocks:
            block.ls1.gamma.uniform_(0.5, 1.5)
    teacher = load_teacher({"kind": "dasheng", "path": _save(official, config, tmp_path / "o.pt"), "dtype": "fp32"})
    gen = torch.Generator().manual_seed(seed + 1)
    for n in (16000, 3333, 480):  # 3 chunks (25 patches), 5 patches, the one-patch minimum
        wave = torch.randn(1, n, generator=gen) * 0.3
        with torch.no_grad():
            reference = official(wave)  # batch of one: upstream's own behaviour
        out = teacher(wave, torch.tensor([n]))
        assert out.frames.shape == reference.shape and out.frame_lengths.tolist() == [reference.shape[1]]
        torch.testing.assert_close(out.frames, reference, rtol=1e-4, atol=1e-4)


def _numpy_log_mel(wave, top_db=120.0):
    """float64 by-hand torchaudio MelSpectrogram(n_fft 512, hop 160, 64 HTK mels 0-8 kHz, reflect
    centre) + AmplitudeToDB(top_db) of one clip."""
    x = np.pad(wave.astype(np.float64), (256, 256), mode="reflect")
    count = 1 + (len(x) - 512) // 160
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(512) / 512)  # periodic Hann
    frames = np.stack([x[i * 160 : i * 160 + 512] * window for i in range(count)])
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2  # (T, 257)
    mel = lambda f: 2595 * np.log10(1 + f / 700)  # noqa: E731
    edges = 700 * (10 ** (np.linspace(mel(0), mel(8000), 66) / 2595) - 1)
    freqs = np.linspace(0, 8000, 257)
    fb = np.zeros((257, 64))
    for m in range(64):
        lo, mid, hi = edges[m : m + 3]
        fb[:, m] = np.clip(np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)), 0, None)
    db = 10 * np.log10(np.maximum(power @ fb, 1e-10)).T  # (64, T)
    return np.maximum(db, db.max() - top_db)


def test_front_end_matches_numpy(seed):
    model = DashengModel(DashengConfig(**TINY))
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([8000, 5123])
    waves = torch.rand(2, 8000, generator=gen) * 2 - 1  # full scale: peak ~ +30 dB, so the floor is above -100 dB
    waves[1, 2000:3000] = 0  # digital silence -> the 1e-10 clamp (-100 dB) lifted by the top_db floor
    mel = model.front_end[0](waves, lengths)
    db = model.front_end[1](mel, model.front_end[0].num_frames(lengths))
    for b in range(2):
        n = int(lengths[b])
        ref = _numpy_log_mel(waves[b, :n].numpy())
        got = db[b, :, : ref.shape[1]].double().numpy()
        assert ref.shape[1] == n // 160 + 1
        np.testing.assert_allclose(got, ref, atol=2e-3, rtol=1e-4)
    assert db[1].min() > -100 + 1  # the floor was active


def test_chunking_25_seconds_and_frame_rate(seed):
    torch.manual_seed(seed)
    model = DashengModel(DashengConfig(**TINY)).eval()
    _randomise(model, seed)
    teacher = DashengTeacher(model)
    gen = torch.Generator().manual_seed(seed)
    wave = torch.randn(1, 25 * 16000, generator=gen) * 0.2
    out = teacher(wave, torch.tensor([25 * 16000]))
    assert teacher.frame_rate == 25.0 and out.frame_rate == 25.0
    assert out.frames.shape == (1, (25 * 100 + 1) // 4, 32)
    spec = model.spectrogram(wave, torch.tensor([25 * 16000]))  # (1, 1, 64, 2501)
    pieces = [spec[..., 0:1008], spec[..., 1008:2016], spec[..., 2016:2500]]  # 10.08 s + 10.08 s + rest
    with torch.no_grad():
        expected = torch.cat([model.forward_spectrogram(p) for p in pieces], dim=1)
    assert expected.shape == out.frames.shape
    torch.testing.assert_close(out.frames, expected, rtol=1e-5, atol=1e-5)
    # and the chunks really are independent: changing the last chunk leaves the first two alone
    wave2 = wave.clone()
    wave2[0, 21 * 16000 :] = torch.randn(4 * 16000, generator=gen)
    out2 = teacher(wave2, torch.tensor([25 * 16000]))
    torch.testing.assert_close(out2.frames[:, :500], out.frames[:, :500], rtol=1e-5, atol=1e-5)
    assert (out2.frames[:, 505:] - out.frames[:, 505:]).abs().max() > 1e-2


def test_padding_and_layers(tmp_path, seed):
    torch.manual_seed(seed)
    model = DashengModel(DashengConfig(**TINY, target_length=40)).eval()
    _randomise(model, seed)
    path = _save(model, dict(TINY, target_length=40), tmp_path / "t.pt")
    teacher = load_teacher(f"dasheng:{path}")
    assert teacher.layer == 2 and teacher.dim == 32
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([9000, 4321, 480])
    waves = torch.randn(3, 9000, generator=gen) * torch.tensor([[0.5], [0.01], [0.2]])
    batch = teacher(waves, lengths)
    assert batch.frame_lengths.tolist() == ((lengths // 160 + 1) // 4).tolist()
    for b in range(3):
        n = int(lengths[b])
        alone = teacher(waves[b : b + 1, :n], lengths[b : b + 1])
        torch.testing.assert_close(batch.frames[b, : alone.frames.shape[1]], alone.frames[0], rtol=1e-4, atol=1e-4)
    # layer 1 = the first block's raw output, without the final LayerNorm
    first = load_teacher(f"dasheng:{path}?layer=1")
    with torch.no_grad():
        x = model.patch_embed(model.spectrogram(waves[:1], lengths[:1]))  # (1, C, 1, 14): chunks of 10 patches
        chunks = [x[..., i : i + 10] for i in range(0, x.shape[-1], 10)]
        chunks = [(c + model.time_pos_embed[..., : c.shape[-1]] + model.freq_pos_embed).flatten(2).transpose(1, 2)
                  for c in chunks]
        expected = torch.cat([model.blocks[0](c, None) for c in chunks], dim=1)
    torch.testing.assert_close(first(waves[:1], lengths[:1]).frames, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="layer"):
        load_teacher(f"dasheng:{path}?layer=3")
    with pytest.raises(ValueError, match="shorter than 480"):
        teacher(waves[:1, :479], torch.tensor([479]))


def test_bad_paths(tmp_path):
    with pytest.raises(ValueError, match="not a local file"):
        load_teacher(f"dasheng:{tmp_path / 'missing.pt'}")
    with pytest.raises(ValueError, match="checkpoint"):
        load_teacher("dasheng")
    torch.save({"state_dict": {}}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="'model'"):
        load_teacher(f"dasheng:{tmp_path / 'x.pt'}")
