"""train.py's config, --print-config, bad input (errors before any compute), schedules, checkpoint files."""
from __future__ import annotations

import json
import math
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from spear_fast.data.manifest import read_manifest, write_manifest
from spear_fast.config import apply_overrides
from spear_fast.model.student import SpearStudent
from spear_fast import checkpoint as ckpt
from spear_fast.errors import UserError
from spear_fast.train.config import train_config
from spear_fast.cli import run_train, train_main
from spear_fast.train.main import run
from spear_fast.plot import read_log
from spear_fast.train.schedule import lr_factor
from spear_fast.train.synthetic import (
    TEST_OVERRIDES,
    fresh_seed,
    train_argv,
    write_synthetic_corpus,
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_synthetic_corpus(tmp_path_factory.mktemp("corpus"), num_clips=6,
                                  seed=fresh_seed())


def test_print_config(capsys):
    assert run(["--preset", "base", "--print-config", "--set", "optim.lr=3e-4", "--set", "model.encoder.num_layers=3",
                "--teachers", "speech"]) is None
    text = capsys.readouterr().out
    assert "optim.lr = 0.0003  # peak learning rate" in text
    assert "model.encoder.num_layers = 3" in text and "loss.teachers = 'speech'" in text
    config = apply_overrides(train_config("base"), ["model.encoder.num_layers=3"])
    # by hand: base blocks are d=768, ffn 3072 (qkv + out + 2 FFN matrices, biases, 2 LayerNorms)
    d, f = 768, 3072
    block = 3 * d * d + 3 * d + d * d + d + d * f + f + f * d + d + 4 * d
    with torch.device("meta"):  # shapes only: no memory, no init time
        student = SpearStudent(config.model)
    count = sum(p.numel() for p in student.parameters())
    assert count - 3 * block == sum(p.numel() for n, p in student.named_parameters() if not n.startswith("blocks."))
    assert f"# student parameters: {count:,}" in text


@pytest.mark.parametrize("argv, message", [
    (["--preset", "huge", "--print-config"], "unknown preset 'huge'"),
    (["--print-config", "--set", "optim.lr=-1"], "out of range"),
    (["--print-config", "--set", "mixing.token_mix_prob=1.5"], "out of range"),
    (["--print-config", "--set", "optim.nope=1"], "unknown field 'nope'"),
    (["--print-config", "--set", "schedule.kind=linear"], "must be one of"),
    (["--max-steps", "0"], "--max-steps must be >= 1"),
])
def test_bad_config_is_rejected(argv, message, capsys):
    with pytest.raises(ValueError, match=message):
        run_train(argv)
    assert train_main(argv) == 2
    assert message.split("'")[0] in capsys.readouterr().err


def _expect(argv, message, out):
    with pytest.raises(ValueError, match=message):
        run(argv)
    assert not list(out.glob("ckpt-*")) and not (out / "log.jsonl").exists()  # nothing ran


def test_bad_data_is_rejected_before_training(corpus, tmp_path):
    out = tmp_path / "run"
    _expect(train_argv(corpus, out, overrides=["loss.speech.num_codebooks=16"]),
            "num_codebooks is 4 but the config .loss.speech.num_codebooks. expects 16", out)
    _expect(train_argv(corpus, out, overrides=["loss.audio.frame_rate=50"]), "frame_rate is 25.0", out)
    _expect(train_argv(corpus, out, overrides=["data.min_duration=1.4"]), "none of the 6 manifest clips", out)
    bad_dirs = train_argv(corpus, out)
    bad_dirs[bad_dirs.index(f"speech={corpus.token_dirs['speech']}")] = f"speech={tmp_path / 'missing'}"
    _expect(bad_dirs, "directory not found", out)
    # a clip the speech store does not hold
    entries = read_manifest(corpus.manifest)
    extra = entries[0].__class__(**{**entries[0].to_dict(), "id": "not_tokenized"})
    manifest = tmp_path / "extra.jsonl"
    write_manifest(manifest, entries + [extra])
    argv = train_argv(corpus, out)
    argv[argv.index(str(corpus.manifest))] = str(manifest)
    _expect(argv, r"lacks 1 clip\(s\) the speech teacher applies to, e.g. \['not_tokenized'\]", out)
    # tokens that do not cover the clip (manifest says the clip is longer than its tokens)
    longer = entries[0].__class__(**{**entries[0].to_dict(), "duration": entries[0].duration + 1.0})
    write_manifest(manifest, [longer] + entries[1:])
    _expect(argv, f"clip {entries[0].id!r} has .* token frames", out)
    _expect(train_argv(corpus, out)[2:], "give both --manifest and --tokens", out)  # tokens, no manifest


def test_a_corrupt_token_shard_is_refused_before_training(corpus, tmp_path):
    """Every byte is a valid token, so a flipped one would train silently: the shard checksums are
    checked once when the stores open, naming the shard and how to repair it."""
    import shutil

    stores = tmp_path / "tokens"
    shutil.copytree(corpus.token_dirs["speech"], stores / "speech")
    shard = sorted((stores / "speech" / "shards").glob("*.npy"))[0]
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0x01  # the last token byte (the .npy header comes first)
    shard.write_bytes(bytes(data))
    out = tmp_path / "run"
    argv = train_argv(corpus, out, "--max-steps", "1")
    argv[argv.index(f"speech={corpus.token_dirs['speech']}")] = f"speech={stores / 'speech'}"
    _expect(argv, f"{shard}: sha256 mismatch.*rerun `spear tokenize`.*spear verify-tokens", out)


def test_a_batch_without_tokens_takes_no_optimiser_step(corpus, tmp_path, capsys):
    """Clips kept without tokens (data.allow_missing_tokens) give a zero loss: a batch of only such clips
    must not move the weights (weight decay, momentum); the step is skipped and counted."""
    entries = read_manifest(corpus.manifest)
    untokenized = [e.__class__(**{**e.to_dict(), "id": f"{e.id}-untokenized"}) for e in entries]
    manifest = tmp_path / "untokenized.jsonl"
    write_manifest(manifest, untokenized)
    argv = train_argv(corpus, tmp_path / "run", "--max-steps", "2",
                      overrides=["data.allow_missing_tokens=true", "optim.name=adamw"])
    argv[argv.index(str(corpus.manifest))] = str(manifest)
    result = run(argv)
    records = read_log(tmp_path / "run" / "log.jsonl")
    assert [r["step"] for r in records] == [1, 2]
    assert all(r.get("no_tokens") is True and r.get("skipped_update") is True for r in records), records
    assert ckpt.load_checkpoint(result.checkpoint)["optimizer"]["state"] == {}  # AdamW never stepped
    assert "2 step(s) had no clip with tokens" in capsys.readouterr().out


@pytest.mark.parametrize("preset", ["base", "large", "xlarge"])
def test_a_big_preset_without_data_points_to_the_data_flags(preset, monkeypatch, tmp_path, capsys):
    """Without --manifest/--tokens train.py runs the demo, sized for the tiny student: a bigger preset
    stops at once with one line, before any demo data is built."""
    from spear_fast.demo import run as demo_run

    monkeypatch.setattr(demo_run, "demo_data", lambda args: pytest.fail("the demo data chain was started"))
    argv = ["--preset", preset, "--out", str(tmp_path / "run"), "--demo-dir", str(tmp_path / "demo")]
    assert train_main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--preset {preset} needs real data" in err and "--manifest" in err
    assert not (tmp_path / "run").exists() and not (tmp_path / "demo").exists()


def test_the_long_demo_preset_is_the_demo_recipe_run_longer(monkeypatch, tmp_path):
    """tiny-long trains the tiny student with the tiny recipe; only the schedule's length and the
    milestones differ, and the demo accepts it (it reaches the data chain, stubbed here)."""
    from spear_fast.config import config_to_dict
    from spear_fast.demo import run as demo_run

    short, long = config_to_dict(train_config("tiny")), config_to_dict(train_config("tiny-long"))
    changed = {(section, key) for section in short for key in short[section]
               if short[section][key] != long[section][key]}
    assert changed == {("schedule", "total_steps"), ("checkpoint", "keep_every")}
    assert long["schedule"]["total_steps"] % long["checkpoint"]["keep_every"] == 0
    assert long["schedule"]["total_steps"] > short["schedule"]["total_steps"]

    class Reached(Exception):
        pass

    def stop(args):
        raise Reached(args.out)

    monkeypatch.setattr(demo_run, "demo_data", stop)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(Reached, match="tiny-long"):  # default run dir: runs/tiny-long
        run_train(["--preset", "tiny-long", "--demo-dir", str(tmp_path / "demo")])


def test_the_demo_corpus_size_follows_the_preset_or_demo_hours(monkeypatch, tmp_path):
    """Each demo preset names the hours of audio its corpus holds and --demo-hours overrides them; the
    default directory is one per size (a directory refuses a corpus of another size). A size the
    corpus builder would take for its test variant, with other probe sets, is refused, and so is
    --demo-hours with --demo-size tiny."""
    from spear_fast.demo.run import DEMO_HOURS
    from spear_fast.pipeline import demo as pipeline_demo

    class Reached(Exception):
        pass

    calls = []

    def stop(work_dir, *, tiny=False, config=None, **_):
        calls.append((Path(work_dir), tiny, config))
        raise Reached

    monkeypatch.setattr(pipeline_demo, "prepare_demo_data", stop)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("SPEAR_DEMO_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    dirs = {}
    for argv, hours in [(["--preset", "tiny"], DEMO_HOURS["tiny"]),
                        (["--preset", "tiny-long"], DEMO_HOURS["tiny-long"]),
                        (["--preset", "tiny", "--demo-hours", "2.5"], 2.5)]:
        with pytest.raises(Reached):
            run_train(argv)
        work_dir, tiny, config = calls.pop()
        assert not tiny and config.hours == hours
        assert work_dir.parent == tmp_path / ".cache/spear-fast"
        dirs.setdefault(hours, set()).add(work_dir)
    assert all(len(d) == 1 for d in dirs.values()) and len(set.union(*dirs.values())) == len(dirs)
    for argv, message in [(["--demo-hours", "0"], "--demo-hours must be > 0, got 0.0"),
                          (["--demo-hours", "0.01"], "--demo-hours 0.01 is at or below the tiny corpus"),
                          (["--demo-size", "tiny", "--demo-hours", "1"], "--demo-hours sizes the full demo")]:
        with pytest.raises(ValueError, match=message):
            run_train(argv)
    assert not calls


def test_missing_demo_pipeline_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "spear_fast.pipeline.demo", None)  # import fails
    with pytest.raises(ValueError, match="demo pipeline is unavailable"):
        run_train(["--out", str(tmp_path / "run")])


def test_single_teacher_ablation_uses_one_head(corpus, tmp_path):
    result = run(train_argv(corpus, tmp_path / "run", "--teachers", "audio", "--max-steps", "1"))
    state = ckpt.load_checkpoint(result.checkpoint)
    assert {k.split(".")[1] for k in state["objective"]} == {"audio"}
    assert state["config"]["loss"]["teachers"] == "audio"
    skipped = [json.loads(line) for line in (tmp_path / "run" / "skipped.jsonl").read_text().splitlines()]
    speech_ids = {e.id for e in read_manifest(corpus.manifest) if e.domain == "speech"}
    assert {r["id"] for r in skipped} == speech_ids  # asymmetric mode: no audio loss on speech clips


@pytest.mark.parametrize("kind", ["cosine", "eden", "constant"])
def test_schedules_match_their_formulas(kind):
    config = apply_overrides(train_config("tiny"), [f"schedule.kind={kind}", "schedule.total_steps=1000",
                                                    "schedule.warmup_steps=100", "schedule.warmup_start=0.1",
                                                    "schedule.min_lr_ratio=0.05"]).schedule
    for step, epoch in [(0, 0), (50, 0), (100, 1), (400, 2), (999, 3), (5000, 4)]:
        warm = 0.1 + 0.9 * (step + 1) / 100 if step < 100 else 1.0
        if kind == "cosine":
            p = min(max(step - 100, 0) / 900, 1.0)
            decay = 0.05 + 0.95 * (1 + math.cos(math.pi * p)) / 2
        elif kind == "eden":
            decay = ((step**2 + 7500**2) / 7500**2) ** -0.25 * ((epoch**2 + 3.5**2) / 3.5**2) ** -0.25
        else:
            decay = 1.0
        assert lr_factor(config, step, epoch) == pytest.approx(warm * decay, rel=1e-12)


def test_checkpoints_atomic_keep_last_and_safe_loading(tmp_path):
    for step in (3, 1, 7, 5, 9):
        ckpt.save_checkpoint({"step": step, "w": torch.randn(4)}, tmp_path, step, keep_last=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["ckpt-00000007.pt", "ckpt-00000009.pt"]
    assert not list(tmp_path.glob("*.tmp"))
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path))["step"] == 9
    evil = tmp_path / "ckpt-00000011.pt"
    torch.save({"format": ckpt.FORMAT, "obj": _NotAllowed()}, evil)  # a pickled object: refused
    with pytest.raises(ValueError, match="cannot be loaded safely"):
        ckpt.load_checkpoint(evil)
    torch.save({"format": "something else"}, evil)
    with pytest.raises(ValueError, match="not a spear-fast training checkpoint"):
        ckpt.load_checkpoint(evil)


