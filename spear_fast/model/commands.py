"""`spear export CKPT OUT_DIR`: a training checkpoint -> config.json + model.safetensors."""
from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export", help="export a training checkpoint's student (EMA weights when present) for from_pretrained",
        description="Write OUT_DIR/config.json and OUT_DIR/model.safetensors from a train.py checkpoint; load them "
                    "with spear_fast.model.pretrained.SpearModel.from_pretrained(OUT_DIR).")
    parser.add_argument("checkpoint", help="RUN_DIR/ckpt-XXXXXXXX.pt")
    parser.add_argument("out_dir", help="output directory")
    parser.add_argument("--no-ema", action="store_true", help="export the live weights even if the checkpoint has EMA")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spear_fast.model.export import export_checkpoint

    out = export_checkpoint(args.checkpoint, args.out_dir, use_ema=not args.no_ema)
    print(f"exported {args.checkpoint} -> {out}")
    return 0
