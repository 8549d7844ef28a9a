"""`python train.py` on the embedded demo, scaled down (--demo-size tiny, a few steps): the data chain,
pre-training, the probes of every model and the report; then a rerun that reuses every stage."""
import json
import math
import time

import pytest

from spear_fast.data.token_store import TokenStore
from spear_fast.mvq import Quantizer
from spear_fast.checkpoint import latest_checkpoint
from spear_fast.cli import run_train
from spear_fast.plot import read_log

STEPS = 16


def test_tiny_demo_end_to_end(tmp_path, seed):
    pytest.importorskip("ctranslate2")
    pytest.importorskip("matplotlib")
    demo_dir, run_dir = tmp_path / "demo", tmp_path / "run"
    argv = ["--preset", "tiny", "--demo-size", "tiny", "--demo-dir", str(demo_dir), "--out", str(run_dir),
            "--set", "schedule.total_steps=16", "--set", "schedule.warmup_steps=2",
            "--set", "data.max_seconds=20", "--set", "data.num_workers=0", "--set", f"runtime.seed={seed % 1000}",
            "--set", "logging.progress=false", "--set", "logging.tensorboard=false",
            "--set", "checkpoint.every_steps=8", "--set", "checkpoint.keep_every=8"]
    result = run_train(argv)

    # data chain: both quantisers and token stores, tied together by the quantiser's fingerprint
    for name in ("speech", "audio"):
        store = TokenStore(demo_dir / f"tokens-{name}")
        assert len(store.ids) > 0
        assert store.meta.quantizer_hash == Quantizer.load(demo_dir / f"mvq-{name}.safetensors").fingerprint()

    # pre-training: every step logged, finite, and the loss went down
    assert result.step == STEPS and latest_checkpoint(run_dir) == result.checkpoint
    log = read_log(run_dir / "log.jsonl")
    assert [r["step"] for r in log] == list(range(1, STEPS + 1))
    assert all(math.isfinite(r["loss"]) for r in log)
    # the speech teacher's loss applies to every clip, so it is comparable across batches (the total
    # is not: batches without audio clips lack the audio term)
    first, last = (sum(r["loss_speech"] for r in part) / len(part) for part in (log[:4], log[-4:]))
    assert last < first - 0.1, (first, last)

    # report: five models on every probe task, scores in range, the table and the PNG
    report = json.loads((run_dir / "report.json").read_text())
    tasks = {p.parent.name for p in (demo_dir / "corpus" / "probes").glob("*/task.json")}
    assert set(report["tasks"]) == tasks == {"voice_id", "instrument_family", "pitch_class", "drum_type",
                                             "spoken_word", "spoken_letter"}
    assert {t["domain"] for t in report["tasks"].values()} == {"speech", "audio"}
    assert [m["role"] for m in report["models"]] == ["student", "teacher", "teacher", "baseline", "baseline"]
    for model in report["models"]:
        assert set(model["test_accuracy"]) == tasks
        assert all(0.0 <= a <= 1.0 for a in model["test_accuracy"].values())
        for weights in model["layer_weights"].values():
            assert abs(sum(weights) - 1.0) < 1e-4
    student = report["models"][0]
    assert student["spec"] == str(result.checkpoint)
    assert len(student["layer_weights"]["voice_id"]) == 7  # the tiny student: front-end output + 6 layers
    assert report["train"]["steps"] == STEPS
    # the trend: random init, the kept milestone (step 8), the final student; the content group's mean,
    # the milestone probed on the content tasks only
    content = [t for t in tasks if t.startswith("spoken_")]
    assert [p["step"] for p in report["trend"]] == [0, 8, STEPS]
    assert all(p["tasks"] == sorted(content) and set(p["mean_accuracy"]) == {"content"} for p in report["trend"])
    assert report["trend"][-1]["mean_accuracy"]["content"] == student["mean_accuracy"]["content"]
    assert report["trend"][0]["mean_accuracy"]["content"] == report["models"][-1]["mean_accuracy"]["content"]
    [milestone_file] = (run_dir / "probes").glob("student_at_step_8-*.json")
    milestone = json.loads(milestone_file.read_text())
    assert set(milestone["tasks"]) == set(content)
    assert student["mean_accuracy"]["content"] == pytest.approx(
        sum(student["test_accuracy"][t] for t in content) / len(content))
    assert set(student["test_subsets"]) == set(content)
    assert report["train"]["last"]["loss_speech"] < report["train"]["first"]["loss_speech"]
    for model in report["models"]:
        assert model["label"] in report["table"]
    png = (run_dir / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert set(report["stage_seconds"]) == {"data", "train", "probe"}

    # a rerun reuses the data, the finished run and every probe result: same numbers, quickly
    started = time.perf_counter()
    again = run_train(argv)
    assert time.perf_counter() - started < 60
    assert again.step == STEPS and again.checkpoint == result.checkpoint
    rerun = json.loads((run_dir / "report.json").read_text())
    assert [m["test_accuracy"] for m in rerun["models"]] == [m["test_accuracy"] for m in report["models"]]