class _NotAllowed:
    pass


def test_milestone_checkpoints_are_kept(tmp_path):
    for step in range(100, 1100, 100):
        ckpt.save_checkpoint({"step": step}, tmp_path, step, keep_last=2, keep_every=300)
    steps = [ckpt.checkpoint_step(p) for p in ckpt.list_checkpoints(tmp_path)]
    assert steps == [300, 600, 900, 1000]  # the milestones, then the newest two (900 is both)
    from spear_fast.eval.demo_report import milestone_checkpoints

    final = tmp_path / "ckpt-00001000.pt"
    probed = [ckpt.checkpoint_step(p) for p in milestone_checkpoints(tmp_path, final, keep_every=300)]
    assert probed == [300, 600, 900]  # the trend's points: milestones only, not keep_last's extras
    assert milestone_checkpoints(tmp_path, final, keep_every=0) == []


def test_rng_state_round_trip(tmp_path):
    state = ckpt.capture_rng()
    ckpt.save_checkpoint({"rng": state}, tmp_path, 1, keep_last=1)
    expected = (torch.rand(3), random.random(), np.random.rand(3))
    ckpt.restore_rng(ckpt.load_checkpoint(tmp_path / "ckpt-00000001.pt")["rng"])
    again = (torch.rand(3), random.random(), np.random.rand(3))
    assert torch.equal(expected[0], again[0]) and expected[1] == again[1] and np.array_equal(expected[2], again[2])


