"""Student presets, parameter counts (spear_fast/model/config.py) and command-line overrides (spear_fast/config.py)."""
import pytest

from spear_fast.config import apply_overrides, describe
from spear_fast.model.config import (
    PRESET_PARAM_TARGETS,
    PRESETS,
    StudentConfig,
    base,
    param_count,
    preset,
    tiny,
    xlarge,
)
from spear_fast.model.student import SpearStudent


def expected_params(config: StudentConfig) -> int:
    """Parameter count by hand from the architecture description (subsampling.py, student.py)."""
    enc, sub = config.encoder, config.subsampling
    d, f, c = enc.dim, enc.ffn_dim, sub.channels
    c1 = c // 8
    subsampling = (1 * c1 * 9 + c1) + (c1 * c * 9 + c) + (c * c * 9 + c) + (c * 32 * d + d)
    attn = d * 3 * d + 3 * d + d * d + d
    up = 2 * f if enc.ffn_activation == "swiglu" else f
    ffn = d * up + up + f * d + d
    norm = 2 * d if enc.norm == "layernorm" else d
    block = attn + ffn + 2 * norm
    return 128 + subsampling + enc.num_layers * block + norm  # mask vector + ... + final norm


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_param_counts_near_targets(name):
    config = PRESETS[name]()
    count = param_count(config)
    assert count == expected_params(config)
    target = PRESET_PARAM_TARGETS[name]
    assert abs(count - target) / target < 0.10, f"{name}: {count} params vs target {target}"


@pytest.mark.parametrize("overrides", [[], ["encoder.norm=rmsnorm", "encoder.ffn_activation=swiglu",
                                            "encoder.num_layers=3", "subsampling.channels=32"]])
def test_param_count_of_built_model_matches_formula(overrides):
    config = apply_overrides(tiny(), overrides)
    model = SpearStudent(config)
    assert param_count(model) == expected_params(config) == param_count(config)


def test_preset_shapes_and_rates():
    assert [preset(n).encoder.num_layers for n in ("tiny", "base", "large", "xlarge")] == [6, 12, 24, 32]
    assert base().encoder.dim == 768 and base().encoder.num_heads == 12 and base().encoder.ffn_dim == 3072
    assert base().frame_rate == 50.0 and xlarge().frame_rate == 25.0
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        preset("huge")


def test_apply_overrides_types_and_copy():
    original = base()
    config = apply_overrides(original, ["encoder.num_layers=6", "encoder.dropout=0.25", "encoder.attention=sdpa",
                                        "subsampling.time_stride=4", "name=mine"])
    assert config.encoder.num_layers == 6 and isinstance(config.encoder.num_layers, int)
    assert config.encoder.dropout == 0.25 and config.encoder.attention == "sdpa"
    assert config.frame_rate == 25.0 and config.name == "mine"
    assert original.encoder.num_layers == 12 and original.frame_rate == 50.0  # the input is untouched
    # cross-field rules are checked after all overrides, so consistent pairs work in any order
    config = apply_overrides(base(), ["encoder.dim=512", "encoder.num_heads=8"])
    assert config.encoder.dim == 512


@pytest.mark.parametrize("override, message", [
    ("encoder.num_layerz=3", "unknown field 'num_layerz'"),
    ("decoder.num_layers=3", "'decoder' is not a config section"),
    ("encoder.num_layers=three", "expected an integer"),
    ("encoder.num_layers=0", r"out of range: must be >= 1"),
    ("encoder.dropout=1.5", r"out of range: must be < 1"),
    ("encoder.attention=cuda", r"must be one of \['auto', 'flash', 'xformers', 'sdpa'\]"),
    ("encoder.num_heads=7", "not divisible"),
    ("subsampling.time_stride=3", "must be 2"),
    ("encoder=3", "is a section"),
    ("encoder.num_layers", "must look like"),
])
def test_apply_overrides_errors(override, message):
    with pytest.raises(ValueError, match=message):
        apply_overrides(tiny(), [override])


def test_describe_lists_every_field_with_doc():
    lines = describe(tiny())
    assert any(line.startswith("encoder.num_layers = 6  # number of Transformer blocks") for line in lines)
    assert len(lines) == 1 + 3 + 10  # name + subsampling fields + encoder fields
    assert all("#" in line and not line.endswith("# ") for line in lines)


def test_config_dict_round_trip_and_errors():
    from spear_fast.config import config_from_dict, config_to_dict

    config = apply_overrides(xlarge(), ["encoder.norm=rmsnorm", "encoder.dropout=0.0"])
    data = config_to_dict(config)
    assert data["encoder"]["num_layers"] == 32 and data["subsampling"]["time_stride"] == 4
    assert config_from_dict(StudentConfig, data) == config
    data["encoder"]["dropout"] = 0  # JSON may store a float as an int
    assert config_from_dict(StudentConfig, data).encoder.dropout == 0.0
    with pytest.raises(ValueError, match=r"StudentConfig.encoder: unknown keys \['depth'\]"):
        config_from_dict(StudentConfig, {"encoder": {"depth": 3}})
    with pytest.raises(ValueError, match=r"StudentConfig.encoder.num_layers: expected int, got '3'"):
        config_from_dict(StudentConfig, {"encoder": {"num_layers": "3"}})
    with pytest.raises(ValueError, match="out of range"):
        config_from_dict(StudentConfig, {"encoder": {"num_layers": 0}})
    with pytest.raises(ValueError, match="not divisible"):
        config_from_dict(StudentConfig, {"encoder": {"num_heads": 5}})
