"""Read the variables of a CTranslate2 model.bin into named float32 torch tensors.

The format is the one ctranslate2.specs.model_spec.ModelSpec._serialize writes (binary versions
4-6; all little-endian):
  uint32 version | string spec name | uint32 spec revision | uint32 variable count
  per variable: string name | uint8 rank | uint32 dims[rank] | uint8 dtype | uint32 byte count | bytes
  uint32 alias count | per alias: string alias | string target name
where a string is uint16 length (with the trailing NUL) + UTF-8 bytes + NUL, and dtype indexes
("float32", "int8", "int16", "int32", "float16", "bfloat16") (DataType in ctranslate2/types.h).
Int8/int16 quantised weights come with a `<name>_scale` variable (one scale per output row):
weight = quantised / scale, as ctranslate2's quantiser stores round(weight * scale).
"""
from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from spear_fast.errors import UserError

_DTYPES = (np.float32, np.int8, np.int16, np.int32, np.float16, None)  # None = bfloat16 (no numpy type)
_DTYPE_NAMES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")
SUPPORTED_VERSIONS = (4, 5, 6)


def _read_many(stream: BinaryIO, fmt: str, path: Path) -> tuple:
    size = struct.calcsize("<" + fmt)
    data = stream.read(size)
    if len(data) != size:
        raise UserError(f"{path}: truncated CTranslate2 model file (wanted {size} bytes at offset "
                        f"{stream.tell() - len(data)}, got {len(data)})")
    return struct.unpack("<" + fmt, data)


def _read(stream: BinaryIO, fmt: str, path: Path) -> int:
    return _read_many(stream, fmt, path)[0]


def _read_string(stream: BinaryIO, path: Path) -> str:
    length = _read(stream, "H", path)
    raw = stream.read(length)
    if len(raw) != length:
        raise UserError(f"{path}: truncated CTranslate2 model file inside a name")
    return raw.rstrip(b"\0").decode("utf-8")


def _to_tensor(raw: bytes, type_id: int, dims: tuple[int, ...], name: str, path: Path) -> torch.Tensor:
    if type_id >= len(_DTYPES):
        raise UserError(f"{path}: variable {name!r} has unknown dtype id {type_id}")
    if _DTYPES[type_id] is None:  # bfloat16: the high half of a float32
        halves = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16
        array = halves.view(np.float32)
    else:
        array = np.frombuffer(raw, dtype=_DTYPES[type_id])
    expected = int(np.prod(dims)) if dims else 1
    if array.size != expected:
        raise UserError(f"{path}: variable {name!r} holds {array.size} {_DTYPE_NAMES[type_id]} values, "
                        f"its shape {dims} needs {expected}")
    return torch.from_numpy(array.reshape(dims).copy())


def read_ct2_variables(model_bin: str | Path) -> tuple[str, dict[str, torch.Tensor]]:
    """model.bin -> (spec name, {variable name: tensor}); aliases resolve to their targets.
    Quantised weights are dequantised to float32 and their `_scale` entries dropped."""
    path = Path(model_bin)
    with open(path, "rb") as stream:
        version = _read(stream, "I", path)
        if version not in SUPPORTED_VERSIONS:
            raise UserError(f"{path}: CTranslate2 binary version {version} is not supported "
                            f"(supported: {SUPPORTED_VERSIONS})")
        spec_name = _read_string(stream, path)
        _read(stream, "I", path)  # spec revision
        variables: dict[str, torch.Tensor] = {}
        for _ in range(_read(stream, "I", path)):
            name = _read_string(stream, path)
            rank = _read(stream, "B", path)
            dims = _read_many(stream, "I" * rank, path)
            type_id = _read(stream, "B", path)
            num_bytes = _read(stream, "I", path)
            raw = stream.read(num_bytes)
            if len(raw) != num_bytes:
                raise UserError(f"{path}: truncated CTranslate2 model file in variable {name!r}")
            variables[name] = _to_tensor(raw, type_id, dims, name, path)
        for _ in range(_read(stream, "I", path)):
            alias, target = _read_string(stream, path), _read_string(stream, path)
            if target not in variables:
                raise UserError(f"{path}: alias {alias!r} points at missing variable {target!r}")
            variables[alias] = variables[target]
    for name in [n for n in variables if n + "_scale" in variables]:
        quantised = variables[name]
        if quantised.is_floating_point():
            continue
        scale = variables.pop(name + "_scale").float()  # (rows,) or a scalar
        scale = scale.reshape(-1, *([1] * (quantised.dim() - 1))) if scale.dim() else scale
        variables[name] = quantised.float() / scale
    floats = {name: t.float() if t.is_floating_point() else t for name, t in variables.items()}
    return spec_name, floats