def test_test_overrides_are_valid():
    apply_overrides(train_config("tiny"), TEST_OVERRIDES)


def test_rerun_into_a_used_run_dir_needs_resume(corpus, tmp_path):
    out = tmp_path / "run"
    run(train_argv(corpus, out, "--max-steps", "1"))
    with pytest.raises(ValueError, match="already holds checkpoints .newest ckpt-00000001.pt.; pass --resume"):
        run(train_argv(corpus, out, "--max-steps", "2"))


def test_collate_drops_and_reports_unusable_clips():
    from spear_fast.data.dataset import BadItem, Example, collate

    generator = torch.Generator().manual_seed(fresh_seed())
    short = Example(id="short", wave=torch.randn(100, generator=generator), domain="speech",
                    tokens={"speech": np.ones((1, 4), np.uint8), "audio": None})
    codebooks = {"speech": 4, "audio": 2}
    loaded = collate([short, BadItem("broken", "decoding failed")], codebooks, min_samples=3200)
    assert loaded.batch is None and [b.id for b in loaded.skipped] == ["broken", "short"]
    assert "too short after decoding: 100 samples < 3200" in loaded.skipped[1].reason
    good = Example(id="good", wave=torch.randn(4000, generator=generator), domain="speech",
                   tokens={"speech": np.full((12, 4), 7, np.uint8), "audio": None})
    loaded = collate([short, good], codebooks, min_samples=3200)
    assert loaded.batch.ids == ["good"] and [b.id for b in loaded.skipped] == ["short"]
    # no clip has audio tokens: still (B, T, N_audio) of IGNORE so the objective's shape check holds
    assert loaded.batch.tokens["audio"].shape == (1, 1, 2) and (loaded.batch.tokens["audio"] == -100).all()
    assert torch.equal(loaded.batch.tokens["speech"][0], torch.full((12, 4), 7))


