"""Learning-rate schedules as pure functions of (step, epoch): nothing to save but the step.

    lr(step) = peak * warmup(step) * decay(step, epoch)
    warmup:   warmup_start + (1 - warmup_start) * (step + 1) / warmup_steps, for step < warmup_steps; else 1
          (the first update already gets a non-zero lr)
    cosine:   min_lr_ratio + (1 - min_lr_ratio) * (1 + cos(pi * p)) / 2, p = progress after warm-up in [0, 1]
    eden:     ((step^2 + S^2) / S^2)^-0.25 * ((epoch^2 + E^2) / E^2)^-0.25   (icefall's Eden, S =
              eden_lr_steps, E = eden_lr_epochs; epoch = completed epochs)
    constant: 1
`step` counts optimizer steps already taken (0 for the first update).
"""
from __future__ import annotations

import math

from spear_fast.errors import UserError
from spear_fast.train.config import ScheduleConfig


def lr_factor(config: ScheduleConfig, step: int, epoch: int = 0) -> float:
    """Multiplier of the peak learning rate for optimizer step `step` (0-based)."""
    if step < config.warmup_steps:
        warmup = config.warmup_start + (1.0 - config.warmup_start) * (step + 1) / config.warmup_steps
    else:
        warmup = 1.0
    if config.kind == "constant":
        decay = 1.0
    elif config.kind == "cosine":
        span = max(config.total_steps - config.warmup_steps, 1)
        progress = min(max(step - config.warmup_steps, 0) / span, 1.0)
        decay = config.min_lr_ratio + (1.0 - config.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    elif config.kind == "eden":
        s, e = config.eden_lr_steps, config.eden_lr_epochs
        decay = ((step**2 + s**2) / s**2) ** -0.25 * ((epoch**2 + e**2) / e**2) ** -0.25
    else:
        raise UserError(f"schedule.kind must be cosine, eden or constant, got {config.kind!r}")
    return warmup * decay
