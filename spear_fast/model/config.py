"""Student configuration: typed dataclasses, the four presets as factories, command-line overrides.

Each field is documented once, in its `doc` metadata (`describe(config)` prints them); fields with
a range carry it in metadata too, so `apply_overrides` checks values as they are set. Cross-field
rules (e.g. dim divisible by num_heads) are checked by `validate()` after all overrides are applied.

    config = apply_overrides(base(), ["encoder.num_layers=6", "encoder.attention=sdpa"])
"""
from __future__ import annotations

import copy
import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from spear_fast.errors import UserError

FBANK_DIM = 128  # input features: 128-bin log-mel fbank at 100 Hz (SPEAR.md section 4)
INPUT_FRAME_RATE = 100.0  # fbank frames per second (10 ms shift)


def _field(default: Any, doc: str, *, ge: float | None = None, gt: float | None = None,
           le: float | None = None, lt: float | None = None) -> Any:
    """A dataclass field with its documentation and optional numeric bounds."""
    metadata = {"doc": doc, "ge": ge, "gt": gt, "le": le, "lt": lt}
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class SubsamplingConfig:
    """Conv2d front end: 100 Hz fbank -> 50 Hz (time_stride 2) or 25 Hz (time_stride 4)."""

    channels: int = _field(256, "channels of the 2nd and 3rd conv (the 1st has channels // 8)", ge=8)
    time_stride: int = _field(2, "total time subsampling: 2 -> 50 Hz output, 4 -> 25 Hz output")
    dropout: float = _field(0.1, "dropout after the projection to the model dimension", ge=0.0, lt=1.0)

    def validate(self) -> None:
        if self.time_stride not in (2, 4):
            raise UserError(f"subsampling.time_stride must be 2 (50 Hz) or 4 (25 Hz), got {self.time_stride}")
        if self.channels % 8:
            raise UserError(f"subsampling.channels must be a multiple of 8, got {self.channels}")


@dataclass
class EncoderConfig:
    """Pre-LN Transformer encoder with rotary position embeddings."""

    num_layers: int = _field(12, "number of Transformer blocks", ge=1)
    dim: int = _field(768, "model (residual stream) dimension d", ge=8)
    num_heads: int = _field(12, "attention heads; dim / num_heads must be even (rotary)", ge=1)
    ffn_dim: int = _field(3072, "hidden size of the feed-forward network", ge=1)
    ffn_activation: Literal["gelu", "swiglu"] = _field(
        "gelu", "gelu: Linear-GELU-Linear (2 matrices); swiglu: SiLU-gated (3 matrices, ~1.5x FFN params)")
    norm: Literal["layernorm", "rmsnorm"] = _field("layernorm", "normalisation before attention/FFN and at the end")
    dropout: float = _field(0.1, "dropout on the attention and FFN outputs before the residual add", ge=0.0, lt=1.0)
    attention_dropout: float = _field(0.0, "dropout on the attention probabilities", ge=0.0, lt=1.0)
    rope_base: float = _field(10000.0, "rotary embedding base (wavelengths up to 2*pi*base frames)", gt=1.0)
    attention: Literal["auto", "flash", "xformers", "sdpa"] = _field(
        "auto", "attention backend; auto: flash-attn on CUDA if installed, else xformers on CUDA if installed, "
                "else SDPA")

    def validate(self) -> None:
        if self.dim % self.num_heads:
            raise UserError(f"encoder.dim={self.dim} is not divisible by encoder.num_heads={self.num_heads}")
        if (self.dim // self.num_heads) % 2:
            raise UserError(f"encoder head dim {self.dim // self.num_heads} (dim/num_heads) must be even for rotary")


@dataclass
class StudentConfig:
    """The whole student: front end + encoder."""

    name: str = _field("custom", "preset name this config came from (informational)")
    subsampling: SubsamplingConfig = _field(SubsamplingConfig(), "Conv2d subsampling front end")
    encoder: EncoderConfig = _field(EncoderConfig(), "Transformer encoder")

    @property
    def frame_rate(self) -> float:
        """Output frames per second (50 Hz or 25 Hz)."""
        return INPUT_FRAME_RATE / self.subsampling.time_stride

    def validate(self) -> None:
        _check_bounds(self)
        self.subsampling.validate()
        self.encoder.validate()


# ---------------------------------------------------------------------------------------------
# Presets (SPEAR.md section 4). Measured parameter counts are asserted in tests/test_model_config.py.

def tiny() -> StudentConfig:
    """~5M params, the CPU demo: 6 layers, d=256, 4 heads, ffn 1024, 50 Hz."""
    return StudentConfig(name="tiny", subsampling=SubsamplingConfig(channels=64),
                         encoder=EncoderConfig(num_layers=6, dim=256, num_heads=4, ffn_dim=1024))


def base() -> StudentConfig:
    """~95M params: 12 layers, d=768, 12 heads, ffn 3072, 50 Hz."""
    return StudentConfig(name="base", subsampling=SubsamplingConfig(channels=256),
                         encoder=EncoderConfig(num_layers=12, dim=768, num_heads=12, ffn_dim=3072))


def large() -> StudentConfig:
    """~315M params: 24 layers, d=1024, 16 heads, ffn 4096, 50 Hz."""
    return StudentConfig(name="large", subsampling=SubsamplingConfig(channels=256),
                         encoder=EncoderConfig(num_layers=24, dim=1024, num_heads=16, ffn_dim=4096))


def xlarge() -> StudentConfig:
    """~630M params: 32 layers, d=1280, 20 heads, ffn 5120, 25 Hz output."""
    return StudentConfig(name="xlarge", subsampling=SubsamplingConfig(channels=256, time_stride=4),
                         encoder=EncoderConfig(num_layers=32, dim=1280, num_heads=20, ffn_dim=5120))


PRESETS: dict[str, Callable[[], StudentConfig]] = {"tiny": tiny, "base": base, "large": large, "xlarge": xlarge}

# The targets of SPEAR.md section 4 (tiny: the demo size); tests check each preset is within 10 %.
PRESET_PARAM_TARGETS: dict[str, int] = {"tiny": 5_000_000, "base": 95_000_000, "large": 315_000_000,
                                        "xlarge": 630_000_000}


def preset(name: str) -> StudentConfig:
    """The named preset; ValueError listing the known names otherwise."""
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]()


