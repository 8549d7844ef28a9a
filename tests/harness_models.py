"""Models the harness-adapter tests share: a small random spear-fast export, and a remote-code
transformers model called the way the SPEAR authors' checkpoints are (written as files, as a user's
download would be)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from spear_fast.model import EncoderConfig, SpearStudent, StudentConfig, SubsamplingConfig
from spear_fast.model.pretrained import save_pretrained


def random_export(directory: Path, seed: int, time_stride: int = 2, num_layers: int = 3, dim: int = 32,
                  ffn_activation: str = "gelu", norm: str = "layernorm") -> StudentConfig:
    """A small student with weights moved off their initialisation, saved as `spear export` does."""
    config = StudentConfig(name="test", subsampling=SubsamplingConfig(channels=16, time_stride=time_stride),
                           encoder=EncoderConfig(num_layers=num_layers, dim=dim, num_heads=2, ffn_dim=2 * dim,
                                                 ffn_activation=ffn_activation, norm=norm, attention="sdpa"))
    torch.manual_seed(seed)
    student = SpearStudent(config)
    with torch.no_grad():  # so that a layer or weight mix-up cannot pass
        for p in student.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    save_pretrained(student.state_dict(), config, directory)
    return config


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """A module-wide random export (50 Hz, 3 layers of 32); import the fixture into a test module."""
    directory = tmp_path_factory.mktemp("harness") / "model"
    random_export(directory, int(torch.randint(0, 2**31 - 1, ())))
    return directory


TOY_HOP = 400  # samples per frame: 40 Hz
TOY_DIM = 24

TOY_CONFIGURATION = '''
from transformers import PretrainedConfig


class ToySpearConfig(PretrainedConfig):
    model_type = "toy_spear"

    def __init__(self, hop=400, dim=24, **kwargs):
        self.hop = hop
        self.dim = dim
        super().__init__(**kwargs)
'''

# Called as model(audio, audio_lens) -> dict(encoder_out, encoder_out_lens, hidden_states), the last
# hidden state being encoder_out: a log spectrum per hop, projected (layer 1), then mixed (layer 2).
TOY_MODELING = '''
import torch
from torch import nn
from transformers import PreTrainedModel

from .configuration_toy_spear import ToySpearConfig


class ToySpearModel(PreTrainedModel):
    config_class = ToySpearConfig

    def __init__(self, config):
        super().__init__(config)
        self.proj = nn.Linear(config.hop // 2 + 1, config.dim)
        self.mix = nn.Linear(config.dim, config.dim)
        self.post_init()

    def _init_weights(self, module):
        pass

    def forward(self, audio, audio_lens):
        if audio.dim() == 1:
            audio, audio_lens = audio[None], audio_lens.reshape(1)
        hop = self.config.hop
        frames = audio[:, : audio.shape[1] // hop * hop].unflatten(1, (-1, hop))
        spectrum = torch.fft.rfft(frames, dim=-1).abs().clamp_min(1e-5).log()
        first = self.proj(spectrum)
        second = torch.tanh(self.mix(first))
        return {"encoder_out": second, "encoder_out_lens": audio_lens // hop, "hidden_states": [first, second]}
'''


def write_toy_remote_model(directory: Path, seed: int, frame_rate_in_config: bool = False) -> Path:
    """A transformers folder with remote code (config.json + auto_map, two .py files, safetensors)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "configuration_toy_spear.py").write_text(TOY_CONFIGURATION)
    (directory / "modeling_toy_spear.py").write_text(TOY_MODELING)
    config = {"model_type": "toy_spear", "architectures": ["ToySpearModel"], "hop": TOY_HOP, "dim": TOY_DIM,
              "auto_map": {"AutoConfig": "configuration_toy_spear.ToySpearConfig",
                           "AutoModel": "modeling_toy_spear.ToySpearModel"}}
    if frame_rate_in_config:
        config["frame_rate"] = 16000 / TOY_HOP
    (directory / "config.json").write_text(json.dumps(config))
    generator = torch.Generator().manual_seed(seed)
    bins = TOY_HOP // 2 + 1
    bands = torch.zeros(TOY_DIM, bins)  # layer 1 ~ the log spectrum averaged in TOY_DIM bands (+ noise)
    for band, chunk in enumerate(torch.arange(bins).tensor_split(TOY_DIM)):
        bands[band, chunk] = 1.0 / len(chunk)
    weights = {"proj.weight": bands + torch.randn(TOY_DIM, bins, generator=generator) * 0.01,
               "proj.bias": torch.randn(TOY_DIM, generator=generator) * 0.1,
               "mix.weight": torch.randn(TOY_DIM, TOY_DIM, generator=generator) * 0.3,
               "mix.bias": torch.randn(TOY_DIM, generator=generator) * 0.1}
    save_file(weights, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return directory
