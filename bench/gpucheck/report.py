"""The results of one check: a JSON file and a markdown file beside it, both rewritten (atomically,
the alarm held back) after every case, so a run cut short still leaves every finished number.

A part holds rows, one per case. A row has the case's labels (its identifying table cells), the
measured cells (formatted for the table), the raw metrics (numbers, for the JSON and the targets),
a status and, for skipped or failed cases, the reason:

    ok        measured (time, memory, ...)
    pass      a check held (correctness within its tolerance, loss fell, ...)
    FAIL      a check did not hold: the metrics say by how much
    skipped   not run: a missing package, not applicable, or the time budget ran out
    error     the case raised: the reason holds the exception
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gpucheck.budget import alarm_held

from spear_fast.atomic import atomic_open, atomic_write_json

STATUSES = ("ok", "pass", "FAIL", "skipped", "error")


@dataclass
class Row:
    case: str  # stable id, e.g. "ce-bf16-ours" (the targets look rows up by it)
    status: str
    labels: dict[str, str] = field(default_factory=dict)
    cells: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"row {self.case!r}: status must be one of {STATUSES}, got {self.status!r}")


@dataclass
class PartRecord:
    number: int
    title: str
    columns: list[str]  # label columns, then measured columns (the status and note columns are added)
    budget_s: float
    status: str = "running"  # running | done | timed out
    elapsed_s: float | None = None
    note: str | None = None
    rows: list[Row] = field(default_factory=list)


def slug(text: str) -> str:
    """File-name form of a machine name: "NVIDIA H100 80GB HBM3" -> "nvidia-h100-80gb-hbm3"."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def free_stem(out_dir: Path, stem: str) -> str:
    """`stem`, or `stem-2`, `stem-3`, ... : the first whose .json does not exist yet in out_dir."""
    candidate, count = stem, 1
    while (out_dir / f"{candidate}.json").exists():
        count += 1
        candidate = f"{stem}-{count}"
    return candidate


def format_bytes(value: float | None) -> str:
    if value is None:
        return "n/a"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(value) >= size:
            return f"{value / size:.{1 if value / size < 100 else 0}f} {unit}"
    return f"{value:.0f} B"


def format_seconds(value: float | None) -> str:
    if value is None:
        return "n/a"
    if value >= 1.0:
        return f"{value:.2f} s"
    if value >= 1e-3:
        return f"{value * 1e3:.{2 if value < 1e-2 else 1}f} ms"
    return f"{value * 1e6:.0f} us"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


class Report:
    """Collects the parts' rows and keeps `<stem>.json` and `<stem>.md` in `out_dir` up to date."""

    def __init__(self, out_dir: Path, stem: str, header: dict[str, Any]):
        self.out_dir = Path(out_dir)
        self.json_path = self.out_dir / f"{stem}.json"
        self.md_path = self.out_dir / f"{stem}.md"
        self.header = dict(header)
        self.parts: dict[int, PartRecord] = {}
        self.targets: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ recording
    def start_part(self, number: int, title: str, columns: list[str], budget_s: float) -> None:
        self.parts[number] = PartRecord(number, title, list(columns), round(budget_s, 1))
        self.write()

    def add(self, number: int, row: Row) -> None:
        self.parts[number].rows.append(row)
        self.write()

    def end_part(self, number: int, status: str, elapsed_s: float, note: str | None = None) -> None:
        part = self.parts[number]
        part.status, part.elapsed_s, part.note = status, round(elapsed_s, 1), note
        self.write()

    def rows(self) -> dict[str, Row]:
        """Every row so far by case id."""
        return {row.case: row for part in self.parts.values() for row in part.rows}

    def set_targets(self, targets: list[dict[str, Any]]) -> None:
        self.targets = targets
        self.write()

    # ------------------------------------------------------------------ output
    def as_dict(self) -> dict[str, Any]:
        return {**self.header, "parts": [asdict(part) for part in sorted(self.parts.values(), key=lambda p: p.number)],
                "targets": self.targets}

    def markdown(self) -> str:
        head = self.header
        lines = [f"# GPU check: {head.get('machine', '?')}, {head.get('date', '?')}", ""]
        lines.append(f"Command: `{head.get('command', '?')}`" + ("  (dry run: CPU, tiny sizes)" if head.get("dry_run") else ""))
        versions = ", ".join(f"{name} {version}" for name, version in head.get("versions", {}).items())
        lines += [f"Versions: {versions}", ""]
        for part in sorted(self.parts.values(), key=lambda p: p.number):
            elapsed = f", {part.elapsed_s:.0f} s" if part.elapsed_s is not None else ""
            lines.append(f"## {part.number}. {part.title} ({part.status}{elapsed} of a {part.budget_s:.0f} s budget)")
            lines.append("")
            columns = part.columns + ["status", "note"]
            lines.append("| " + " | ".join(columns) + " |")
            lines.append("|" + "---|" * len(columns))
            for row in part.rows:
                values = {**row.labels, **row.cells, "status": row.status, "note": row.reason or ""}
                lines.append("| " + " | ".join(_cell(values.get(column, "")) for column in columns) + " |")
            if part.note:
                lines += ["", part.note]
            lines.append("")
        if self.targets:
            lines += ["## Targets", ""]
            if head.get("dry_run"):
                lines += ["Dry run: CPU figures at tiny sizes, which the targets (set for a GPU run) do not apply to.", ""]
            lines += ["| target | measured | verdict |", "|---|---|---|"]
            for target in self.targets:
                lines.append(f"| {_cell(target['target'])} | {_cell(target['measured'])} | {_cell(target['verdict'])} |")
            lines.append("")
        return "\n".join(lines)

    def write(self) -> None:
        with alarm_held():
            atomic_write_json(self.json_path, self.as_dict())
            with atomic_open(self.md_path, "w", encoding="utf-8") as stream:
                stream.write(self.markdown())

