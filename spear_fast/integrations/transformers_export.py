"""What makes a spear-fast export folder a transformers remote-code model, as the SPEAR authors ship theirs.

`save_pretrained` (and so `spear export`) writes, beside model.safetensors:
    configuration_spear_fast.py, modeling_spear_fast.py   copied verbatim from transformers_remote/
    config.json                                           the export record plus transformers_fields()
so that, with only torch, numpy and transformers installed,
    model = AutoModel.from_pretrained(folder, trust_remote_code=True)
    out = model(audio, audio_lens)      # out["encoder_out"], out["encoder_out_lens"], out["hidden_states"]
gives the same frames as SpearModel.from_pretrained(folder).extract(audio, audio_lens).
"""
from __future__ import annotations

import os
import shutil
from importlib import resources
from pathlib import Path

REMOTE_PACKAGE = "spear_fast.integrations.transformers_remote"
CONFIG_FILE = "configuration_spear_fast.py"
MODELING_FILE = "modeling_spear_fast.py"
REMOTE_CODE_FILES = (CONFIG_FILE, MODELING_FILE)
MODEL_TYPE = "spear_fast"


def transformers_fields(min_samples: int) -> dict:
    """The config.json keys transformers reads: model type, class names, where the code lives."""
    return {
        "model_type": MODEL_TYPE,
        "architectures": ["SpearFastModel"],
        "auto_map": {"AutoConfig": f"{CONFIG_FILE[:-3]}.SpearFastConfig",
                     "AutoModel": f"{MODELING_FILE[:-3]}.SpearFastModel"},
        "min_samples": int(min_samples),
    }


def write_remote_code(directory: str | os.PathLike) -> list[Path]:
    """Copy the remote-code files into `directory` (each atomically); returns their paths."""
    directory = Path(directory)
    written = []
    source = resources.files(REMOTE_PACKAGE)
    for name in REMOTE_CODE_FILES:
        tmp = directory / f".{name}.tmp"
        with resources.as_file(source / name) as path:
            shutil.copyfile(path, tmp)
        os.replace(tmp, directory / name)
        written.append(directory / name)
    return written
