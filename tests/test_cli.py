"""The `spear` command: every listed module registers its sub-commands, and help works."""
import subprocess
import sys

from spear_fast.cli import COMMAND_MODULES, build_parser


def subcommands() -> set[str]:
    parser = build_parser()
    actions = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    return set(actions[0].choices)


def test_every_pipeline_step_is_a_subcommand():
    expected = {"fit-mvq", "mvq-eval", "prepare-demo", "export", "manifest", "verify-tokens", "collect-frames", "tokenize"}
    missing = expected - subcommands()
    assert not missing, f"missing sub-commands {sorted(missing)} (modules: {COMMAND_MODULES})"


def test_spear_help_runs_as_a_program():
    result = subprocess.run([sys.executable, "-m", "spear_fast.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for name in ("fit-mvq", "prepare-demo", "tokenize"):
        assert name in result.stdout
