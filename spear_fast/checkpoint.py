"""Training checkpoints: atomic writes, keep-the-last-k, RNG state capture, safe loading.

A checkpoint `RUN_DIR/ckpt-{step:08d}.pt` is a dict of tensors and plain Python values only (the
config as a nested dict), saved with torch.save to a temporary file in the same directory and moved
into place with os.replace, so a crash never leaves a half-written checkpoint under the final name.
Loading uses torch.load(weights_only=True): no pickled objects are ever executed.

Keys: format, step, epoch, config (dict), model, objective, optimizer, scaler (or None),
scheduler ({"kind", "step"}), sampler (DurationBucketSampler state), ema (or None), rng, metrics.
"""
from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spear_fast.atomic import atomic_open
from spear_fast.errors import UserError

FORMAT = "spear-fast train checkpoint v1"
_NAME = re.compile(r"^ckpt-(\d{8})\.pt$")


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / f"ckpt-{step:08d}.pt"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoints of a run directory, oldest (lowest step) first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def checkpoint_step(path: Path) -> int:
    """The optimizer step a checkpoint file was saved at (from its name)."""
    match = _NAME.match(Path(path).name)
    if match is None:
        raise UserError(f"{path}: not a checkpoint name (ckpt-XXXXXXXX.pt)")
    return int(match.group(1))


def save_checkpoint(state: dict[str, Any], run_dir: Path, step: int, keep_last: int, keep_every: int = 0) -> Path:
    """Write `state` atomically as ckpt-{step}.pt, then delete all but the newest `keep_last`, except
    milestones: checkpoints whose step is a multiple of `keep_every` (> 0) are kept for good."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = checkpoint_path(run_dir, step)
    with atomic_open(path, "wb") as stream:
        torch.save({"format": FORMAT, **state}, stream)
    for old in list_checkpoints(run_dir)[:-keep_last]:
        if keep_every <= 0 or checkpoint_step(old) % keep_every:
            old.unlink()
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint written by save_checkpoint (weights_only: tensors and plain values only)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt file, or one holding arbitrary pickled objects
        raise UserError(f"checkpoint {path} cannot be loaded safely: {error}") from error
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise UserError(f"checkpoint {path}: not a spear-fast training checkpoint (format {found!r})")
    return state


def load_newest_checkpoint(run_dir: Path) -> tuple[Path | None, dict[str, Any] | None, list[str]]:
    """(path, state, skipped) of the newest checkpoint of a run that loads ((None, None, skipped) when
    none does). skipped: one "NAME (reason)" per newer checkpoint that could not be loaded (a run
    killed while the disk filled, a file damaged since), so a resume goes on from the last good state."""
    skipped = []
    for path in reversed(list_checkpoints(run_dir)):
        try:
            return path, load_checkpoint(path), skipped
        except UserError as error:
            skipped.append(f"{path.name} ({error})")
    return None, None, skipped


def capture_rng() -> dict[str, Any]:
    """torch (CPU and every CUDA device), python `random` and numpy global RNG states, as tensors and
    plain values (weights_only-loadable)."""
    version, py_state, gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": [version, list(py_state), gauss],
        "numpy": [np_kind, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_has_gauss),
                  float(np_gauss)],
    }


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(py_state), gauss))
    kind, keys, pos, has_gauss, gauss_value = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss_value))
