"""Atomic file writes: the one place the project writes a file so that a crash never leaves a
half-written file under the final name (temp file beside it, flush + fsync, then os.replace)."""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """Open a temporary file beside `path`; when the block ends without error it is fsynced and
    moved onto `path`; on error it is removed and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=encoding) as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise


def atomic_write_json(path: str | os.PathLike, record: Any, indent: int | None = 1) -> None:
    with atomic_open(path, "w", encoding="utf-8") as stream:
        json.dump(record, stream, indent=indent)
        stream.write("\n")
