"""The `hf:PATH` model spec: a local transformers folder with remote code, called the SPEAR way, as an Upstream.

    hf:/models/spear-large-speech?trust_remote_code=1         the authors' release (a local copy)
    hf:exported/large?trust_remote_code=1                     a spear-fast export, through AutoModel
Options: trust_remote_code=1 (required: the folder's own Python code runs), layers=all|last.

The model is called as the SPEAR authors' checkpoints are, `model(audio, audio_lens)` with 16 kHz
waves (B, L) and lengths (B,), and must return a mapping with
    encoder_out       (B, T, C)
    encoder_out_lens  (B,)
    hidden_states     optional, a sequence of (B, T, C)
The upstream's layers are hidden_states, then encoder_out unless it equals the last hidden state
(layers=last: encoder_out alone). Frame rate: config.json's "frame_rate" when present, else measured
on a probe clip. A folder without "auto_map" (e.g. WavLM / HuBERT / wav2vec2) is no remote-code
model: `hf:PATH` then means the teacher spec of kind hf (spear_fast/teachers/hf_ssl.py).
Nothing is downloaded: the folder is local and transformers runs offline.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from spear_fast.eval.upstreams import Upstream, UpstreamInfo, state_fingerprint
from spear_fast.sample_rate import SAMPLE_RATE

PREFIX = "hf:"
LAYER_CHOICES = ("all", "last")
PROBE_SECONDS = 10.0  # probe clip that measures the frame rate when config.json does not state it
DEFAULT_MIN_SAMPLES = 1600  # 0.1 s, HEAR's shortest sound, unless config.json states min_samples


def is_remote_code_folder(spec: str) -> bool:
    """Whether `hf:PATH[?...]` names a folder whose config.json maps AutoModel to its own code."""
    if not spec.startswith(PREFIX):
        return False
    config_path = Path(spec[len(PREFIX):].partition("?")[0]).expanduser() / "config.json"
    if not config_path.is_file():
        return False
    return "AutoModel" in _read_config(config_path).get("auto_map", {})


def _read_config(path: Path) -> dict:
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: unreadable config.json ({err})") from err
    if not isinstance(record, dict):
        raise ValueError(f"{path}: config.json must hold a JSON object")
    return record


def _parse_options(spec: str) -> tuple[Path, bool, str]:
    from spear_fast.eval.upstreams import _split_query
    from spear_fast.teachers.spec import pop_bool

    head, options = _split_query(spec[len(PREFIX):])
    trust = bool(pop_bool(options, "trust_remote_code"))
    layers = options.pop("layers", "all")
    if layers not in LAYER_CHOICES:
        raise ValueError(f"model spec {spec!r}: layers must be one of {LAYER_CHOICES}, got {layers!r}")
    if options:
        raise ValueError(f"model spec {spec!r}: unknown option(s) {sorted(options)}; known: trust_remote_code, layers")
    return Path(head).expanduser(), trust, layers


def _outputs(name: str, out) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """(encoder_out (B, T, C), encoder_out_lens (B,), hidden_states) from the model's return value."""
    if not isinstance(out, Mapping):
        raise ValueError(f"{name}: the model returned {type(out).__name__}, expected a mapping with "
                         f"encoder_out and encoder_out_lens (the SPEAR call convention)")
    keys = list(out.keys())
    if "encoder_out" not in keys or "encoder_out_lens" not in keys:
        raise ValueError(f"{name}: the model's output has keys {keys}, expected encoder_out and encoder_out_lens")
    encoder_out, lens = out["encoder_out"], out["encoder_out_lens"]
    hidden = out["hidden_states"] if "hidden_states" in keys and out["hidden_states"] is not None else []
    if not isinstance(hidden, Sequence) or not all(isinstance(h, torch.Tensor) for h in hidden):
        raise ValueError(f"{name}: hidden_states must be a sequence of tensors, got {type(hidden).__name__}")
    return encoder_out, lens, list(hidden)


