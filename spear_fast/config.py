"""Typed configs: dataclass fields documented once, checked by their declarations, set from the command line.

Every config of the package is a dataclass whose fields come from `field(default, doc, ge=..., lt=...)`:
the `doc` is what `describe(config)` prints, the bounds are what `check(config)` enforces along with
each field's type and `Literal` choices. A config's own `validate()` holds only the rules a single
field's declaration cannot state (cross-field rules, divisibility); `check` runs it after the fields,
innermost section first. Errors are `UserError`s naming the key and the rule.

    config = apply_overrides(base(), ["encoder.num_layers=6", "encoder.attention=sdpa"])
    check(config)  # what apply_overrides and config_from_dict already ran
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import operator
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal

from spear_fast.errors import UserError

_BOUNDS = {"ge": (operator.ge, ">="), "gt": (operator.gt, ">"), "le": (operator.le, "<="), "lt": (operator.lt, "<")}
_SCALARS = (int, float, bool, str)


def field(default: Any = dataclasses.MISSING, doc: str = "", *, ge: float | None = None, gt: float | None = None,
          le: float | None = None, lt: float | None = None) -> Any:
    """A dataclass field with its documentation and optional numeric bounds; without a default it is
    required. Mutable defaults (lists, dicts, dataclasses) are copied for each instance."""
    if not doc:
        raise TypeError("a config field needs its doc")
    metadata = {"doc": doc, "ge": ge, "gt": gt, "le": le, "lt": lt}
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_bounds(key: str, f: dataclasses.Field, value: Any) -> None:
    for name, (ok, symbol) in _BOUNDS.items():
        bound = f.metadata.get(name)
        if bound is not None and _is_number(value) and not ok(value, bound):
            raise UserError(f"{key}={value!r} is out of range: must be {symbol} {bound}")


def _check_value(key: str, f: dataclasses.Field, annotation: Any, value: Any) -> None:
    """One field's type (int, float, bool, str; an int is a float), Literal choices and bounds."""
    if annotation in _SCALARS:
        expected = (int, float) if annotation is float else annotation
        if not isinstance(value, expected) or (annotation is not bool and isinstance(value, bool)):
            raise UserError(f"{key}: expected {annotation.__name__}, got {value!r}")
    elif typing.get_origin(annotation) is Literal and value not in typing.get_args(annotation):
        raise UserError(f"{key}={value!r}: must be one of {list(typing.get_args(annotation))}")
    _check_bounds(key, f, value)


def check(config: Any, path: str | None = None) -> None:
    """Check a config tree: every field's type, choices and bounds, then the config's `validate()` (if
    it has one); sections (and tuples of them, e.g. teachers) are checked as they come. Messages name
    the key from `path` (default: the class name), e.g. StudentConfig.encoder.num_layers."""
    path = path or type(config).__name__
    hints = _hints(type(config))
    for f in dataclasses.fields(config):
        value, key = getattr(config, f.name), f"{path}.{f.name}"
        if dataclasses.is_dataclass(value):
            check(value, key)
        elif isinstance(value, tuple) and value and all(dataclasses.is_dataclass(item) for item in value):
            for i, item in enumerate(value):
                check(item, f"{key}[{i}]")
        else:
            _check_value(key, f, hints[f.name], value)
    if hasattr(config, "validate"):
        config.validate()


# ---------------------------------------------------------------------------------------------
# Overrides: "section.field=value" strings, typed by the dataclass annotations.

def _parse_value(text: str, annotation: Any, path: str) -> Any:
    """Convert the string `text` to the type `annotation` (int, float, bool, str, Literal, Optional,
    tuple[...]); UserError naming the field and the expected type otherwise."""
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
    annotation and range-checked; afterwards `check` runs on the whole copy, so cross-field rules see
    every override. Unknown fields, nested sections given a value, bad types and out-of-range values
    raise a UserError naming the override."""
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
        annotation = _hints(type(target))[leaf]
        if dataclasses.is_dataclass(annotation):
            raise UserError(f"override {override!r}: {path!r} is a section; set one of its fields "
                            f"({', '.join(f.name for f in dataclasses.fields(annotation))})")
        value = _parse_value(text, annotation, path)
        _check_bounds(path, fields[leaf], value)
        setattr(target, leaf, value)
    check(config)
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


# ---------------------------------------------------------------------------------------------
# Plain dicts (config.json, checkpoints, exported folders).

def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict of a config (for config.json / checkpoints)."""
    return dataclasses.asdict(config)


def config_from_dict(cls: type, data: Mapping[str, Any]) -> Any:
    """Rebuild dataclass `cls` from `config_to_dict` output and `check` it; unknown keys and wrongly
    typed values raise a UserError naming the key. Missing keys take their defaults."""
    config = _from_dict(cls, data, cls.__name__)
    check(config)
    return config


def _from_dict(cls: type, data: Mapping[str, Any], path: str) -> Any:
    if not isinstance(data, Mapping):
        raise UserError(f"{path}: expected a mapping, got {type(data).__name__}")
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - fields
    if unknown:
        raise UserError(f"{path}: unknown keys {sorted(unknown)}; known: {sorted(fields)}")
    hints = _hints(cls)
    values = {}
    for name, value in data.items():
        annotation = hints[name]
        item_types = typing.get_args(annotation) if typing.get_origin(annotation) is tuple else ()
        if dataclasses.is_dataclass(annotation):
            value = _from_dict(annotation, value, f"{path}.{name}")
        elif item_types and dataclasses.is_dataclass(item_types[0]):  # tuple[Spec, ...], e.g. teachers
            value = tuple(_from_dict(item_types[0], item, f"{path}.{name}[{i}]") for i, item in enumerate(value))
        elif annotation is float and _is_number(value):
            value = float(value)  # JSON may store a float as an int
        values[name] = value
    return cls(**values)
