"""Training runs on a synthetic corpus: the loss falls, resume repeats the uninterrupted run exactly,
SIGTERM saves a checkpoint that resumes, keep-last-k holds during a run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from spear_fast.checkpoint import list_checkpoints, load_checkpoint
from spear_fast.train.main import run
from spear_fast.plot import read_log
from spear_fast.train.synthetic import fresh_seed, train_argv, write_synthetic_corpus

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    seed = fresh_seed()
    return write_synthetic_corpus(tmp_path_factory.mktemp("corpus"), num_clips=12, seed=seed)


def test_loss_goes_down(corpus, tmp_path):
    argv = train_argv(corpus, tmp_path / "run", "--max-steps", "15",
                      overrides=["mixing.token_mix_prob=0", "checkpoint.every_steps=1000", "logging.plot=true"])
    result = run(argv)
    assert result.step == 15
    records = read_log(tmp_path / "run" / "log.jsonl")
    assert [r["step"] for r in records] == list(range(1, 16))
    losses = [r["loss"] for r in records]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    # random init predicts ~uniform tokens: ln 256 = 5.55 nats; the tokens are learnable from the fbank
    assert abs(first - torch.log(torch.tensor(256.0)).item()) < 0.6
    assert last < first - 0.5, (first, last)
    for r in records:
        assert 0.2 < r["masked_fraction"] < 0.8 and r["audio_seconds"] > 0 and r["audio_per_second"] > 0
        assert r["lr"] > 0
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000  # matplotlib plot of the curves
    assert list_checkpoints(tmp_path / "run")[-1].name == "ckpt-00000015.pt"  # saved at the end


def test_milestones_are_saved_and_kept_between_regular_saves(corpus, tmp_path):
    argv = train_argv(corpus, tmp_path / "run", "--max-steps", "7",
                      overrides=["checkpoint.every_steps=1000", "checkpoint.keep_every=3", "checkpoint.keep_last=1"])
    assert run(argv).step == 7
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == [
        "ckpt-00000003.pt", "ckpt-00000006.pt", "ckpt-00000007.pt"]  # the milestones, then the final save

def _state(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def test_resume_repeats_the_uninterrupted_run(corpus, tmp_path):
    # mixing, noise, EMA, a DataLoader worker and an epoch boundary: 12 clips of 0.6-1.2 s (<= 14.4 s) in
    # batches of <= 6 s padded make at most ~5 batches per epoch (3 full ones plus a partial one per length
    # bucket) whatever the drawn lengths, so 6 steps cross one
    # (with 3 s batches some corpora needed 7)
    overrides = ["mixing.token_mix_prob=0.5", "mixing.noise_prob=0.3", "checkpoint.ema_decay=0.9",
                 "data.num_workers=1", "checkpoint.every_steps=2", "checkpoint.keep_last=2", "data.max_seconds=6"]
    full, split = tmp_path / "full", tmp_path / "split"
    run(train_argv(corpus, full, "--max-steps", "6", overrides=overrides))
    run(train_argv(corpus, split, "--max-steps", "3", overrides=overrides))
    # a crash after step 3 would leave log lines past the checkpoint: resume must drop them
    with open(split / "log.jsonl", "a") as stream:
        stream.write(json.dumps({"step": 4, "loss": -1.0}) + "\n")
    run(train_argv(corpus, split, "--max-steps", "6", "--resume", overrides=overrides))

    a, b = read_log(full / "log.jsonl"), read_log(split / "log.jsonl")
    assert [r["step"] for r in b] == list(range(1, 7))
    assert max(r["epoch"] for r in a) >= 1, "the run should cross an epoch boundary"
    for key in ("loss", "loss_speech", "loss_audio", "grad_norm", "lr", "audio_seconds", "masked_fraction"):
        assert [r[key] for r in a] == [r[key] for r in b], key
    # keep_last=2 during the run: steps 4 and 6 remain
    assert [p.name for p in list_checkpoints(split)] == ["ckpt-00000004.pt", "ckpt-00000006.pt"]
    final_a, final_b = load_checkpoint(full / "ckpt-00000006.pt"), load_checkpoint(split / "ckpt-00000006.pt")
    for key, value in final_a["model"].items():
        assert torch.equal(value, final_b["model"][key]), key
    for key, value in final_a["ema"].items():
        assert torch.equal(value, final_b["ema"][key]), key


def test_resume_skips_a_damaged_newest_checkpoint(corpus, tmp_path, capsys):
    """A truncated newest checkpoint does not block --resume (nor the demo, which resumes by itself):
    the run goes on from the newest one that loads, naming the one it skipped and why."""
    out = tmp_path / "run"
    argv = train_argv(corpus, out, overrides=["checkpoint.every_steps=1", "checkpoint.keep_last=3"])
    run(argv + ["--max-steps", "2"])
    newest = list_checkpoints(out)[-1]
    assert newest.name == "ckpt-00000002.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 3])
    capsys.readouterr()
    result = run(argv + ["--resume", "--max-steps", "3"])
    text = capsys.readouterr().out
    assert "resumed from" in text and "ckpt-00000001.pt at step 1" in text
    assert "skipped ckpt-00000002.pt" in text and "cannot be loaded" in text
    assert result.step == 3 and load_checkpoint(result.checkpoint)["step"] == 3
    assert [r["step"] for r in read_log(out / "log.jsonl")] == [1, 2, 3]


def test_sigterm_saves_a_checkpoint_that_resumes(corpus, tmp_path):
    """timeout, SLURM and Kubernetes send SIGTERM to the whole process group, DataLoader workers
    included: the run still saves, and exits with 128 + 15 so a scheduler tells it from a finished one."""
    out = tmp_path / "run"
    argv = train_argv(corpus, out, overrides=["checkpoint.every_steps=1000", "data.num_workers=1"])
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), *argv], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # its own process group, as under `timeout`
    log = out / "log.jsonl"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= 2:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[0]
    os.killpg(proc.pid, signal.SIGTERM)  # the trainer and its DataLoader worker
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, output
    assert "stopped by signal" in output and "Traceback" not in output
    saved = list_checkpoints(out)
    assert len(saved) == 1, output
    step = load_checkpoint(saved[0])["step"]
    assert step == len(read_log(log)) >= 2
    result = run(argv + ["--resume", "--max-steps", str(step + 2)])
    assert result.step == step + 2
    assert [r["step"] for r in read_log(log)] == list(range(1, step + 3))


def test_no_loader_worker_outlives_the_run(corpus, tmp_path):
    """The workers ignore SIGTERM (a group-wide signal must reach the trainer alone), so at interpreter
    exit multiprocessing's terminate-then-join of a still-running worker would wait forever: the
    run stops them itself, whatever still refers to the trainer."""
    import gc
    import multiprocessing

    gc.disable()  # reference cycles stay alive, as they may at interpreter exit
    try:
        result = run(train_argv(corpus, tmp_path / "run", "--max-steps", "2",
                                overrides=["data.num_workers=1", "checkpoint.every_steps=1000"]))
        assert result.step == 2
        assert multiprocessing.active_children() == []
    finally:
        gc.enable()
