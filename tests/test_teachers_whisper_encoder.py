"""Our torch Whisper encoder and CTranslate2 model.bin reader, checked against CTranslate2 itself:
a tiny random Whisper written by ctranslate2's own spec writer (every storage type), and the
bundled tiny.en model; then the whisper-demo teacher's intermediate layers."""
import copy
import struct

import numpy as np
import pytest
import torch

ctranslate2 = pytest.importorskip("ctranslate2")
from ctranslate2.specs import whisper_spec  # noqa: E402

from spear_fast.teachers import load_teacher  # noqa: E402
from spear_fast.teachers.ct2_weights import read_ct2_variables  # noqa: E402
from spear_fast.teachers.whisper_ct2 import WhisperLogMel, bundled_model_dir  # noqa: E402
from spear_fast.teachers.whisper_encoder import WhisperEncoder  # noqa: E402
from spear_fast.train.synthetic import fresh_seed  # noqa: E402

LAYERS, HEADS, DIM, MELS, FFN, VOCAB, POSITIONS = 2, 3, 48, 16, 96, 24, 100  # odd head count on purpose
STORAGE_TYPES = ("float32", "float16", "bfloat16", "int8")


def storage_error_bound(storage: str, weight: torch.Tensor) -> torch.Tensor:
    """The most that rounding to `storage` may move each element: half a unit in the last place
    (float16: 2^-11 relative, bfloat16: 2^-8), or for int8 half a step of its row's scale
    (max |row| / 127), as ctranslate2 quantises round(w * 127 / max |row|)."""
    if storage == "float32":
        return torch.zeros_like(weight)
    if storage in ("float16", "bfloat16"):
        return weight.abs() * (2.0 ** -11 if storage == "float16" else 2.0 ** -8) + 1e-7
    if weight.dim() == 1:  # int8 quantises matrices only; vectors stay float32
        return torch.zeros_like(weight)
    rows = weight.reshape(weight.shape[0], -1)
    step = rows.abs().amax(dim=1, keepdim=True) / 127.0  # (rows, 1)
    return (0.5 * step * (1 + 1e-5)).expand_as(rows).reshape(weight.shape)


