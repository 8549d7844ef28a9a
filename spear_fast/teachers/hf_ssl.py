"""WavLM / HuBERT / wav2vec2 teachers through `transformers`, from a LOCAL folder only.

The folder holds config.json and model.safetensors or pytorch_model.bin (sharded index files work
too), optionally preprocessor_config.json. Nothing is ever downloaded: the path is checked before
transformers is called, and the call runs with HF_HUB_OFFLINE=1 and local_files_only=True.

Layer L means the output of transformer layer L (transformers' hidden_states[L]; 0 = the input to
the first layer), the raw residual stream: for pre-LN ("stable layer norm") models the encoder's
final LayerNorm is not applied, also not for the last layer (as transformers >= 5 reports
hidden_states; last_hidden_state is the LayerNorm'd one). The encoder is cut after layer L so no
compute is spent above it.

Batching: models whose first conv layer uses GroupNorm over time (feat_extract_norm == "group",
e.g. wav2vec2-base, hubert-base) normalise over the padded length, and their configs do not use an
attention mask, so padding would change a clip's frames: those run one clip at a time, unpadded.
"layer" models (WavLM Large, HuBERT Large, wav2vec2-large-lv60) run batched with the attention mask.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import torch
from torch import nn

from spear_fast.errors import UserError
from spear_fast.sample_rate import SAMPLE_RATE

from .base import Teacher
from .spec import check_no_options_left, pop_bool, pop_dtype

_MODEL_TYPES = {"wavlm": ("wavlm",), "hubert": ("hubert",), "wav2vec2": ("wav2vec2",),
                "hf": ("wavlm", "hubert", "wav2vec2")}
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                 "pytorch_model.bin.index.json")
# SPEAR's speech teacher: output of transformer layer 21 of WavLM Large's 24.
SPEAR_WAVLM_LAYER = 21
NORM_EPS = 1e-7  # what transformers' Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm adds to the variance


@contextlib.contextmanager
def _hub_offline():
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def check_local_folder(kind: str, path: str | None) -> Path:
    """The folder, or a ValueError saying why it cannot be a local transformers model folder."""
    if not path:
        raise UserError(f"{kind} teacher needs a local folder: '{kind}:/path/to/folder'")
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise UserError(
            f"{kind} teacher: {str(path)!r} is not a local folder (hub names are never downloaded; "
            f"download the model and give its folder with config.json + model.safetensors or pytorch_model.bin)")
    if not (folder / "config.json").is_file():
        raise UserError(f"{kind} teacher: {folder} has no config.json")
    if not any((folder / name).is_file() for name in _WEIGHT_FILES):
        raise UserError(f"{kind} teacher: {folder} has none of {', '.join(_WEIGHT_FILES)}")
    return folder


def normalize_waves(waves: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance per clip over its valid samples (population variance + 1e-7), zero
    past the length: transformers' Wav2Vec2FeatureExtractor(do_normalize=True) in torch."""
    valid = (torch.arange(waves.shape[1], device=waves.device)[None, :] < lengths.to(waves.device)[:, None])  # (B, L)
    count = lengths.to(waves.device, torch.float64)[:, None]  # (B, 1)
    x = waves.double().masked_fill(~valid, 0.0)
    mean = x.sum(1, keepdim=True) / count  # (B, 1)
    var = ((x - mean).masked_fill(~valid, 0.0) ** 2).sum(1, keepdim=True) / count  # (B, 1)
    return ((x - mean) / torch.sqrt(var + NORM_EPS)).masked_fill(~valid, 0.0).float()


