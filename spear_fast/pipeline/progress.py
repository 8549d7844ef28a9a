"""The progress bar of a pass over audio: seconds of audio done, and audio-hours per wall-clock hour."""
from __future__ import annotations

import time
from typing import Any


class Throughput:
    """tqdm bar over seconds of audio, showing audio-hours per wall-clock hour."""

    def __init__(self, total_seconds: float, desc: str, progress: bool = True):
        from tqdm import tqdm

        self.bar = tqdm(total=round(total_seconds, 1), desc=desc, unit="s audio", disable=not progress,
                        dynamic_ncols=True, bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s audio [{elapsed}<{remaining}{postfix}]")
        self.started = time.perf_counter()
        self.done = 0.0

    def update(self, seconds: float, **postfix: Any) -> None:
        self.done += seconds
        self.bar.update(round(seconds, 1))
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        self.bar.set_postfix(audio_h_per_h=f"{self.done / elapsed:.1f}", **postfix, refresh=False)

    def close(self) -> None:
        self.bar.close()