def _random_whisper_spec(seed: int) -> tuple[whisper_spec.WhisperSpec, dict[str, np.ndarray]]:
    """A tiny Whisper (2 encoder layers, 1 decoder layer) with random weights, and its encoder's
    float32 variables by CTranslate2 name."""
    rng = np.random.default_rng(seed)
    spec = whisper_spec.WhisperSpec(LAYERS, HEADS, 1, HEADS)
    encoder_vars: dict[str, np.ndarray] = {}

    def rand(*shape, base=0.0):
        return (base + 0.2 * rng.standard_normal(shape)).astype(np.float32)

    def linear(layer, name, out_dim, in_dim, kernel=None):
        layer.weight = rand(out_dim, in_dim, kernel) if kernel else rand(out_dim, in_dim)
        layer.bias = rand(out_dim)
        encoder_vars[f"{name}/weight"], encoder_vars[f"{name}/bias"] = layer.weight, layer.bias

    def norm(layer, name):
        layer.gamma, layer.beta = rand(DIM, base=1.0), rand(DIM)
        encoder_vars[f"{name}/gamma"], encoder_vars[f"{name}/beta"] = layer.gamma, layer.beta

    def ffn(layer, name):
        norm(layer.layer_norm, f"{name}/layer_norm")
        linear(layer.linear_0, f"{name}/linear_0", FFN, DIM)
        linear(layer.linear_1, f"{name}/linear_1", DIM, FFN)

    enc = spec.encoder
    linear(enc.conv1, "encoder/conv1", DIM, MELS, 3)
    linear(enc.conv2, "encoder/conv2", DIM, DIM, 3)
    enc.position_encodings.encodings = encoder_vars["encoder/position_encodings/encodings"] = rand(POSITIONS, DIM)
    norm(enc.layer_norm, "encoder/layer_norm")
    for i, layer in enumerate(enc.layer):
        norm(layer.self_attention.layer_norm, f"encoder/layer_{i}/self_attention/layer_norm")
        linear(layer.self_attention.linear[0], f"encoder/layer_{i}/self_attention/linear_0", 3 * DIM, DIM)
        linear(layer.self_attention.linear[1], f"encoder/layer_{i}/self_attention/linear_1", DIM, DIM)
        ffn(layer.ffn, f"encoder/layer_{i}/ffn")
    dec = spec.decoder  # required by the format; the encoder never reads it
    dec.embeddings.weight = rand(VOCAB, DIM)
    dec.projection.weight = dec.embeddings.weight
    dec.position_encodings.encodings = rand(POSITIONS, DIM)
    dec.layer_norm.gamma, dec.layer_norm.beta = rand(DIM, base=1.0), rand(DIM)
    for layer in dec.layer:
        for part in (layer.self_attention, layer.attention, layer.ffn):
            part.layer_norm.gamma, part.layer_norm.beta = rand(DIM, base=1.0), rand(DIM)
        layer.self_attention.linear[0].weight, layer.self_attention.linear[0].bias = rand(3 * DIM, DIM), rand(3 * DIM)
        layer.self_attention.linear[1].weight, layer.self_attention.linear[1].bias = rand(DIM, DIM), rand(DIM)
        for j, rows in enumerate((DIM, 2 * DIM, DIM)):
            layer.attention.linear[j].weight, layer.attention.linear[j].bias = rand(rows, DIM), rand(rows)
        layer.ffn.linear_0.weight, layer.ffn.linear_0.bias = rand(FFN, DIM), rand(FFN)
        layer.ffn.linear_1.weight, layer.ffn.linear_1.bias = rand(DIM, FFN), rand(DIM)
    spec.register_vocabulary([f"token{i}" for i in range(VOCAB)])
    return spec, encoder_vars


@pytest.fixture(scope="module")
def random_models(tmp_path_factory):
    """{storage type: folder} of one random tiny Whisper saved by ctranslate2 in every storage type."""
    spec, encoder_vars = _random_whisper_spec(fresh_seed())  # $SPEAR_TEST_SEED reproduces it
    folders = {}
    for storage in STORAGE_TYPES:
        copied = copy.deepcopy(spec)
        copied.validate()
        copied.optimize(quantization=storage)
        folder = tmp_path_factory.mktemp(f"whisper-{storage}")
        copied.save(str(folder))
        folders[storage] = folder
    return folders, encoder_vars


@pytest.mark.parametrize("storage", list(STORAGE_TYPES))
def test_reader_recovers_every_encoder_variable(random_models, storage):
    folders, encoder_vars = random_models
    spec_name, variables = read_ct2_variables(folders[storage] / "model.bin")
    assert spec_name == "WhisperSpec"
    assert int(variables["encoder/num_heads"]) == HEADS
    for name, expected in encoder_vars.items():
        got = variables[name]
        assert got.dtype == torch.float32 and tuple(got.shape) == expected.shape, name
        expected = torch.from_numpy(expected)
        error = (got - expected).abs()
        assert bool((error <= storage_error_bound(storage, expected)).all()), (name, error.max().item())
        if storage != "float32" and name.endswith("/weight"):
            assert error.max() > 0, name  # the storage type really was applied
    assert not any(name.endswith("_scale") for name in variables if name.startswith("encoder/"))