class RemoteCodeUpstream(Upstream):
    """A model called as model(audio, audio_lens) -> {encoder_out, encoder_out_lens, hidden_states}."""

    def __init__(self, model: nn.Module, name: str, layers: str = "all", frame_rate: float | None = None,
                 min_samples: int = DEFAULT_MIN_SAMPLES):
        super().__init__()
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.layer_mode = layers
        self.name = name
        self.min_samples = int(min_samples)
        # Probe once: number of layers, width, and (when not stated) frames per second.
        probe_seconds = PROBE_SECONDS if frame_rate is None else 1.0
        generator = torch.Generator().manual_seed(0)
        probe = torch.randn(1, int(probe_seconds * SAMPLE_RATE), generator=generator) * 0.1  # (1, L)
        with torch.no_grad():
            layers_out, lengths = self._layers(probe.to(self.device), torch.tensor([probe.shape[1]]))
        widths = {x.shape[-1] for x in layers_out}
        self.info = UpstreamInfo(name=name, kind="hf", num_layers=len(layers_out), dim=widths.pop(),
                                 frame_rate=float(frame_rate) if frame_rate else int(lengths[0]) / probe_seconds,
                                 fingerprint=state_fingerprint(model))

    def _layers(self, waves, lengths):
        name = self.name
        encoder_out, out_lens, hidden = _outputs(name, self.model(waves, lengths.to(waves.device)))
        if encoder_out.dim() != 3 or encoder_out.shape[0] != waves.shape[0]:
            raise ValueError(f"{name}: encoder_out must be (B={waves.shape[0]}, T, C), got {tuple(encoder_out.shape)}")
        out_lens = torch.as_tensor(out_lens).reshape(-1).to("cpu", torch.int64)
        if out_lens.shape != (waves.shape[0],) or int(out_lens.max()) > encoder_out.shape[1]:
            raise ValueError(f"{name}: encoder_out_lens {out_lens.tolist()} do not fit encoder_out "
                             f"{tuple(encoder_out.shape)}")
        if self.layer_mode == "last":
            return [encoder_out], out_lens
        layers = list(hidden)
        if not layers or not (layers[-1].shape == encoder_out.shape and torch.equal(layers[-1], encoder_out)):
            layers.append(encoder_out)
        for index, x in enumerate(layers):
            if x.shape != encoder_out.shape:
                raise ValueError(f"{name}: hidden state {index} has shape {tuple(x.shape)}, encoder_out "
                                 f"{tuple(encoder_out.shape)}; the upstream's layers must share one shape "
                                 f"(add layers=last to the spec to use encoder_out alone)")
        return layers, out_lens


def load_remote_code_upstream(spec: str, device: str | torch.device = "cpu") -> RemoteCodeUpstream:
    """An Upstream from `hf:PATH?trust_remote_code=1[&layers=all|last]` (see the module docstring)."""
    from spear_fast.teachers.hf_ssl import _hub_offline, check_local_folder

    folder, trust, layers = _parse_options(spec)
    check_local_folder("hf", str(folder))
    record = _read_config(folder / "config.json")
    auto_model = record.get("auto_map", {}).get("AutoModel")
    if auto_model is None:
        raise ValueError(f"model spec {spec!r}: {folder}/config.json has no auto_map.AutoModel (not a "
                         f"remote-code model)")
    if not trust:
        raise ValueError(f"model spec {spec!r}: {folder} runs its own Python code ({auto_model}); add the "
                         f"option trust_remote_code=1 (hf:{folder}?trust_remote_code=1) if you trust it")
    try:
        from transformers import AutoModel
    except ImportError as err:
        raise ValueError(f"model spec {spec!r} needs transformers: pip install 'spear-fast[teachers]'") from err
    with _hub_offline():
        model = AutoModel.from_pretrained(str(folder), trust_remote_code=True, local_files_only=True)
    frame_rate = record.get("frame_rate")
    min_samples = int(record.get("min_samples", DEFAULT_MIN_SAMPLES))
    return RemoteCodeUpstream(model.to(device), name=spec, layers=layers,
                              frame_rate=float(frame_rate) if frame_rate else None, min_samples=min_samples)
