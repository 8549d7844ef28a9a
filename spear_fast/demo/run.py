"""The embedded demo end to end, what `python train.py` does without --manifest/--tokens:

    demo corpus -> data chain (teacher frames, quantisers, token stores; spear_fast.pipeline.demo)
    -> pre-training in runs/<preset>[-<teachers>] (spear_fast.train.main.launch)
    -> probes of the student, both teachers, fbank and a random-init student, with a results table,
       report.json and report.png (spear_fast.eval.demo_report)

A rerun reuses every finished stage: the data chain skips what is complete, and the run resumes from
its newest checkpoint (or only re-reports when it is finished).
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from spear_fast.checkpoint import latest_checkpoint
from spear_fast.errors import UserError
from spear_fast.train.main import check_args, launch, resolve_config


# The recipes the demo's corpus and CPU budget are sized for, with the hours of pre-training audio each
# reads: the default (tiny, <= 20 min on 2 cores) and its longer run (tiny-long, the same student for
# 3000 steps, <= 90 min). 3000 steps of 30 s batches are 25 h of audio: on 0.5 h (50 epochs) the
# student memorises its speech targets (0.03 nats by step 2700) and the content probes stall (58.5 %
# at 3000 steps against 58.3 at 2000); on 4 h (6 epochs) it scores 62.6 (README, "Longer runs").
DEMO_HOURS = {"tiny": 0.5, "tiny-long": 4.0}
DEMO_PRESETS = tuple(DEMO_HOURS)


def demo_hours(args: argparse.Namespace) -> float:
    """Hours of pre-training audio in the demo corpus: --demo-hours, else the preset's."""
    return args.demo_hours if args.demo_hours is not None else DEMO_HOURS[args.preset]


def demo_work_dir(args: argparse.Namespace) -> Path:
    """--demo-dir, else $SPEAR_DEMO_DIR, else a cache directory per corpus size."""
    if args.demo_size == "tiny":
        name = "demo-data-tiny"
    else:
        hours = demo_hours(args)
        name = "demo-data" if hours == DEMO_HOURS["tiny"] else f"demo-data-{hours:g}h"
    return Path(args.demo_dir or os.environ.get("SPEAR_DEMO_DIR") or Path.home() / ".cache/spear-fast" / name)


def demo_data(args: argparse.Namespace):
    """The embedded demo corpus (built on first use by spear_fast.pipeline.demo): a DemoData."""
    try:
        from spear_fast.demo.plan import TINY_HOURS
        from spear_fast.pipeline.demo import DemoDataConfig, prepare_demo_data
    except ImportError as error:
        raise UserError(f"no --manifest/--tokens given and the demo pipeline is unavailable ({error}); pass "
                        f"--manifest M --tokens speech=DIR [--tokens audio=DIR]") from error
    if args.demo_size == "tiny":
        if args.demo_hours is not None:
            raise UserError("--demo-hours sizes the full demo corpus; --demo-size tiny has its own fixed size")
        return prepare_demo_data(demo_work_dir(args), tiny=True)
    hours = demo_hours(args)
    if hours <= TINY_HOURS:  # the corpus builder would switch to its test variant, with other probe sets
        raise UserError(f"--demo-hours {hours} is at or below the tiny corpus's {TINY_HOURS} h; use "
                        f"--demo-size tiny for a quick check")
    return prepare_demo_data(demo_work_dir(args), config=DemoDataConfig(hours=hours))


def run_demo(args: argparse.Namespace):
    """Data chain, pre-training, then (unless --no-report) the report; raises ValueError on bad input.
    Returns the TrainResult. A preset above the demo's stops with one line: its schedule (hundreds of
    thousands of steps, minutes each on a CPU) means nothing on the demo's half hour of audio."""
    check_args(args)
    if args.preset not in DEMO_PRESETS:
        raise UserError(f"--preset {args.preset} needs real data: pass --manifest M --tokens speech=DIR "
                        f"[--tokens audio=DIR] (see the README's \"Real scale\"); without them train.py runs the "
                        f"embedded demo, sized for --preset {' or '.join(DEMO_PRESETS)}")
    if latest_checkpoint(Path(args.out)) is not None:
        args.resume = True  # the demo reuses finished stages: continue (or just re-report) its run
    config = resolve_config(args)
    started = time.perf_counter()
    demo = demo_data(args)
    data_seconds = time.perf_counter() - started
    result = launch(args, config, Path(demo.manifest_path), {k: Path(d) for k, d in demo.token_dirs.items()})
    if not args.no_report and not result.stopped_by_signal and result.is_main:
        report_demo(args, config, demo, result, {"data": data_seconds,
                                                 "train": time.perf_counter() - started - data_seconds})
    return result


def report_demo(args: argparse.Namespace, config, demo, result, stage_seconds: dict[str, float]) -> dict:
    """The demo's last stage: probe the student, both teachers and the baselines; table + report."""
    from spear_fast.eval.demo_report import DemoReportInputs, demo_report

    if result.checkpoint is None:  # fit() saves at its last step and reports a resumed run's checkpoint
        raise UserError(f"demo report: {result.run_dir} holds no checkpoint to probe")
    return demo_report(DemoReportInputs(
        run_dir=result.run_dir, checkpoint=result.checkpoint, student_config=config.model,
        teachers_used=config.loss.teachers, teacher_specs=dict(demo.teachers), probes_dir=Path(demo.probes_dir),
        cache_dir=demo_work_dir(args) / "probe-features",
        stage_seconds={k: round(v, 1) for k, v in stage_seconds.items()}, keep_every=config.checkpoint.keep_every,
        progress=config.logging.progress))
