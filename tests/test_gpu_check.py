"""bench/gpu_check.py: the CPU dry run end to end (the same command a GPU runs, at tiny sizes with
the torch twins, so the script cannot rot), and the machinery that keeps a GPU run useful when it
is cut short: per-part budgets, skipped and failed cases, results rewritten after every case."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from gpucheck import peers  # noqa: E402
from gpucheck.budget import PartTimeout  # noqa: E402
from gpucheck.context import Case, Context, Part, run_part  # noqa: E402
from gpucheck.profile import DRY_RUN  # noqa: E402
from gpucheck.report import Report, Row  # noqa: E402

from spear_fast.train.synthetic import fresh_seed  # noqa: E402


def test_dry_run_runs_every_part_and_writes_the_results(tmp_path):
    seed = fresh_seed()
    result = subprocess.run([sys.executable, str(BENCH / "gpu_check.py"), "--dry-run", "--out", str(tmp_path),
                             "--seed", str(seed)], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    [json_path] = tmp_path.glob("dry-run-*.json")
    data = json.loads(json_path.read_text())
    assert data["dry_run"] is True and data["seed"] == seed and data["device"]["cpu_count"] >= 1
    parts = {part["number"]: part for part in data["parts"]}
    assert sorted(parts) == [1, 2, 3, 4]
    assert all(part["status"] == "done" for part in parts.values())
    rows = {row["case"]: row for part in parts.values() for row in part["rows"]}

    # 1. every op, every size, both dtypes: the CPU path (the twin) against the float64 oracle
    correctness = parts[1]["rows"]
    expected = 2 * len(DRY_RUN.ce_sizes) + 4 * len(DRY_RUN.search_sizes) + 2 * len(DRY_RUN.mix_sizes)
    assert len(correctness) == expected
    assert all(row["status"] == "pass" and row["cells"]["path"] == "torch twin" for row in correctness), [
        (row["case"], row["status"], row["reason"]) for row in correctness if row["status"] != "pass"]
    swapped = rows["correct-mix-4-x-0-5-s-every-row-mixed-fp32"]["metrics"]["tokens_swapped"]
    assert swapped > 0  # the mixing check saw swaps, not an untouched batch

    # 2. measured contenders have a time and a memory; CUDA-only peers are skipped with the package named
    for case in ("kern-ce-bf16-plain", "kern-ce-bf16-ours", "kern-ce-bf16-compiled", "kern-search-indexed-ours",
                 "kern-mix-1-ours", "kern-ce-fp32-ours"):
        assert rows[case]["status"] == "ok", rows[case]
        assert rows[case]["metrics"]["median_s"] > 0 and rows[case]["metrics"]["peak_bytes"] is not None
    assert rows["kern-ce-bf16-ours"]["metrics"]["speedup_vs_baseline"] > 0
    for peer, package in (("liger", "liger-kernel"), ("cce", "cut-cross-entropy")):
        row = rows[f"kern-ce-bf16-{peer}"]
        assert row["status"] == "skipped" and package in row["reason"]

    # 3. ours, the teacher and the reference (multi-quantization is in the test extra), compared
    assert rows["mvq-encode-ours"]["status"] == "ok"
    assert rows["mvq-teacher-forward"]["metrics"]["encode_fraction_of_teacher"] > 0
    reference = rows["mvq-encode-reference"]["metrics"]
    assert reference["index_agreement"] > 0.99 and reference["squared_error_ours_over_reference"] < 1 + 1e-3

    # 4. both steps measured; the short real run: loss fell, nothing compiled after warm-up
    assert rows["step-tiny-spear"]["metrics"]["compile_backend"] == "eager"
    assert rows["step-tiny-plain"]["metrics"]["spear_speedup"] > 0
    run = rows[f"run-tiny-{DRY_RUN.run_steps}"]
    assert run["status"] == "pass", run
    assert run["metrics"]["steps"] == DRY_RUN.run_steps and run["metrics"]["compiles_after_warmup"] == 0

    assert len(data["targets"]) == 8
    assert {target["verdict"] for target in data["targets"]} <= {"met", "NOT met", "not measured"}
    markdown = json_path.with_suffix(".md").read_text()
    for number, part in parts.items():
        assert f"## {number}. {part['title']}" in markdown
    table_rows = [line for line in markdown.splitlines() if line.startswith("| linear_multi_target_ce |")]
    assert len(table_rows) == 2 * len(DRY_RUN.ce_sizes)
    assert "## Targets" in result.stdout  # the tables are printed too


def make_context(tmp_path: Path) -> Context:
    report = Report(tmp_path, "check", {"machine": "test machine", "date": "today", "command": "test"})
    return Context(torch.device("cpu"), True, DRY_RUN, 0, report)


def measured(ctx: Context) -> Row:
    return Row("", "ok", cells={"value": "1"}, metrics={"value": 1})


def test_an_overrunning_part_is_cut_and_the_next_part_runs(tmp_path):
    ctx = make_context(tmp_path)
    steps = []

    def endless(ctx: Context) -> Row:  # ends by itself after 10 s only if the alarm never came
        began = time.monotonic()
        try:
            while time.monotonic() - began < 10:
                steps.append(1)
                time.sleep(0.01)
        except PartTimeout as timeout:  # a case may hand over what it measured before the time-out
            timeout.row = Row("", "pass", metrics={"steps": len(steps)}, reason="partial")
            raise
        return Row("", "ok")

    slow = Part(1, "slow", ["case"], lambda ctx: [Case("a", {"case": "a"}, measured),
                                                  Case("b", {"case": "b"}, endless),
                                                  Case("c", {"case": "c"}, measured)])
    began = time.monotonic()
    elapsed = run_part(ctx, slow, 0.5)
    assert 0.4 < elapsed < 5 and time.monotonic() - began < 5
    data = json.loads(ctx.report.json_path.read_text())
    [part] = data["parts"]
    assert part["status"] == "timed out"
    a, b, c = part["rows"]
    assert (a["case"], a["status"], a["metrics"]["value"]) == ("a", "ok", 1)  # recorded before the time-out
    assert b["status"] == "skipped" and b["reason"].startswith("time-out") and b["metrics"]["steps"] == len(steps) > 0
    assert c["status"] == "skipped" and "not reached" in c["reason"]

    run_part(ctx, Part(2, "next", ["case"], lambda ctx: [Case("d", {"case": "d"}, measured)]), 5.0)
    data = json.loads(ctx.report.json_path.read_text())
    assert [row["status"] for row in data["parts"][1]["rows"]] == ["ok"]
    assert "| d | ok |" in ctx.report.md_path.read_text()


def test_a_swallowed_time_out_comes_again(tmp_path):
    """Python ignores an exception raised in a __del__ (it prints it): the alarm repeats until the runner
    has caught one."""
    ctx = make_context(tmp_path)
    swallowed = []

    def swallowing(ctx: Context) -> Row:
        began = time.monotonic()
        while time.monotonic() - began < 10:
            try:
                time.sleep(0.01)
            except PartTimeout:
                if swallowed:
                    raise
                swallowed.append(time.monotonic() - began)
        return Row("", "ok")

    elapsed = run_part(ctx, Part(1, "swallow", ["case"], lambda ctx: [Case("s", {"case": "s"}, swallowing)]), 0.3)
    assert len(swallowed) == 1 and 1.0 < elapsed < 5
    [row] = json.loads(ctx.report.json_path.read_text())["parts"][0]["rows"]
    assert row["status"] == "skipped" and row["reason"].startswith("time-out")


def test_a_raising_case_is_recorded_and_the_part_goes_on(tmp_path):
    ctx = make_context(tmp_path)

    def broken(ctx: Context) -> Row:
        raise RuntimeError("CUDA out of memory (simulated)")

    def missing_peer(ctx: Context) -> Row:
        peers.load(peers.PeerSpec("no-such-package", "no_such_module_for_gpu_check", "f", "no-such-package"))
        raise AssertionError("load should have raised")

    part = Part(1, "mixed", ["case"], lambda ctx: [Case("x", {"case": "x"}, broken),
                                                   Case("y", {"case": "y"}, missing_peer),
                                                   Case("z", {"case": "z"}, measured)])
    run_part(ctx, part, 10.0)
    x, y, z = json.loads(ctx.report.json_path.read_text())["parts"][0]["rows"]
    assert x["status"] == "error" and "CUDA out of memory (simulated)" in x["reason"]
    assert y["status"] == "skipped" and "no-such-package is not installed" in y["reason"]
    assert "pip install 'no-such-package'" in y["reason"]
    assert z["status"] == "ok"


def test_peers_that_are_installed_load():
    reference = peers.load(peers.MULTI_QUANTIZATION)  # in the test extra
    assert reference.__name__ == "Quantizer"
    assert peers.versions()["multi-quantization"] == "0.1.1"


def test_without_cuda_the_check_refuses_to_run_and_says_why(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    import gpu_check

    assert gpu_check.main(["--out", str(tmp_path)]) == 2
    assert "--dry-run" in capsys.readouterr().err
    assert gpu_check.main(["--dry-run", "--parts", "5", "--out", str(tmp_path)]) == 2
    assert not list(tmp_path.iterdir())


def test_only_the_first_one_clip_batch_excuses_a_compilation_after_warm_up():
    from gpucheck.part4_training import excused_compiles, summarise

    clips = [3, 3, 2, 3, 3, 3, 1, 3, 1, 3]
    compiles = [2, 2, 2, 2, 2, 2, 3, 3, 3, 3]  # the first one-clip batch (step 7) compiled once more
    assert excused_compiles(compiles, clips, warmup=5) == 1
    records = [{"loss": 6.0 - 0.1 * i, "step_time": 0.1, "audio_per_second": 10.0} for i in range(10)]
    assert summarise(records, compiles, 10, 5, clips).status == "pass"
    storm = [2, 2, 2, 2, 2, 2, 3, 4, 4, 5]  # later compilations are not the one-clip batch's
    row = summarise(records, storm, 10, 5, clips)
    assert row.status == "FAIL" and row.metrics["compiles_after_warmup"] == 2
    early = [3, 3, 3, 3, 3, 3, 3, 3, 3, 3]
    assert excused_compiles(early, [1] + clips[1:], warmup=5) == 0  # compiled during warm-up: nothing to excuse
