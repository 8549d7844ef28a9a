"""Figures: a run's log.jsonl read back and drawn as loss curves, and PNGs written atomically.

The training loop writes RUN_DIR/loss.png with `plot_losses`; the demo report draws the same curves
beside its probe scores (`draw_losses` on its own axis). matplotlib is optional: without it the
callers get a note instead of a figure.
"""
from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

SMOOTHING_WINDOW = 25  # logged steps in the running mean drawn over each raw (batch-to-batch noisy) curve


def read_log(path: Path) -> list[dict[str, Any]]:
    """The records of a run's log.jsonl, one dict per logged step."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def draw_losses(axis, records: list[dict[str, Any]]) -> None:
    """The total and per-teacher loss curves of a run's log records on a matplotlib axis: each step
    faint, and its running mean over SMOOTHING_WINDOW steps solid."""
    keys = ["loss"] + sorted({k for r in records for k in r if k.startswith("loss_")})
    for key in keys:
        points = [(r["step"], r[key]) for r in records if key in r and r[key] is not None and math.isfinite(r[key])]
        if points:
            steps, values = zip(*points)
            (line,) = axis.plot(steps, values, alpha=0.25, linewidth=0.8)
            window = min(SMOOTHING_WINDOW, len(values))
            sums = [0.0, *itertools.accumulate(values)]
            smooth = [(sums[i + 1] - sums[max(0, i + 1 - window)]) / min(i + 1, window) for i in range(len(values))]
            axis.plot(steps, smooth, color=line.get_color(), label=f"{key} (mean of {window} steps)")
    axis.set_xlabel("step")
    axis.set_ylabel("cross-entropy (nats per weighted frame)")
    axis.legend()
    axis.grid(alpha=0.3)


def save_figure(figure, out_path: Path) -> None:
    """Write a matplotlib figure as PNG atomically and close it."""
    from spear_fast.atomic import atomic_open

    with atomic_open(out_path, "wb") as stream:
        figure.savefig(stream, format="png", dpi=100)
    import matplotlib.pyplot as plt

    plt.close(figure)


def plot_losses(log_path: Path, out_path: Path) -> str | None:
    """PNG of the total and per-teacher loss curves; returns a note when matplotlib is missing."""
    plt = pyplot()
    if plt is None:
        return "loss plot skipped: matplotlib is not installed"
    records = read_log(log_path)
    if not records:
        return "loss plot skipped: empty log"
    figure, axis = plt.subplots(figsize=(8, 4.5))
    draw_losses(axis, records)
    figure.tight_layout()
    save_figure(figure, out_path)
    return None