def test_unreadable_clip_is_skipped_and_reported(tmp_path):
    corpus = write_synthetic_corpus(tmp_path / "corpus", num_clips=6, seed=fresh_seed())
    victim = read_manifest(corpus.manifest)[2]
    with open(victim.path, "wb") as stream:
        stream.write(b"RIFF\x00\x00not audio at all" * 10)
    # 6 clips, ~2 batches per epoch: 4 steps read every clip at least once
    result = run(train_argv(corpus, tmp_path / "run", "--max-steps", "4"))
    assert result.step == 4
    records = [json.loads(line) for line in (tmp_path / "run" / "skipped.jsonl").read_text().splitlines()]
    assert records and {r["id"] for r in records} == {victim.id}
    assert all("step" in r and r["reason"] for r in records)


def test_fp16_uses_a_grad_scaler_that_is_checkpointed(corpus, tmp_path):
    result = run(train_argv(corpus, tmp_path / "run", "--max-steps", "3", overrides=["runtime.precision=fp16"]))
    state = ckpt.load_checkpoint(result.checkpoint)
    # The scaler's state follows the steps: each overflowing step (inf/nan gradient norm, skipped) halves
    # the scale from torch's initial 2**16, and the growth tracker counts the finite steps since the last.
    finite = [math.isfinite(r["grad_norm"]) for r in read_log(tmp_path / "run" / "log.jsonl")]
    assert len(finite) == 3
    assert state["scaler"]["scale"] == 2.0**16 * 0.5 ** finite.count(False)
    trailing = len(finite) - (max(i for i, ok in enumerate(finite) if not ok) + 1 if False in finite else 0)
    assert state["scaler"]["_growth_tracker"] == trailing
    fp32 = ckpt.load_checkpoint(run(train_argv(corpus, tmp_path / "fp32", "--max-steps", "1")).checkpoint)
    assert fp32["scaler"] is None


def test_analytic_flops_match_torch_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    from spear_fast.model.config import tiny
    from spear_fast.train.metrics import step_flops

    config = apply_overrides(tiny(), ["encoder.num_layers=2", "encoder.dropout=0", "subsampling.dropout=0"])
    student = SpearStudent(config)
    head = torch.nn.Linear(config.encoder.dim, 8 * 256)
    frames = 157 + int(torch.randint(0, 50, ()))
    lengths = torch.tensor([frames])
    with FlopCounterMode(display=False) as counter:  # counts matmuls and convs, fwd + bwd (not CPU sdpa)
        out = student(torch.randn(1, frames, 128), lengths, return_layers=False)
        head(out.hidden).sum().backward()
    out_frames = (frames + 1) // 2
    attention = 12 * config.encoder.num_layers * config.encoder.dim * out_frames**2  # QK^T + AV, fwd + bwd
    analytic = step_flops(config, lengths, 8 * 256)
    # the counter skips conv1's input gradient (the fbank needs none): a 1-channel conv, < 1 % of the total
    assert abs(analytic - attention - counter.get_total_flops()) < 0.01 * counter.get_total_flops()

