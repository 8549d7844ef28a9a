"""The command-line entry points: `spear` (one sub-command per pipeline step) and `python train.py`.

Each module listed in COMMAND_MODULES defines `add_parser(subparsers)`, which adds its sub-command(s)
and sets `func=<callable taking the parsed args>` as the parser default. Modules are imported only
to build the parser, so a step's heavy imports stay inside its own `func`.

Both entry points turn a UserError (bad input: spear_fast.errors) into one line on stderr and exit
status 2; any other exception is a bug or a failure of the machinery and keeps its traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from spear_fast.errors import EXIT_USER_ERROR, UserError

COMMAND_MODULES: list[str] = [
    "spear_fast.mvq.commands",  # fit-mvq, mvq-eval
    "spear_fast.demo.commands",  # prepare-demo
    "spear_fast.model.commands",  # export
    "spear_fast.data.commands",  # manifest, verify-tokens
    "spear_fast.pipeline.commands",  # collect-frames, tokenize
    "spear_fast.eval.commands",  # extract, probe, probe-table, report-table, make-task
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
    try:
        result = args.func(args)
    except UserError as error:
        print(f"spear {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    return int(result or 0)


def run_train(argv: list[str] | None = None):
    """`python train.py ARGS`: the embedded demo without --manifest/--tokens (spear_fast/demo/run.py),
    else training on the given data (spear_fast/train/main.py). Raises UserError on bad input;
    returns the TrainResult (None for --print-config)."""
    from spear_fast.train.main import build_arg_parser, run_args, wants_demo

    args = build_arg_parser().parse_args(argv)
    if wants_demo(args):
        from spear_fast.demo.run import run_demo

        return run_demo(args)
    return run_args(args)


def train_main(argv: list[str] | None = None) -> int:
    """Exit status: 0 when the run finished, 2 on bad input, 128 + N when signal N stopped it (after it
    saved its checkpoint), the shell's convention for a process ended by a signal."""
    try:
        result = run_train(argv)
    except UserError as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    if result is not None and result.stop_signal is not None:
        return 128 + result.stop_signal
    return 0


if __name__ == "__main__":
    sys.exit(main())
