"""The targets a GPU run is judged by, read off the recorded rows (as measured, never tuned to):

- fused CE (bf16): peak memory <= 1/8 of plain Linear + CE, time <= plain, and ahead of Liger and
  of Cut Cross-Entropy on at least one of time and memory;
- MVQ encode >= 20x the reference on the same device, and <= 10 % of the teacher's forward time;
- the largest preset's training step >= 1.5x plain eager, at an MFU >= 40 % in bf16.
A target whose rows are missing or skipped is "not measured", with the reason.
"""
from __future__ import annotations

from typing import Any

from gpucheck.report import Row


def _usable(rows: dict[str, Row], *cases: str) -> str | None:
    """None when every case was measured; else why not."""
    for case in cases:
        row = rows.get(case)
        if row is None:
            return f"{case} not run"
        if row.status not in ("ok", "pass"):
            return f"{case} {row.status}" + (f": {row.reason}" if row.reason else "")
    return None


def _target(text: str, measured: str, met: bool | None, why_not: str | None = None) -> dict[str, Any]:
    verdict = "not measured" if met is None else ("met" if met else "NOT met")
    return {"target": text, "measured": measured if met is not None else (why_not or "-"), "verdict": verdict,
            "met": met}


def evaluate(rows: dict[str, Row], largest_preset: str) -> list[dict[str, Any]]:
    out = []
    why = _usable(rows, "kern-ce-bf16-ours", "kern-ce-bf16-plain")
    if why is None:
        ours, plain = rows["kern-ce-bf16-ours"].metrics, rows["kern-ce-bf16-plain"].metrics
        memory = ours["peak_bytes"] / plain["peak_bytes"]
        out.append(_target("fused CE (bf16) peak memory <= 1/8 of plain Linear + CE", f"{memory:.3f} of plain",
                           memory <= 1 / 8))
        out.append(_target("fused CE (bf16) time <= plain Linear + CE", f"{ours['median_s'] / plain['median_s']:.2f} "
                                                                          f"of plain", ours["median_s"] <= plain["median_s"]))
    else:
        out.append(_target("fused CE (bf16) peak memory <= 1/8 of plain Linear + CE", "", None, why))
        out.append(_target("fused CE (bf16) time <= plain Linear + CE", "", None, why))
    for peer, name in (("liger", "Liger-Kernel"), ("cce", "Cut Cross-Entropy")):
        text = f"fused CE (bf16) ahead of {name} in time or memory"
        why = _usable(rows, "kern-ce-bf16-ours", f"kern-ce-bf16-{peer}")
        if why is not None:
            out.append(_target(text, "", None, why))
            continue
        ours, theirs = rows["kern-ce-bf16-ours"].metrics, rows[f"kern-ce-bf16-{peer}"].metrics
        time_ratio, memory_ratio = ours["median_s"] / theirs["median_s"], ours["peak_bytes"] / theirs["peak_bytes"]
        out.append(_target(text, f"time {time_ratio:.2f}, memory {memory_ratio:.2f} of theirs",
                           time_ratio < 1 or memory_ratio < 1))

    why = _usable(rows, "mvq-encode-ours", "mvq-encode-reference")
    speedup = rows["mvq-encode-reference"].metrics.get("ours_speedup") if why is None else None
    out.append(_target("MVQ encode >= 20x multi-quantization on the same device",
                       f"{speedup:.1f}x" if speedup is not None else "", None if speedup is None else speedup >= 20,
                       why))
    why = _usable(rows, "mvq-encode-ours", "mvq-teacher-forward")
    fraction = rows["mvq-teacher-forward"].metrics.get("encode_fraction_of_teacher") if why is None else None
    out.append(_target("MVQ encode <= 10 % of the teacher's forward time", f"{fraction * 100:.1f} %"
                       if fraction is not None else "", None if fraction is None else fraction <= 0.10, why))

    spear, plain = f"step-{largest_preset}-spear", f"step-{largest_preset}-plain"
    why = _usable(rows, spear, plain)
    speedup = rows[plain].metrics.get("spear_speedup") if why is None else None
    out.append(_target(f"{largest_preset} training step >= 1.5x plain eager", f"{speedup:.2f}x"
                       if speedup is not None else "", None if speedup is None else speedup >= 1.5, why))
    why = _usable(rows, spear)
    mfu = rows[spear].metrics.get("mfu") if why is None else None
    if why is None and mfu is None:
        why = rows[spear].reason or "MFU not computed"
    out.append(_target(f"{largest_preset} training step MFU >= 40 % (bf16)", f"{mfu * 100:.1f} %"
                       if mfu is not None else "", None if mfu is None else mfu >= 0.40, why))
    return out
