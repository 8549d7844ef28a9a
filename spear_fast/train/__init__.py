"""SPEAR pre-training: config (config.py), data set-up and checks (data.py), augmentation (augment.py),
the loop (loop.py), checkpoints (checkpoint.py), schedules (schedule.py), metrics and logs (metrics.py),
export (export.py, `spear export`), a synthetic corpus for tests and timing (synthetic.py).
Entry point: `python train.py` (main.py)."""
