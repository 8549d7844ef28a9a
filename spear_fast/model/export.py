"""Export a training checkpoint as a stand-alone student: OUT_DIR/config.json + model.safetensors.

The EMA weights are exported when the checkpoint has them (unless use_ema=False); the heads, the
optimizer and everything else training-only stay behind. Load with SpearModel.from_pretrained.
"""
from __future__ import annotations

import os
from pathlib import Path

from spear_fast.checkpoint import load_checkpoint
from spear_fast.config import config_from_dict
from spear_fast.model.config import StudentConfig
from spear_fast.model.pretrained import save_pretrained


def export_checkpoint(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, *, use_ema: bool = True) -> Path:
    state = load_checkpoint(checkpoint)
    config = config_from_dict(StudentConfig, state["config"]["model"])
    weights = state["model"]
    ema = state.get("ema")
    used_ema = bool(use_ema and ema)
    if used_ema:
        # EMA holds the floating-point entries; anything else (none today) comes from the live model
        weights = {k: (ema[k].to(v.dtype) if k in ema else v) for k, v in weights.items()}
    source = {"checkpoint": str(Path(checkpoint).resolve()), "step": int(state["step"]), "ema": used_ema}
    return save_pretrained(weights, config, out_dir, source=source)
