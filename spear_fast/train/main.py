"""`python train.py`: resolve the config, check the data, train (see loop.py). torchrun-ready.

    python train.py --preset tiny                                   # the embedded demo, end to end
    python train.py --preset tiny --teachers speech                 # its single-teacher ablation
    python train.py --preset large --manifest m.jsonl --tokens speech=S --tokens audio=A --out runs/large
    torchrun --nproc_per_node 8 train.py --preset base ... --resume
    python train.py --preset base --set optim.lr=3e-4 --set model.encoder.num_layers=6 --print-config

Without --manifest/--tokens it runs the embedded demo: the demo data chain (spear_fast.pipeline.demo),
pre-training in runs/<preset>[-<teachers>], then the probes of the student, both teachers, fbank and a
random-init student with a results table, report.json and report.png (spear_fast.eval.demo_report).
A rerun reuses every finished stage (it resumes the run when it holds a checkpoint).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from spear_fast.model.config import apply_overrides, describe, param_count


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="train.py", description="SPEAR pre-training (see spear_fast/train/loop.py)")
    parser.add_argument("--preset", default="tiny", help="student preset: tiny, base, large, xlarge (default tiny)")
    parser.add_argument("--manifest", default=None, help="JSON-lines manifest of the pre-training clips")
    parser.add_argument("--tokens", action="append", default=[], metavar="TEACHER=DIR",
                        help="token store of a teacher: speech=DIR and/or audio=DIR (repeatable)")
    parser.add_argument("--teachers", choices=["speech", "audio", "both"], default=None,
                        help="whose losses are used (sets loss.teachers; default both)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", dest="overrides",
                        help="override a config field (repeatable); see --print-config for the fields")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest checkpoint in --out (starts fresh when there is none)")
    parser.add_argument("--out", default=None, help="run directory (default runs/<preset>)")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="stop after this many optimizer steps in total (the schedule keeps schedule.total_steps)")
    parser.add_argument("--demo-dir", default=None,
                        help="where the demo corpus and its tokens live/are built when no data flags are given "
                             "(default $SPEAR_DEMO_DIR or ~/.cache/spear-fast/demo-data)")
    parser.add_argument("--demo-size", choices=["full", "tiny"], default="full",
                        help="demo corpus size: full (the embedded default, ~0.5 h) or tiny (a minute of audio and "
                             "few probe clips: a quick check that the whole chain runs, as CI does)")
    parser.add_argument("--no-report", action="store_true",
                        help="demo: stop after pre-training (skip the probes, the table and report.json/png)")
    return parser


def resolve_config(args: argparse.Namespace):
    """The run's TrainConfig: the checkpoint's when resuming one, else the preset's; then --teachers/--set."""
    from spear_fast.train import checkpoint as ckpt
    from spear_fast.train.config import train_config, train_config_from_dict

    overrides = list(args.overrides)
    if args.teachers is not None:
        overrides.insert(0, f"loss.teachers={args.teachers}")
    latest = ckpt.latest_checkpoint(Path(args.out)) if args.resume and args.out else None
    if latest is not None:
        config = train_config_from_dict(ckpt.load_checkpoint(latest)["config"])
    else:
        config = train_config(args.preset)
    config = apply_overrides(config, overrides)
    return config


def parse_token_dirs(items: list[str]) -> dict[str, Path]:
    dirs = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--tokens {item!r}: expected TEACHER=DIR (speech=DIR or audio=DIR)")
        name, directory = item.split("=", 1)
        if name in dirs:
            raise ValueError(f"--tokens: teacher {name!r} given twice")
        dirs[name] = Path(directory)
    return dirs


def demo_work_dir(args: argparse.Namespace) -> Path:
    default = Path.home() / ".cache/spear-fast" / ("demo-data" if args.demo_size == "full" else "demo-data-tiny")
    return Path(args.demo_dir or os.environ.get("SPEAR_DEMO_DIR") or default)


