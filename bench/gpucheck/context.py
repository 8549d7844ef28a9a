"""What every case sees, and how a part runs its cases inside its time budget.

A part is a list of Cases. Each case measures one thing and returns one Row (report.Row); the
runner adds the case's labels, records the row at once, turns an exception into an "error" row and
carries on, and when the part's budget runs out records the interrupted case and every case not
reached as "skipped" with the reason.
"""
from __future__ import annotations

import gc
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from benchlib.measure import measure_peak_memory, synchronize, time_call
from gpucheck.budget import Deadline, PartTimeout, alarm_held
from gpucheck.peers import PeerMissing
from gpucheck.profile import Profile
from gpucheck.report import Report, Row


@dataclass
class Context:
    device: torch.device
    dry_run: bool
    profile: Profile
    seed: int  # of every random input (recorded; a fresh one per run unless --seed)
    report: Report
    shared: dict[str, Any] = field(default_factory=dict)  # inputs and results shared by the cases of a part

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"

    def shared_value(self, key: str, build: Callable[[], Any]) -> Any:
        """The part-wide value under `key`, built on first use."""
        if key not in self.shared:
            self.shared[key] = build()
        return self.shared[key]


@dataclass
class Case:
    case: str  # stable id of its row
    labels: dict[str, str]  # the row's identifying cells
    run: Callable[[Context], Row]  # returns the row (its labels are filled in by the runner)


@dataclass
class Part:
    number: int
    title: str
    columns: list[str]
    cases: Callable[[Context], list[Case]]


def free_memory(device: torch.device) -> None:
    """Hand a finished case's device memory back (CUDA: collect its tensors, empty the cache; a
    CPU's allocator needs no help, and a full collection costs ~0.2 s)."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()


def say(text: str) -> None:
    print(text, flush=True)


def measure(ctx: Context, call: Callable[[], object]) -> dict[str, Any]:
    """First call (compilation included), peak memory of one call, then the median time of repeated
    calls (the profile's timing spec), as raw metrics."""
    began = time.perf_counter()
    call()
    synchronize(ctx.device)
    first = time.perf_counter() - began
    peak = measure_peak_memory(call, ctx.device)
    spec = ctx.profile.timing
    timing = time_call(call, ctx.device, warmup=0, min_reps=spec.min_reps, max_reps=spec.max_reps,
                       max_seconds=spec.max_seconds)
    return {"first_call_s": first, "peak_bytes": peak, "median_s": timing.median_s, "min_s": timing.min_s,
            "reps": timing.reps}


def run_part(ctx: Context, part: Part, seconds: float) -> float:
    """Run `part`'s cases within `seconds`; returns the seconds it took."""
    started = time.monotonic()
    cases = part.cases(ctx)
    ctx.report.start_part(part.number, part.title, part.columns, seconds)
    say(f"== part {part.number}: {part.title} ({len(cases)} cases, budget {seconds:.0f} s)")
    status, note = "done", None
    recorded = 0
    with Deadline(seconds) as deadline:
        try:
            for case in cases:
                if deadline.expired():
                    raise PartTimeout("budget spent between cases")
                case_started = time.monotonic()
                try:
                    row = case.run(ctx)
                except PartTimeout as timeout:
                    deadline.disarm()
                    with alarm_held():
                        row = timeout.row or Row(case.case, "skipped")
                        if row.status in ("ok", "pass"):
                            row.status = "skipped"
                        row.reason = f"time-out: the part's {seconds:.0f} s ran out during this case" + (
                            f" ({row.reason})" if row.reason else "")
                        _record(ctx, part, case, row, time.monotonic() - case_started)
                        recorded += 1
                    raise
                except PeerMissing as missing:
                    row = Row(case.case, "skipped", reason=str(missing))
                except Exception as error:  # recorded, then the next case runs
                    traceback.print_exc(file=sys.stderr)
                    row = Row(case.case, "error", reason=f"{type(error).__name__}: {error}"[:500])
                with alarm_held():
                    _record(ctx, part, case, row, time.monotonic() - case_started)
                    recorded += 1
                free_memory(ctx.device)
        except PartTimeout:
            deadline.disarm()
            with alarm_held():
                status = "timed out"
                note = f"time-out after {seconds:.0f} s: {len(cases) - recorded} case(s) not reached"
                for case in cases[recorded:]:
                    _record(ctx, part, case, Row(case.case, "skipped",
                                                 reason=f"time-out: not reached within the part's {seconds:.0f} s"), 0.0)
    ctx.shared.clear()
    free_memory(ctx.device)
    elapsed = time.monotonic() - started
    ctx.report.end_part(part.number, status, elapsed, note)
    return elapsed


def _record(ctx: Context, part: Part, case: Case, row: Row, seconds: float) -> None:
    row.case = case.case
    row.labels = {**case.labels, **row.labels}
    row.metrics.setdefault("case_seconds", round(seconds, 2))
    ctx.report.add(part.number, row)
    measured = ", ".join(f"{k}={v}" for k, v in row.cells.items())
    say(f"  {case.case}: {row.status}" + (f" {measured}" if measured else "") + (f" ({row.reason})" if row.reason else ""))
