"""Command-line errors: bad input gives one line on stderr and exit status 2 from every `spear`
sub-command and from train.py; a bug (any other exception) keeps its traceback."""
from __future__ import annotations

import pytest

from spear_fast import cli
from spear_fast.errors import UserError

BINARY = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8  # not UTF-8 (0x89 starts no character), not JSON, not audio


@pytest.fixture
def binary(tmp_path):
    path = tmp_path / "binary.jsonl"
    path.write_bytes(BINARY)
    return path


def bad_invocations(tmp, binary):
    """(sub-command, argv) pairs, each wrong in a way a user makes."""
    missing = tmp / "missing"
    return [
        ("fit-mvq", ["fit-mvq", "--frames", str(missing), "--out", str(tmp / "q.safetensors")]),
        ("mvq-eval", ["mvq-eval", "--quantizer", str(binary), "--frames", str(missing)]),
        ("prepare-demo", ["prepare-demo", "--out", str(tmp / "demo"), "--hours", "-1"]),
        ("export", ["export", str(missing / "ckpt-00000001.pt"), str(tmp / "exported")]),
        ("manifest", ["manifest", "--out", str(tmp / "m.jsonl")]),
        ("manifest", ["manifest", "--out", str(tmp / "m.jsonl"), "--dir", f"speech:{missing}"]),
        ("collect-frames", ["collect-frames", "--manifest", str(binary), "--teacher", "whisper-demo",
                            "--out", str(tmp / "frames"), "--no-progress"]),
        ("tokenize", ["tokenize", "--manifest", str(binary), "--teacher", "whisper-demo", "--quantizer",
                      str(missing / "q.safetensors"), "--out", str(tmp / "tokens"), "--no-progress"]),
        ("tokenize", ["tokenize", "--manifest", str(binary), "--teacher", "no-such-teacher", "--quantizer",
                      str(binary), "--out", str(tmp / "tokens"), "--shard", "3/2"]),
        ("extract", ["extract", "--model", "fbank", "--manifest", str(binary), "--out", str(tmp / "feats")]),
        ("extract", ["extract", "--model", str(missing / "model.pt"), "--manifest", str(binary),
                     "--out", str(tmp / "feats")]),
        ("probe", ["probe", "--model", "fbank", "--task", str(missing), "--out", str(tmp / "r.json")]),
        ("probe-table", ["probe-table", str(missing / "r.json")]),
        ("report-table", ["report-table", str(missing / "report.json")]),
        ("make-task", ["make-task", "--manifest", str(binary), "--out", str(tmp / "task")]),
    ]


def test_every_subcommand_has_a_bad_input_case(tmp_path, binary):
    parser = cli.build_parser()
    actions = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    covered = {name for name, _ in bad_invocations(tmp_path, binary)}
    # verify-tokens reports a store that fails verification as FAILED with status 1, its own contract
    assert set(actions[0].choices) - covered == {"verify-tokens"}


@pytest.mark.parametrize("index", range(15))
def test_user_errors_are_one_line_and_exit_2(index, tmp_path, binary, capsys):
    name, argv = bad_invocations(tmp_path, binary)[index]
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"spear {name}: error: "), captured.err
    assert "Traceback" not in captured.err + captured.out


def test_a_binary_manifest_is_named(tmp_path, binary, capsys):
    assert cli.main(["extract", "--model", "fbank", "--manifest", str(binary), "--out", str(tmp_path / "f")]) == 2
    err = capsys.readouterr().err
    assert str(binary) in err and "UTF-8" in err


def test_a_bug_in_a_subcommand_keeps_its_traceback(monkeypatch, tmp_path):
    import spear_fast.eval.commands as commands

    def broken(args):
        raise ValueError("an internal shape check failed")

    monkeypatch.setattr(commands, "run_probe_table", broken)
    with pytest.raises(ValueError, match="internal shape check"):
        cli.main(["probe-table", str(tmp_path / "r.json")])


def test_train_py_user_error_is_one_line_and_a_bug_keeps_its_traceback(monkeypatch, tmp_path, capsys):
    import spear_fast.train.main as train_main

    argv = ["--manifest", str(tmp_path / "m.jsonl"), "--tokens", f"speech={tmp_path}", "--out", str(tmp_path / "run")]
    assert cli.train_main(argv) == 2  # the manifest does not exist
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train.py: error: ")

    def broken(*args, **kwargs):
        raise ValueError("a bug deep in the training loop")

    monkeypatch.setattr(train_main, "launch", broken)
    with pytest.raises(ValueError, match="bug deep in the training loop"):
        cli.train_main(argv)

    def refused(*args, **kwargs):
        raise UserError("a clip lacks its tokens")

    monkeypatch.setattr(train_main, "launch", refused)
    assert cli.train_main(argv) == 2
    assert capsys.readouterr().err == "train.py: error: a clip lacks its tokens\n"
