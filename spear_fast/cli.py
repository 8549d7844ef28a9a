"""The `spear` command: one sub-command per pipeline step.

Each module listed in COMMAND_MODULES defines `add_parser(subparsers)`, which adds its sub-command(s)
and sets `func=<callable taking the parsed args>` as the parser default. Modules are imported only
to build the parser, so a step's heavy imports stay inside its own `func`.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES: list[str] = [
    "spear_fast.mvq.commands",  # fit-mvq, mvq-eval
    "spear_fast.demo.commands",  # prepare-demo
    "spear_fast.train.commands",  # export
    "spear_fast.data.commands",  # manifest, verify-tokens
    "spear_fast.pipeline.commands",  # collect-frames, tokenize
    "spear_fast.eval.commands",  # extract, probe, probe-table, make-task
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spear", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    result = args.func(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
