"""Student configuration: typed dataclasses and the four presets as factories.

Fields, bounds and overrides are spear_fast/config.py's, as for every config of the package:

    config = apply_overrides(base(), ["encoder.num_layers=6", "encoder.attention=sdpa"])  # spear_fast.config
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from spear_fast.config import field
from spear_fast.errors import UserError

FBANK_DIM = 128  # input features: 128-bin log-mel fbank at 100 Hz (SPEAR.md section 4)
INPUT_FRAME_RATE = 100.0  # fbank frames per second (10 ms shift)


@dataclass
class SubsamplingConfig:
    """Conv2d front end: 100 Hz fbank -> 50 Hz (time_stride 2) or 25 Hz (time_stride 4)."""

    channels: int = field(256, "channels of the 2nd and 3rd conv (the 1st has channels // 8)", ge=8)
    time_stride: int = field(2, "total time subsampling: 2 -> 50 Hz output, 4 -> 25 Hz output")
    dropout: float = field(0.1, "dropout after the projection to the model dimension", ge=0.0, lt=1.0)

    def validate(self) -> None:
        if self.time_stride not in (2, 4):
            raise UserError(f"subsampling.time_stride must be 2 (50 Hz) or 4 (25 Hz), got {self.time_stride}")
        if self.channels % 8:
            raise UserError(f"subsampling.channels must be a multiple of 8, got {self.channels}")


@dataclass
class EncoderConfig:
    """Pre-LN Transformer encoder with rotary position embeddings."""

    num_layers: int = field(12, "number of Transformer blocks", ge=1)
    dim: int = field(768, "model (residual stream) dimension d", ge=8)
    num_heads: int = field(12, "attention heads; dim / num_heads must be even (rotary)", ge=1)
    ffn_dim: int = field(3072, "hidden size of the feed-forward network", ge=1)
    ffn_activation: Literal["gelu", "swiglu"] = field(
        "gelu", "gelu: Linear-GELU-Linear (2 matrices); swiglu: SiLU-gated (3 matrices, ~1.5x FFN params)")
    norm: Literal["layernorm", "rmsnorm"] = field("layernorm", "normalisation before attention/FFN and at the end")
    dropout: float = field(0.1, "dropout on the attention and FFN outputs before the residual add", ge=0.0, lt=1.0)
    attention_dropout: float = field(0.0, "dropout on the attention probabilities", ge=0.0, lt=1.0)
    rope_base: float = field(10000.0, "rotary embedding base (wavelengths up to 2*pi*base frames)", gt=1.0)
    attention: Literal["auto", "flash", "xformers", "sdpa"] = field(
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

    name: str = field("custom", "preset name this config came from (informational)")
    subsampling: SubsamplingConfig = field(SubsamplingConfig(), "Conv2d subsampling front end")
    encoder: EncoderConfig = field(EncoderConfig(), "Transformer encoder")

    @property
    def frame_rate(self) -> float:
        """Output frames per second (50 Hz or 25 Hz)."""
        return INPUT_FRAME_RATE / self.subsampling.time_stride


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
