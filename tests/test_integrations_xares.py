"""X-ARES: xares 0.1.3's own check_audio_encoder and its encoder loader on SpearEncoder; clips up to
10 minutes (chunked inside the encoder); bad input named."""
import pytest
import torch
from harness_models import exported, random_export  # noqa: F401 (exported: a fixture)

from spear_fast.integrations.frame_embeddings import chunk_bounds
from spear_fast.integrations.xares_encoder import SpearEncoder
from spear_fast.model.pretrained import SpearModel

check_audio_encoder = pytest.importorskip("xares.audio_encoder_checker").check_audio_encoder
xares_utils = pytest.importorskip("xares.utils")


@pytest.mark.parametrize("time_stride", [2, 4])
def test_the_real_checker_accepts_it(tmp_path, seed, time_stride):
    random_export(tmp_path / "model", seed, time_stride=time_stride)
    encoder = SpearEncoder(str(tmp_path / "model"))
    assert check_audio_encoder(encoder) is True  # xares' own code: (2, 50000) randn -> (2, T', output_dim)
    assert encoder.sampling_rate == 16000 and encoder.output_dim == 32
    assert encoder.hop_size_in_ms == 10.0 * time_stride
    frames = encoder(torch.randn(1, 50000) * 0.1).shape[1]
    # X-ARES's own reading of the hop: input duration / output frames (3125 ms / T')
    assert abs(3125 / frames - encoder.hop_size_in_ms) < 0.5
    broken = SpearEncoder(str(tmp_path / "model"))
    broken.output_dim += 1
    assert check_audio_encoder(broken) is False  # the checker does check


def test_xares_run_finds_the_encoder_by_its_file_path(exported, monkeypatch):
    # xares.run: attr_from_py_path(encoder_py, endswith="Encoder")() -- one class, no arguments
    cls = xares_utils.attr_from_py_path("spear_fast/integrations/xares_encoder.py", endswith="Encoder")
    assert cls is SpearEncoder
    monkeypatch.setenv("SPEAR_XARES_MODEL", str(exported))
    monkeypatch.setenv("SPEAR_XARES_LAYERS", "all")
    encoder = cls()
    assert encoder.output_dim == 3 * 32  # the three Transformer layers, concatenated
    assert check_audio_encoder(encoder) is True
    monkeypatch.delenv("SPEAR_XARES_MODEL")
    with pytest.raises(ValueError, match="SPEAR_XARES_MODEL"):
        cls()


def test_frames_are_the_students(exported, seed):
    encoder = SpearEncoder(str(exported), layers="all")
    student = SpearModel.from_pretrained(exported)
    audio = torch.randn(3, 24_000) * 0.1
    want = student.extract(audio)
    torch.testing.assert_close(encoder(audio), torch.cat(want.layers, -1), rtol=1e-5, atol=1e-5)
    one = encoder(audio[1])  # (T,) -> (1, T', D)
    torch.testing.assert_close(one[0], torch.cat(want.layers, -1)[1], rtol=1e-5, atol=1e-5)


def test_long_clips_are_chunked(exported, seed):
    assert chunk_bounds(100, 30, 12) == [(0, 30), (30, 60), (60, 100)]  # a 10-sample tail joins the last chunk
    assert chunk_bounds(100, 30, 5) == [(0, 30), (30, 60), (60, 90), (90, 100)]
    encoder = SpearEncoder(str(exported), chunk_seconds=1.0)
    assert encoder.embedder.chunk_samples == 16000
    audio = torch.randn(2, 16000 * 3 + 5000) * 0.1  # chunks of 1 s, 1 s, 1.3125 s (the short tail joined)
    frames = encoder(audio)
    student = SpearModel.from_pretrained(exported)
    pieces = [student.extract(audio[:, a:b]).hidden for a, b in ((0, 16000), (16000, 32000), (32000, 53000))]
    assert frames.shape == (2, 50 + 50 + 66, 32)  # the chunks' frames add up to the whole clip's
    torch.testing.assert_close(frames, torch.cat(pieces, dim=1), rtol=1e-5, atol=1e-5)



def test_ten_minute_clips(tmp_path, seed):
    random_export(tmp_path / "small", seed, num_layers=1, dim=16)  # the smallest student: the cost is the length
    out = SpearEncoder(str(tmp_path / "small"))(torch.randn(1, 16000 * 600) * 0.1)  # in 30 s chunks
    assert out.shape == (1, 30_000, 16) and bool(torch.isfinite(out).all())


def test_bad_input_is_named(exported):
    encoder = SpearEncoder(str(exported))
    good = torch.randn(2, 16000) * 0.1
    cases = [
        (dict(audio=good, sampling_rate=44100), "expected 16000 Hz audio, got sample rate 44100"),
        (dict(audio=torch.randn(2, 2, 16000) * 0.1), r"expected mono audio \(B, samples\), got shape \(2, 2, 16000\)"),
        (dict(audio=torch.zeros(2, 0)), "audio is empty"),
        (dict(audio=torch.zeros(1, 40)), "at least 80 samples"),
        (dict(audio=(good * 32767).to(torch.int16)), "expected float audio in .*int16"),
        (dict(audio=good * 32767), "peak of .*integer PCM"),
        (dict(audio=torch.full((1, 16000), float("inf"))), "NaN or Inf"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            encoder(**kwargs)
    with pytest.raises(ValueError, match="layers must be one of"):
        SpearEncoder(str(exported), layers="middle")
