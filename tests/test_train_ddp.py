"""DDP (torchrun, gloo, 2 CPU processes) == 1 process accumulating the same two per-rank batches."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from spear_fast.checkpoint import load_checkpoint
from spear_fast.train.main import run
from spear_fast.plot import read_log
from spear_fast.train.synthetic import fresh_seed, train_argv, write_synthetic_corpus

REPO = Path(__file__).resolve().parents[1]
STEPS = 3


def test_two_ranks_match_one_rank_with_accumulation(tmp_path):
    seed = fresh_seed()
    # 16 clips of 0.6-1.2 s, <= 2 s batches: >= 8 batches, so 3 steps of 2 batches stay in epoch 0 (the
    # 2-rank sampler truncates an epoch to an even batch count, the 1-rank one does not)
    corpus = write_synthetic_corpus(tmp_path / "corpus", num_clips=16, seed=seed)
    common = ["data.max_seconds=2", "data.max_duration=1.2", "mixing.token_mix_prob=0.3", "mixing.noise_prob=0.3",
              f"runtime.seed={seed % 1000}"]
    ddp_out, single_out = tmp_path / "ddp", tmp_path / "single"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "train.py"), *train_argv(corpus, ddp_out, "--max-steps", str(STEPS), overrides=common)]
    done = subprocess.run(cmd, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run(train_argv(corpus, single_out, "--max-steps", str(STEPS), overrides=common + ["optim.accum_steps=2"]))

    ddp_log, single_log = read_log(ddp_out / "log.jsonl"), read_log(single_out / "log.jsonl")
    assert [r["audio_seconds"] for r in ddp_log] == [r["audio_seconds"] for r in single_log]  # same data
    for a, b in zip(ddp_log, single_log, strict=True):
        assert abs(a["loss"] - b["loss"]) < 1e-5 * abs(b["loss"]), (a, b)
    name = f"ckpt-{STEPS:08d}.pt"
    ddp, single = load_checkpoint(ddp_out / name), load_checkpoint(single_out / name)
    assert ddp["sampler"]["world_size"] == 2 and len(ddp["sampler"]["ranks"]) == 2
    for part in ("model", "objective"):
        for key, value in single[part].items():
            if value.is_floating_point():
                assert torch.allclose(ddp[part][key], value, rtol=1e-5, atol=1e-6), (part, key)
    # the comparison is not vacuous: training moved the weights away from their initial values
    torch.manual_seed(seed % 1000)
    from spear_fast.model.student import SpearStudent
    from spear_fast.train.config import train_config_from_dict

    initial = SpearStudent(train_config_from_dict(single["config"]).model).state_dict()
    moved = sum(not torch.allclose(initial[k], single["model"][k]) for k in initial if initial[k].is_floating_point())
    assert moved > 10