def demo_data(args: argparse.Namespace):
    """The embedded demo corpus (built on first use by spear_fast.pipeline.demo): a DemoData."""
    try:
        from spear_fast.pipeline.demo import prepare_demo_data
    except ImportError as error:
        raise ValueError(f"no --manifest/--tokens given and the demo pipeline is unavailable ({error}); pass "
                         f"--manifest M --tokens speech=DIR [--tokens audio=DIR]") from error
    return prepare_demo_data(demo_work_dir(args), tiny=args.demo_size == "tiny")


def run(argv: list[str] | None = None):
    """Parse, validate and train; raises ValueError on bad input (main() prints it)."""
    args = build_arg_parser().parse_args(argv)
    demo_mode = args.manifest is None and not args.tokens
    if args.out is None:  # the demo's ablation runs (--teachers speech|audio) get their own directories
        suffix = f"-{args.teachers}" if demo_mode and args.teachers not in (None, "both") else ""
        args.out = str(Path("runs") / (args.preset + suffix))
    if args.max_steps is not None and args.max_steps < 1:
        raise ValueError(f"--max-steps must be >= 1, got {args.max_steps}")
    from spear_fast.train.checkpoint import latest_checkpoint

    if demo_mode and not args.print_config and latest_checkpoint(Path(args.out)) is not None:
        args.resume = True  # the demo reuses finished stages: continue (or just re-report) its run
    config = resolve_config(args)
    if args.print_config:
        print("\n".join(describe(config)))
        count = param_count(config.model)
        print(f"# student parameters: {count:,} ({count / 1e6:.1f} M; heads add d x N x 256 per teacher)")
        return None

    import torch.distributed as dist

    from spear_fast.data.manifest import read_manifest
    from spear_fast.train.data import open_token_stores, validate_corpus
    from spear_fast.train.loop import Trainer, init_distributed

    started = time.perf_counter()
    token_dirs = parse_token_dirs(args.tokens)
    demo = None
    if demo_mode:
        demo = demo_data(args)
        manifest_path, token_dirs = Path(demo.manifest_path), {k: Path(d) for k, d in demo.token_dirs.items()}
    elif args.manifest is None or not token_dirs:
        raise ValueError("give both --manifest and --tokens (or neither, for the demo corpus)")
    else:
        manifest_path = Path(args.manifest)
    # everything checkable is checked before the model is built
    stores = open_token_stores(token_dirs, config)
    entries, skipped = validate_corpus(read_manifest(manifest_path), stores, config)
    config.validate()
    existing = latest_checkpoint(Path(args.out))
    if existing is not None and not args.resume:
        raise ValueError(f"{args.out} already holds checkpoints (newest {existing.name}); pass --resume to continue "
                         f"that run or choose another --out")
    created = init_distributed(config)
    data_seconds = time.perf_counter() - started
    try:
        trainer = Trainer(config, entries, stores, Path(args.out), resume=args.resume, max_steps=args.max_steps,
                          skipped=skipped)
        result = trainer.fit()
    finally:
        if created:
            dist.destroy_process_group()
    if demo is not None and not args.no_report and not result.stopped_by_signal and trainer.is_main:
        report_demo(args, config, demo, result, {"data": data_seconds,
                                                 "train": time.perf_counter() - started - data_seconds})
    return result


def report_demo(args: argparse.Namespace, config, demo, result, stage_seconds: dict[str, float]) -> dict:
    """The demo's last stage: probe the student, both teachers and the baselines; table + report."""
    from spear_fast.eval.demo_report import DemoReportInputs, demo_report

    if result.checkpoint is None:  # fit() saves at its last step and reports a resumed run's checkpoint
        raise ValueError(f"demo report: {result.run_dir} holds no checkpoint to probe")
    return demo_report(DemoReportInputs(
        run_dir=result.run_dir, checkpoint=result.checkpoint, student_config=config.model,
        teachers_used=config.loss.teachers, teacher_specs=dict(demo.teachers), probes_dir=Path(demo.probes_dir),
        cache_dir=demo_work_dir(args) / "probe-features",
        stage_seconds={k: round(v, 1) for k, v in stage_seconds.items()}, progress=config.logging.progress))


def main(argv: list[str] | None = None) -> int:
    try:
        run(argv)
    except ValueError as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        return 2
    return 0
