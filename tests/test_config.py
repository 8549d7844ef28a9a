"""The config machinery (spear_fast/config.py): every config documents each field; check() names the key
and the rule. Overrides, describe and the dict round trip are exercised on the student in
test_model_config.py and on the training config in test_train_config.py."""
import ast
import dataclasses
import importlib
from pathlib import Path

import pytest

import spear_fast
from spear_fast.config import check, field
from spear_fast.errors import UserError
from spear_fast.model.config import EncoderConfig
from spear_fast.objective import ObjectiveConfig, TeacherSpec


def _is_dataclass_decorator(node: ast.expr) -> bool:
    target = node.func if isinstance(node, ast.Call) else node
    return (isinstance(target, ast.Name) and target.id == "dataclass") or (
        isinstance(target, ast.Attribute) and target.attr == "dataclass")


def config_classes() -> list[type]:
    """Every dataclass of the package whose name ends in Config."""
    root = Path(spear_fast.__file__).parent
    found = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        names = [node.name for node in tree.body if isinstance(node, ast.ClassDef) and node.name.endswith("Config")
                 and any(_is_dataclass_decorator(d) for d in node.decorator_list)]
        if names:
            module = importlib.import_module(".".join(["spear_fast", *path.relative_to(root).with_suffix("").parts]))
            found.extend(getattr(module, name) for name in names)
    return found


CONFIGS = config_classes()


def test_the_package_has_its_configs():
    assert {"StudentConfig", "TrainConfig", "MaskingConfig", "ObjectiveConfig", "ProbeConfig", "TokenizeConfig",
            "TrainerConfig", "DemoConfig"} <= {cls.__name__ for cls in CONFIGS}


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda cls: cls.__name__)
def test_every_config_field_is_documented(cls):
    undocumented = [f.name for f in dataclasses.fields(cls) if not f.metadata.get("doc")]
    assert not undocumented, f"{cls.__name__}: fields without a doc: {undocumented}"


def test_a_field_needs_its_doc():
    with pytest.raises(TypeError, match="doc"):
        field(1)


def test_check_names_the_key_and_the_rule():
    config = ObjectiveConfig(teachers=(TeacherSpec("w", "speech", 16, 50.0), TeacherSpec("c", "music", 0, 25.0)))
    with pytest.raises(UserError, match=r"ObjectiveConfig\.teachers\[1\]\.domain='music': must be one of "
                                        r"\['speech', 'audio'\]"):
        check(config)
    config.teachers[1].domain = "audio"
    with pytest.raises(UserError, match=r"ObjectiveConfig\.teachers\[1\]\.num_codebooks=0 is out of range: "
                                        r"must be >= 1"):
        check(config)
    config.teachers[1].num_codebooks = 8
    config.alpha = True
    with pytest.raises(UserError, match=r"ObjectiveConfig\.alpha: expected float, got True"):
        check(config)
    config.alpha = 1  # an int is a float
    check(config)


def test_validate_runs_after_the_fields_are_checked():
    # EncoderConfig.validate divides by num_heads: the bound must be reported first
    with pytest.raises(UserError, match=r"EncoderConfig\.num_heads=0 is out of range: must be >= 1"):
        check(EncoderConfig(num_heads=0))
    with pytest.raises(UserError, match="not divisible"):
        check(EncoderConfig(num_heads=5))