def param_count(model_or_config: Any) -> int:
    """Number of parameters of a module, or of the student a StudentConfig builds (built on the meta
    device, so even xlarge costs no memory)."""
    import torch

    if isinstance(model_or_config, StudentConfig):
        from spear_fast.model.student import SpearStudent

        with torch.device("meta"):
            model_or_config = SpearStudent(model_or_config)
    return sum(p.numel() for p in model_or_config.parameters())


# ---------------------------------------------------------------------------------------------
# Overrides: "section.field=value" strings, typed by the dataclass annotations.

def _check_bounds(obj: Any) -> None:
    """Check every field's metadata bounds, recursing into nested dataclasses."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _check_bounds(value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            _check_value_bounds(type(obj).__name__, f, value)


def _check_value_bounds(owner: str, f: dataclasses.Field, value: float) -> None:
    meta = f.metadata
    checks = [("ge", lambda v, b: v >= b, ">="), ("gt", lambda v, b: v > b, ">"),
              ("le", lambda v, b: v <= b, "<="), ("lt", lambda v, b: v < b, "<")]
    for key, ok, symbol in checks:
        bound = meta.get(key)
        if bound is not None and not ok(value, bound):
            raise UserError(f"{owner}.{f.name}={value!r} is out of range: must be {symbol} {bound}")


def _parse_value(text: str, annotation: Any, path: str) -> Any:
    """Convert the string `text` to the type `annotation` (int, float, bool, str, Literal, Optional,
    tuple[...]); ValueError naming the field and the expected type otherwise."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        choices = typing.get_args(annotation)
        for choice in choices:
            if str(choice) == text:
                return choice
        raise UserError(f"{path}={text!r}: must be one of {list(choices)}")
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if type(None) in options and text.lower() in ("none", "null"):
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _parse_value(text, option, path)
            except ValueError as exc:
                errors.append(str(exc))
        raise UserError(f"{path}={text!r}: " + "; ".join(errors))
    if origin is tuple:
        args = typing.get_args(annotation)
        items = [item.strip() for item in text.split(",") if item.strip()]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_parse_value(item, args[0], path) for item in items)
        if len(items) != len(args):
            raise UserError(f"{path}={text!r}: expected {len(args)} comma-separated values")
        return tuple(_parse_value(item, arg, path) for item, arg in zip(items, args, strict=True))
    if annotation is bool:
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise UserError(f"{path}={text!r}: expected a boolean (true/false)")
    if annotation is int:
        try:
            return int(text)
        except ValueError:
            raise UserError(f"{path}={text!r}: expected an integer") from None
    if annotation is float:
        try:
            return float(text)
        except ValueError:
            raise UserError(f"{path}={text!r}: expected a number") from None
    if annotation is str:
        return text
    raise UserError(f"{path}: fields of type {annotation!r} cannot be set from the command line")


