"""SPEAR pre-training: config (config.py), data set-up and checks (data.py), augmentation (augment.py),
the loop (loop.py), schedules (schedule.py), metrics and logs (metrics.py), the ScaledAdam optimiser
(scaled_adam.py), a synthetic corpus for tests and timing (synthetic.py). Entry point: `python train.py`
(main.py launches training on given data; the embedded demo is spear_fast/demo/run.py). Checkpoint
files are spear_fast/checkpoint.py, their export spear_fast/model/export.py."""
