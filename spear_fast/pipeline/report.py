"""Skip reports: the clips a pass left out, one JSON object per line {"id", "path", "reason"}.

Each worker keeps its own file (two workers never write one file) and rewrites it atomically
(temp file + os.replace) whenever it grows, so a crash leaves the previous complete version. A clip
reported by an earlier run is tried again on restart (its line is replaced by the new outcome, or
dropped if the clip now works). `merge_reports` joins the workers' files into one at the end.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from .clips import Skip

from spear_fast.atomic import atomic_open
from spear_fast.errors import UserError


def read_report(path: Path) -> list[Skip]:
    """The records of a report file ([] when it does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    with open(path, encoding="utf-8") as stream:
        for number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                records.append(Skip(str(record["id"]), str(record["path"]), str(record["reason"])))
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise UserError(f"{path} line {number}: not a skip record ({error})") from error
    return records


def _write(path: Path, records: Iterable[Skip]) -> None:
    with atomic_open(path, "w", encoding="utf-8") as stream:
        for record in records:
            stream.write(json.dumps(record.to_dict(), ensure_ascii=False) + "\n")


class SkipReport:
    """A worker's report file: `add(skips)` records and rewrites; `forget(ids)` drops the records of
    clips that a later attempt processed."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._records: dict[str, Skip] = {r.id: r for r in read_report(self.path)}

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, utt_id: object) -> bool:
        return utt_id in self._records

    @property
    def records(self) -> list[Skip]:
        return list(self._records.values())

    def forget(self, ids: Iterable[str]) -> None:
        changed = False
        for utt_id in ids:
            changed |= self._records.pop(utt_id, None) is not None
        if changed:
            _write(self.path, self._records.values())

    def add(self, skips: Iterable[Skip]) -> None:
        skips = list(skips)
        if not skips:
            return
        for skip in skips:
            self._records[skip.id] = skip
        _write(self.path, self._records.values())


def merge_reports(paths: Iterable[Path], out: Path) -> int:
    """Write the union of the worker reports to `out` (sorted by id); returns the number of records."""
    records: dict[str, Skip] = {}
    for path in sorted(paths):
        for record in read_report(path):
            records[record.id] = record
    _write(Path(out), [records[k] for k in sorted(records)])
    return len(records)