@pytest.mark.parametrize("storage", list(STORAGE_TYPES))
def test_encoder_matches_ctranslate2_on_random_weights(random_models, storage, seed):
    folders, _ = random_models
    mel = np.random.default_rng(seed).standard_normal((2, MELS, 2 * 37)).astype(np.float32)  # 37 frames
    reference = np.array(ctranslate2.models.Whisper(str(folders[storage]), compute_type="float32")
                         .encode(ctranslate2.StorageView.from_array(mel)), dtype=np.float32)
    encoder = WhisperEncoder.from_ct2(folders[storage])
    with torch.no_grad():
        ours = encoder(torch.from_numpy(mel))
        block_2 = encoder(torch.from_numpy(mel), LAYERS)
    assert ours.shape == reference.shape == (2, 37, DIM)
    torch.testing.assert_close(ours, torch.from_numpy(reference), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(encoder.final_norm(block_2), ours)  # "last" = the final norm of the top block
    assert (block_2 - ours).abs().max() > 0.1  # a block's output is not normalised


def test_encoder_matches_ctranslate2_on_tiny_en(seed):
    gen = torch.Generator().manual_seed(seed)
    waves = torch.randn(2, 48_000, generator=gen) * 0.1
    mel = WhisperLogMel()(waves)  # (2, 80, 300)
    model = ctranslate2.models.Whisper(str(bundled_model_dir()), compute_type="float32")
    reference = torch.from_numpy(np.array(model.encode(ctranslate2.StorageView.from_array(mel.numpy())),
                                          dtype=np.float32))
    with torch.no_grad():
        ours = WhisperEncoder.from_ct2(bundled_model_dir())(mel)
    assert ours.shape == reference.shape == (2, 150, 384)
    assert ((ours - reference).norm() / reference.norm()).item() < 1e-4


def test_teacher_intermediate_layer(seed):
    gen = torch.Generator().manual_seed(seed)
    clip = torch.randn(40_000, generator=gen) * 0.1
    waves = torch.zeros(2, 40_000)
    waves[0] = clip
    waves[1, :25_000] = torch.randn(25_000, generator=gen) * 0.1
    waves[1, 25_000:] = 0.5  # padding content must not matter
    lengths = torch.tensor([40_000, 25_000])
    middle = load_teacher("whisper-demo?context=clip&layer=2")
    assert middle.layer == 2 and middle.dim == 384 and middle.name.endswith("@layer2")
    batch = middle(waves, lengths)
    assert batch.frames.shape == (2, 125, 384) and batch.frame_lengths.tolist() == [125, 79]
    alone = middle(clip[None], lengths[:1])
    torch.testing.assert_close(alone.frames[0], batch.frames[0], rtol=1e-4, atol=1e-4)  # batch-invariant
    # block 2's output, computed by hand from the encoder's parts: conv stem, positions, two blocks
    encoder = middle.encoder
    with torch.no_grad():
        mel = middle.front_end(clip[None])  # (1, 80, 250)
        x = torch.nn.functional.gelu(encoder.conv2(torch.nn.functional.gelu(encoder.conv1(mel)))).transpose(1, 2)
        x = encoder.blocks[1](encoder.blocks[0](x + encoder.positions[:125]))
    torch.testing.assert_close(alone.frames[0], x[0])
    last = load_teacher("whisper-demo?context=clip")(clip[None], lengths[:1])
    assert (last.frames - alone.frames).norm() / last.frames.norm() > 0.3  # a different layer


def test_reader_rejects_bad_files(tmp_path, random_models):
    folders, _ = random_models
    good = (folders["float32"] / "model.bin").read_bytes()
    truncated = tmp_path / "truncated.bin"
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="truncated"):
        read_ct2_variables(truncated)
    future = tmp_path / "future.bin"
    future.write_bytes(struct.pack("<I", 99) + good[4:])
    with pytest.raises(ValueError, match="version 99"):
        read_ct2_variables(future)
    with pytest.raises(ValueError, match="mel must be"):
        WhisperEncoder.from_ct2(folders["float32"])(torch.randn(1, MELS + 1, 20))
    with pytest.raises(ValueError, match="layer must be"):
        WhisperEncoder.from_ct2(folders["float32"])(torch.randn(1, MELS, 20), LAYERS + 1)