def apply_overrides(config: Any, overrides: list[str]) -> Any:
    """A copy of the dataclass `config` with each "dotted.path=value" applied, typed by the field's
    annotation and range-checked; afterwards `validate()` (if the config has one) checks cross-field
    rules. Unknown fields, nested sections given a value, bad types and out-of-range values raise a
    ValueError naming the override."""
    config = copy.deepcopy(config)
    for override in overrides:
        if "=" not in override:
            raise UserError(f"override {override!r} must look like section.field=value")
        path, text = (part.strip() for part in override.split("=", 1))
        *parents, leaf = path.split(".")
        target = config
        walked = []
        for name in parents:
            walked.append(name)
            fields = {f.name for f in dataclasses.fields(target)}
            child = getattr(target, name, None) if name in fields else None
            if not dataclasses.is_dataclass(child):
                raise UserError(f"override {override!r}: {'.'.join(walked)!r} is not a config section; "
                                f"sections here: {_sections(target)}")
            target = child
        fields = {f.name: f for f in dataclasses.fields(target)}
        if leaf not in fields:
            raise UserError(f"override {override!r}: unknown field {leaf!r} in {type(target).__name__}; "
                            f"known: {sorted(fields)}")
        hints = typing.get_type_hints(type(target), include_extras=False)
        annotation = hints[leaf]
        if dataclasses.is_dataclass(annotation):
            raise UserError(f"override {override!r}: {path!r} is a section; set one of its fields "
                            f"({', '.join(f.name for f in dataclasses.fields(annotation))})")
        value = _parse_value(text, annotation, path)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            _check_value_bounds(type(target).__name__, fields[leaf], value)
        setattr(target, leaf, value)
    if hasattr(config, "validate"):
        config.validate()
    return config


def _sections(obj: Any) -> list[str]:
    return [f.name for f in dataclasses.fields(obj) if dataclasses.is_dataclass(getattr(obj, f.name))]


def describe(config: Any, prefix: str = "") -> list[str]:
    """One line per field: `path = value  # doc`, recursing into sections (for --print-config)."""
    lines = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        path = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            lines.extend(describe(value, prefix=f"{path}."))
        else:
            lines.append(f"{path} = {value!r}  # {f.metadata.get('doc', '')}")
    return lines


def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict of a config (for config.json / checkpoints)."""
    return dataclasses.asdict(config)


def config_from_dict(cls: type, data: Mapping[str, Any]) -> Any:
    """Rebuild dataclass `cls` from `config_to_dict` output; unknown keys and wrongly typed values raise a
    ValueError naming the key. Missing keys take their defaults. Runs `validate()` when defined."""
    config = _from_dict(cls, data, cls.__name__)
    if hasattr(config, "validate"):
        config.validate()
    return config


def _from_dict(cls: type, data: Mapping[str, Any], path: str) -> Any:
    if not isinstance(data, Mapping):
        raise UserError(f"{path}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise UserError(f"{path}: unknown keys {sorted(unknown)}; known: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in data.items():
        annotation = hints[name]
        item_types = typing.get_args(annotation) if typing.get_origin(annotation) is tuple else ()
        if dataclasses.is_dataclass(annotation):
            value = _from_dict(annotation, value, f"{path}.{name}")
        elif item_types and dataclasses.is_dataclass(item_types[0]):  # tuple[Spec, ...], e.g. teachers
            value = tuple(_from_dict(item_types[0], item, f"{path}.{name}[{i}]") for i, item in enumerate(value))
        elif annotation is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif annotation in (int, float, str, bool) and type(value) is not annotation:
            raise UserError(f"{path}.{name}: expected {annotation.__name__}, got {value!r}")
        elif typing.get_origin(annotation) is Literal and value not in typing.get_args(annotation):
            raise UserError(f"{path}.{name}={value!r}: must be one of {list(typing.get_args(annotation))}")
        values[name] = value
    config = cls(**values)
    _check_bounds(config)
    return config
