"""Which worker this process is and which clips it owns (worker ids from `--shard i/n` or torchrun's
RANK/WORLD_SIZE, the tag that names each worker's files, the every-n-th split of the clips), and the
record files through which a pass's workers resume and learn that all of them have finished."""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from spear_fast.data.manifest import ManifestEntry
from spear_fast.errors import UserError


def parse_shard(text: str | None) -> tuple[int, int]:
    """'i/n' -> (i, n) with 0 <= i < n; None -> the torchrun worker (RANK/WORLD_SIZE) or (0, 1)."""
    if text is None:
        rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
        if rank is None or world is None:
            return 0, 1
        text = f"{rank}/{world}"
    index, sep, count = str(text).partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        raise UserError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if not sep or not 0 <= i < n or n > 9999:
        raise UserError(f"--shard must be i/n with 0 <= i < n <= 9999, got {text!r}")
    return i, n


def worker_tag(worker: tuple[int, int]) -> str:
    return f"w{worker[0]:04d}of{worker[1]:04d}"


def shard_entries(entries: Sequence[ManifestEntry], worker: tuple[int, int]) -> list[ManifestEntry]:
    """Worker i of n takes every n-th entry starting at i (manifest order): equal shares of every part
    of the manifest, and the same split on every restart of an unchanged manifest."""
    index, count = worker
    return list(entries[index::count])


def selection_hash(entries: Sequence[ManifestEntry], settings: Sequence[object] = ()) -> str:
    """Identifies a worker's clip list (ids, files, segments), and the settings that choose its output
    when given: a record written for another selection must not be resumed."""
    digest = hashlib.sha256()
    if settings:
        digest.update(("\t".join(str(s) for s in settings) + "\n").encode())
    for e in entries:
        digest.update(f"{e.id}\t{e.path}\t{e.offset}\t{e.segment_duration}\n".encode())
    return digest.hexdigest()[:16]


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as stream:
        return json.load(stream)


def all_finished(job: str, records: Sequence[Path], finished: Callable[[Path], bool], finishing: str) -> bool:
    """Whether the record of every worker says it finished; if not, say which have not. The last worker
    to finish does what the pass does once (`finishing`: merge, finalize)."""
    left = [path.name for path in records if not finished(path)]
    if left:
        print(f"{job}: {len(left)} of {len(records)} workers not finished ({', '.join(left[:5])}); "
              f"the last one to finish {finishing} (or run with --finalize)")
    return not left
