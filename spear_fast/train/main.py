"""`python train.py --manifest M --tokens ...`: resolve the config, check the data, train (loop.py).

    python train.py --preset large --manifest m.jsonl --tokens speech=S --tokens audio=A --out runs/large
    torchrun --nproc_per_node 8 train.py --preset base ... --resume
    python train.py --preset base --set optim.lr=3e-4 --set model.encoder.num_layers=6 --print-config

This module launches training on given data. `python train.py` without --manifest/--tokens runs the
embedded demo instead (spear_fast/demo/run.py), which builds its data and then calls `launch` here;
spear_fast.cli.train_main chooses between the two.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from spear_fast.config import apply_overrides, check, describe
from spear_fast.errors import UserError
from spear_fast.model.config import param_count


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="train.py", description="SPEAR pre-training (see spear_fast/train/loop.py)")
    parser.add_argument("--preset", default="tiny", help="training preset: tiny (the demo), tiny-long (the demo's longer run), base, large, "
                             "xlarge (default tiny)")
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
                             "(default $SPEAR_DEMO_DIR or ~/.cache/spear-fast/demo-data, -<H>h for other corpus sizes)")
    parser.add_argument("--demo-size", choices=["full", "tiny"], default="full",
                        help="demo corpus size: full (the preset's: 0.5 h for tiny, 4 h for tiny-long) or tiny "
                             "(a minute of audio and few probe clips: a quick check that the whole chain runs, as CI "
                             "does)")
    parser.add_argument("--demo-hours", type=float, default=None,
                        help="hours of pre-training audio in the demo corpus (default: the preset's, README "
                             "\"Longer runs\"); one demo directory holds one corpus size")
    parser.add_argument("--no-report", action="store_true",
                        help="demo: stop after pre-training (skip the probes, the table and report.json/png)")
    return parser


def wants_demo(args: argparse.Namespace) -> bool:
    """No data flags (and not just --print-config): the embedded demo builds its own data."""
    return args.manifest is None and not args.tokens and not args.print_config


def check_args(args: argparse.Namespace) -> None:
    """Checks of the flags themselves, before any data is touched; fills in the default --out:
    runs/<preset>, and for the demo's single-teacher ablations (no data flags, --teachers speech|audio)
    runs/<preset>-<teachers>, so they do not resume the default run."""
    if args.max_steps is not None and args.max_steps < 1:
        raise UserError(f"--max-steps must be >= 1, got {args.max_steps}")
    if args.demo_hours is not None and args.demo_hours <= 0:
        raise UserError(f"--demo-hours must be > 0, got {args.demo_hours}")
    if args.out is None:
        no_data = args.manifest is None and not args.tokens
        suffix = f"-{args.teachers}" if no_data and args.teachers not in (None, "both") else ""
        args.out = str(Path("runs") / (args.preset + suffix))


def resolve_config(args: argparse.Namespace):
    """The run's TrainConfig: the checkpoint's when resuming one, else the preset's; then --teachers/--set."""
    from spear_fast import checkpoint as ckpt
    from spear_fast.train.config import train_config, train_config_from_dict

    overrides = list(args.overrides)
    if args.teachers is not None:
        overrides.insert(0, f"loss.teachers={args.teachers}")
    state = ckpt.load_newest_checkpoint(Path(args.out))[1] if args.resume and args.out else None
    if state is not None:
        config = train_config_from_dict(state["config"])
    else:
        config = train_config(args.preset)
    config = apply_overrides(config, overrides)
    return config


def print_config(config) -> None:
    print("\n".join(describe(config)))
    count = param_count(config.model)
    print(f"# student parameters: {count:,} ({count / 1e6:.1f} M; heads add d x N x 256 per teacher)")


def parse_token_dirs(items: list[str]) -> dict[str, Path]:
    dirs = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--tokens {item!r}: expected TEACHER=DIR (speech=DIR or audio=DIR)")
        name, directory = item.split("=", 1)
        if name in dirs:
            raise UserError(f"--tokens: teacher {name!r} given twice")
        dirs[name] = Path(directory)
    return dirs


def launch(args: argparse.Namespace, config, manifest_path: Path, token_dirs: dict[str, Path]):
    """Check the data against the config, then train into args.out; returns the TrainResult."""
    import torch.distributed as dist

    from spear_fast.checkpoint import latest_checkpoint
    from spear_fast.data.manifest import read_manifest
    from spear_fast.train.data import open_token_stores, validate_corpus
    from spear_fast.train.loop import Trainer, init_distributed

    # everything checkable is checked before the model is built
    stores = open_token_stores(token_dirs, config)
    entries, skipped = validate_corpus(read_manifest(manifest_path), stores, config)
    check(config)
    existing = latest_checkpoint(Path(args.out))
    if existing is not None and not args.resume:
        raise UserError(f"{args.out} already holds checkpoints (newest {existing.name}); pass --resume to continue "
                        f"that run or choose another --out")
    created = init_distributed(config)
    try:
        trainer = Trainer(config, entries, stores, Path(args.out), resume=args.resume, max_steps=args.max_steps,
                          skipped=skipped)
        return trainer.fit()
    finally:
        if created:
            dist.destroy_process_group()


def run(argv: list[str] | None = None):
    """Parse, validate and train on --manifest/--tokens (or only --print-config); raises ValueError on
    bad input. Returns the TrainResult (None for --print-config)."""
    args = build_arg_parser().parse_args(argv)
    return run_args(args)


def run_args(args: argparse.Namespace):
    check_args(args)
    config = resolve_config(args)
    if args.print_config:
        print_config(config)
        return None
    token_dirs = parse_token_dirs(args.tokens)
    if args.manifest is None or not token_dirs:
        raise UserError("give both --manifest and --tokens (or neither, for the demo corpus)")
    return launch(args, config, Path(args.manifest), token_dirs)
