"""`spear prepare-demo`: build the offline demo corpus (see spear_fast/demo/corpus.py)."""
from __future__ import annotations

import argparse
import json


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prepare-demo", help="build the demo corpus (speech + audio, probe sets) from Debian packages",
        description="Build about --hours of 16 kHz mono audio (speech: espeak-ng, flite, hedgewars voices; "
                    "audio: fluidsynth renders, Hydrogen drums, Sonic Pi samples) plus labelled probe "
                    "sets, deterministically from --seed. Reruns skip finished clips.")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--hours", type=float, default=10.0, help="pre-training hours (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--tiny", action="store_true",
                        help="small fast variant for tests (0.05 h, few probe clips; implied by --hours <= 0.05)")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--cache-dir", default=None,
                        help="where .deb files are downloaded and unpacked "
                             "(default $SPEAR_DEMO_CACHE or ~/.cache/spear-fast)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .corpus import build_corpus
    from .plan import DemoConfig

    summary = build_corpus(DemoConfig(out=args.out, hours=args.hours, seed=args.seed, tiny=args.tiny,
                                      jobs=args.jobs, cache_dir=args.cache_dir))
    print(json.dumps(summary, indent=2))
    return 0