class HFSSLTeacher(Teacher):
    """A transformers Wav2Vec2/HuBERT/WavLM model's layer-L output as teacher frames."""

    def __init__(self, model: nn.Module, name: str, layer: int, do_normalize: bool,
                 device: str | torch.device = "cpu", autocast_dtype: torch.dtype | None = torch.bfloat16):
        super().__init__(device, autocast_dtype)
        config = model.config
        num_layers = int(config.num_hidden_layers)
        if not 0 <= layer <= num_layers:
            raise UserError(f"{name} teacher: layer {layer} is outside [0, {num_layers}]")
        encoder = model.encoder
        encoder.layers = encoder.layers[:layer]
        if getattr(config, "do_stable_layer_norm", False):
            encoder.layer_norm = nn.Identity()
        self.model = model.to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.name = name
        self.layer = layer
        self.dim = int(config.hidden_size)
        self.do_normalize = do_normalize
        self.batched = config.feat_extract_norm == "layer"
        ratio = 1
        for stride in config.conv_stride:
            ratio *= int(stride)
        self.frame_rate = SAMPLE_RATE / ratio  # 50 Hz for the usual 320-sample conv stack
        self.min_samples = self._min_samples(config)

    @staticmethod
    def _min_samples(config) -> int:
        """Shortest input giving one frame: invert L_out = floor((L_in - k) / s) + 1 per conv layer."""
        need = 1
        for kernel, stride in reversed(list(zip(config.conv_kernel, config.conv_stride))):
            need = (need - 1) * int(stride) + int(kernel)
        return need

    @classmethod
    def from_spec(cls, kind: str, path: str | None, layer, options: dict[str, str],
                  device: str | torch.device = "cpu") -> "HFSSLTeacher":
        folder = check_local_folder(kind, path)
        autocast_dtype = pop_dtype(options)
        do_normalize = pop_bool(options, "normalize")
        check_no_options_left(kind, options)
        with _hub_offline():
            from transformers import AutoConfig, AutoModel
            config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
            if config.model_type not in _MODEL_TYPES[kind]:
                raise UserError(f"{kind} teacher: {folder}/config.json has model_type {config.model_type!r}, "
                                f"expected one of {_MODEL_TYPES[kind]}")
            model = AutoModel.from_pretrained(str(folder), config=config, local_files_only=True)
        if do_normalize is None:
            do_normalize = _folder_do_normalize(folder, config)
        if layer is None:
            n = int(config.num_hidden_layers)
            layer = SPEAR_WAVLM_LAYER if config.model_type == "wavlm" and n == 24 else n
        if not isinstance(layer, int):
            raise UserError(f"{kind} teacher: layer must be an integer, got {layer!r}")
        return cls(model, name=f"{config.model_type}:{folder.name}", layer=layer, do_normalize=do_normalize,
                   device=device, autocast_dtype=autocast_dtype)

    def _encode(self, waves: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.do_normalize:
            waves = normalize_waves(waves, lengths)  # (B, L)
        frame_lengths = self.model._get_feat_extract_output_lengths(lengths).to(torch.int64)  # (B,)
        if self.batched:
            mask = (torch.arange(waves.shape[1], device=waves.device)[None, :]
                    < lengths.to(waves.device)[:, None]).long()  # (B, L)
            frames = self.model(waves, attention_mask=mask).last_hidden_state  # (B, T, D)
            return frames[:, : int(frame_lengths.max())], frame_lengths
        out = waves.new_zeros(waves.shape[0], int(frame_lengths.max()), self.dim)  # (B, T, D)
        for b, n in enumerate(lengths.tolist()):
            one = self.model(waves[b : b + 1, :n]).last_hidden_state[0]  # (T_b, D)
            out[b, : one.shape[0]] = one.to(out.dtype)
        return out, frame_lengths


def _folder_do_normalize(folder: Path, config) -> bool:
    """do_normalize from preprocessor_config.json; without that file, the convention of the
    published checkpoints: LayerNorm conv stacks (large models) normalise, GroupNorm ones do not."""
    pre = folder / "preprocessor_config.json"
    if pre.is_file():
        try:
            data = json.loads(pre.read_text())
        except json.JSONDecodeError as err:
            raise UserError(f"{pre}: not valid JSON ({err})") from None
        if "do_normalize" in data:
            return bool(data["do_normalize"])
    return config.feat_extract_norm == "layer"
