"""Token store: one teacher's MVQ tokens for a whole corpus, sharded, memory-mapped, checksummed.

Format (version 1), a directory:

    meta.json                     written by finalize: format name + version, teacher, layer,
                                  frame_rate (Hz), num_codebooks (N), codebook_size (256),
                                  quantizer_hash, teacher_spec, refine_iters (every setting that
                                  changes the tokens), dtype "uint8", num_utterances, num_frames, and per
                                  shard: name, frames, utterances, sha256 of its .npy file
    index.npz                     written by finalize: ids (uint8: the ids' UTF-8 joined by "\n"),
                                  shard (int32), start (int64), length (int64), one row per utterance
    shards/<name>.npy             uint8 array (total_T, N): the utterances' token frames back to back
    shards/<name>.json            the shard's own index: ids, starts, lengths, frames, sha256 of the
                                  .npy, and the writer's meta; written LAST, so it marks the shard
                                  complete (a .npy without its .json is an interrupted write and is
                                  ignored and overwritten)

Shard names are `w{i:04d}of{n:04d}-{seq:06d}`: worker i of n (the `--shard i/n` of a parallel
tokenise run; each worker writes only its own files) and the worker's shard counter. Every file is
written to a temporary name and moved into place with os.replace, so a shard is either complete
(with its checksum) or absent. Reopening a writer skips the ids already in complete shards, and
`finalize_token_store(dir)` (one process, after all workers) checks that all shards agree on the
meta and share no id, then writes index.npz and meta.json. `TokenStore(dir)[utt_id]` is an O(1)
dict lookup and a slice of a memory-mapped shard: a read-only (T, N) uint8 array.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spear_fast.atomic import atomic_open, atomic_write_json
from spear_fast.errors import UserError

FORMAT_NAME = "spear-fast token store"
FORMAT_VERSION = 1
DEFAULT_SHARD_FRAMES = 1 << 20  # 1M frames per shard: 16 MB for 16 codebooks (~5.8 h of 50 Hz audio)
_SHARD_NAME = re.compile(r"^w(\d{4})of(\d{4})-(\d{6})$")
_HASH_BLOCK = 1 << 22


class TokenStoreError(UserError):
    """A missing, incomplete, corrupt or mismatched token store; the message names the file."""


@dataclass(frozen=True)
class TokenStoreMeta:
    """What the tokens are: which teacher/layer at which frame rate, coded by which quantiser."""

    teacher: str
    layer: int | None  # teacher layer the frames came from (None: the teacher's default output)
    frame_rate: float  # token frames per second
    num_codebooks: int  # N: bytes per frame
    quantizer_hash: str  # identifies the MVQ quantiser (tokens of another quantiser are meaningless)
    codebook_size: int = 256
    # How the frames were encoded; None in stores written before these were recorded. Tokens of another
    # teacher spec (weights, layer, context, dtype) or of another number of refine passes differ.
    teacher_spec: str | None = None  # TeacherSpec.identity() of the teacher
    refine_iters: int | None = None  # MVQ refine passes of the encoding

    def __post_init__(self) -> None:
        if not isinstance(self.teacher, str) or not self.teacher:
            raise ValueError(f"TokenStoreMeta: teacher must be a non-empty string, got {self.teacher!r}")
        if self.layer is not None and (isinstance(self.layer, bool) or not isinstance(self.layer, int)):
            raise ValueError(f"TokenStoreMeta: layer must be an int or None, got {self.layer!r}")
        if not isinstance(self.frame_rate, (int, float)) or not self.frame_rate > 0:
            raise ValueError(f"TokenStoreMeta: frame_rate must be > 0, got {self.frame_rate!r}")
        if isinstance(self.num_codebooks, bool) or not isinstance(self.num_codebooks, int) or self.num_codebooks <= 0:
            raise ValueError(f"TokenStoreMeta: num_codebooks must be a positive int, got {self.num_codebooks!r}")
        if not isinstance(self.quantizer_hash, str) or not self.quantizer_hash:
            raise ValueError(f"TokenStoreMeta: quantizer_hash must be a non-empty string, got {self.quantizer_hash!r}")
        if not isinstance(self.codebook_size, int) or not 1 <= self.codebook_size <= 256:
            raise ValueError(f"TokenStoreMeta: codebook_size must be in [1, 256] (uint8 tokens), got {self.codebook_size!r}")
        if self.teacher_spec is not None and (not isinstance(self.teacher_spec, str) or not self.teacher_spec):
            raise ValueError(f"TokenStoreMeta: teacher_spec must be a non-empty string or None, got {self.teacher_spec!r}")
        if self.refine_iters is not None and (isinstance(self.refine_iters, bool) or not isinstance(self.refine_iters, int)
                                              or self.refine_iters < 0):
            raise ValueError(f"TokenStoreMeta: refine_iters must be an int >= 0 or None, got {self.refine_iters!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, record: dict[str, Any], where: str) -> TokenStoreMeta:
        fields = dataclasses.fields(cls)
        missing = [f.name for f in fields if f.name not in record and f.default is dataclasses.MISSING]
        if missing:
            raise TokenStoreError(f"{where}: missing meta field(s) {missing}")
        try:
            return cls(**{f.name: record[f.name] for f in fields if f.name in record})
        except ValueError as error:
            raise TokenStoreError(f"{where}: {error}") from error

    def mismatches(self, other: TokenStoreMeta) -> list[str]:
        """'field: mine vs theirs' for every field that differs."""
        return [
            f"{f.name}: {getattr(self, f.name)!r} vs {getattr(other, f.name)!r}"
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != getattr(other, f.name)
        ]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(_HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def _atomic_write(path: Path, write) -> None:
    """Call write(binary_stream) on a temp file beside `path`, fsync, then os.replace onto `path`."""
    with atomic_open(path, "wb") as stream:
        write(stream)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as stream:
            record = json.load(stream)
    except FileNotFoundError as error:
        raise TokenStoreError(f"{path}: not found") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise TokenStoreError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(record, dict):
        raise TokenStoreError(f"{path}: expected a JSON object")
    return record


@dataclass
class _ShardIndex:
    name: str
    ids: list[str]
    starts: list[int]
    lengths: list[int]
    frames: int
    sha256: str
    meta: TokenStoreMeta


def _read_shard_index(path: Path) -> _ShardIndex:
    record = _read_json(path)
    try:
        shard = _ShardIndex(
            name=path.stem,
            ids=list(record["ids"]),
            starts=[int(s) for s in record["starts"]],
            lengths=[int(n) for n in record["lengths"]],
            frames=int(record["frames"]),
            sha256=str(record["sha256"]),
            meta=TokenStoreMeta.from_dict(record["meta"], str(path)),
        )
    except (KeyError, TypeError, ValueError) as error:
        if isinstance(error, TokenStoreError):
            raise
        raise TokenStoreError(f"{path}: malformed shard index ({error!r})") from error
    if not len(shard.ids) == len(shard.starts) == len(shard.lengths):
        raise TokenStoreError(f"{path}: ids/starts/lengths differ in length")
    return shard


def stored_ids(directory: str | os.PathLike) -> set[str]:
    """Ids held by the complete shards of a (finalized or not) token store directory."""
    return {utt_id for shard in _complete_shards(Path(directory)) for utt_id in shard.ids}


def _complete_shards(directory: Path) -> list[_ShardIndex]:
    shard_dir = directory / "shards"
    if not shard_dir.is_dir():
        return []
    return [_read_shard_index(p) for p in sorted(shard_dir.glob("*.json")) if _SHARD_NAME.match(p.stem)]


class TokenStoreWriter:
    """Append utterances' tokens to a token store directory, one shard file at a time.

        with TokenStoreWriter(out_dir, meta, worker=(i, n)) as writer:
            for utt_id, wave in todo:
                if utt_id in writer:      # stored by an earlier (interrupted) run
                    continue
                writer.add(utt_id, tokens)   # (T, N) integer array in [0, codebook_size)
        finalize_token_store(out_dir)    # once, after every worker has closed

    Buffered utterances are written as a shard when they reach `shard_frames` frames and on close
    (also when the `with` block ends by an exception: finished utterances are not lost).
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        meta: TokenStoreMeta,
        shard_frames: int = DEFAULT_SHARD_FRAMES,
        worker: tuple[int, int] = (0, 1),
    ):
        if not isinstance(meta, TokenStoreMeta):
            raise ValueError(f"TokenStoreWriter: meta must be a TokenStoreMeta, got {type(meta).__name__}")
        if shard_frames <= 0:
            raise ValueError(f"TokenStoreWriter: shard_frames must be > 0, got {shard_frames}")
        index, count = worker
        if not (isinstance(index, int) and isinstance(count, int) and 0 <= index < count <= 9999):
            raise ValueError(f"TokenStoreWriter: worker must be (i, n) with 0 <= i < n <= 9999, got {worker!r}")
        self.directory = Path(directory)
        self.meta = meta
        self.shard_frames = shard_frames
        self.worker = (index, count)
        self.shard_dir = self.directory / "shards"
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        meta_path = self.directory / "meta.json"
        if meta_path.exists():  # a finalized store being extended: must be the same tokens
            stored = TokenStoreMeta.from_dict(_read_json(meta_path), str(meta_path))
            self._check_meta(stored, meta_path)
        self._done: set[str] = set()
        prefix = f"w{index:04d}of{count:04d}-"
        self._next_seq = 0
        for shard in _complete_shards(self.directory):
            self._check_meta(shard.meta, self.shard_dir / f"{shard.name}.json")
            self._done.update(shard.ids)
            if shard.name.startswith(prefix):
                self._next_seq = max(self._next_seq, int(shard.name[len(prefix):]) + 1)
        self._prefix = prefix
        self._buffer: list[np.ndarray] = []
        self._buffer_ids: list[str] = []
        self._buffer_frames = 0
        self.shards_written: list[str] = []
        self._closed = False

    def _check_meta(self, stored: TokenStoreMeta, where: Path) -> None:
        differences = self.meta.mismatches(stored)
        if differences:
            raise TokenStoreError(
                f"{where}: the store holds other tokens than this writer's (writer vs stored: "
                + "; ".join(differences)
                + "); use the store's settings, or another directory"
            )

    def __contains__(self, utt_id: str) -> bool:
        return utt_id in self._done

    @property
    def done_ids(self) -> frozenset[str]:
        """Ids already stored (complete shards, any worker) or buffered by this writer."""
        return frozenset(self._done)

    def add(self, utt_id: str, tokens: Any) -> bool:
        """Buffer one utterance's tokens (T, N); False (and nothing written) if the id is stored already."""
        if self._closed:
            raise ValueError(f"TokenStoreWriter({self.directory}): add() after close()")
        if not isinstance(utt_id, str) or not utt_id or "\n" in utt_id:
            raise ValueError(f"TokenStoreWriter.add: utt_id must be a non-empty one-line string, got {utt_id!r}")
        if utt_id in self._done:
            return False
        if hasattr(tokens, "detach"):  # torch tensor
            tokens = tokens.detach().cpu().numpy()
        tokens = np.asarray(tokens)
        if tokens.ndim != 2 or tokens.shape[1] != self.meta.num_codebooks or tokens.shape[0] == 0:
            raise ValueError(
                f"TokenStoreWriter.add({utt_id!r}): expected tokens of shape (T >= 1, {self.meta.num_codebooks}), "
                f"got {tuple(tokens.shape)}"
            )
        if tokens.dtype.kind not in "iu":
            raise ValueError(f"TokenStoreWriter.add({utt_id!r}): tokens must be integers, got dtype {tokens.dtype}")
        low, high = int(tokens.min()), int(tokens.max())
        if low < 0 or high >= self.meta.codebook_size:
            raise ValueError(
                f"TokenStoreWriter.add({utt_id!r}): token values must lie in [0, {self.meta.codebook_size}), "
                f"got min {low} max {high}"
            )
        self._buffer.append(tokens.astype(np.uint8))
        self._buffer_ids.append(utt_id)
        self._buffer_frames += tokens.shape[0]
        self._done.add(utt_id)
        if self._buffer_frames >= self.shard_frames:
            self.flush()
        return True

    def flush(self) -> str | None:
        """Write the buffered utterances as one complete shard now; returns its name (None if empty)."""
        if not self._buffer:
            return None
        name = f"{self._prefix}{self._next_seq:06d}"
        array = np.concatenate(self._buffer, axis=0)  # (total_T, N) uint8
        lengths = [len(t) for t in self._buffer]
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64).tolist()
        npy_path = self.shard_dir / f"{name}.npy"
        _atomic_write(npy_path, lambda stream: np.lib.format.write_array(stream, array, allow_pickle=False))
        record = {
            "ids": self._buffer_ids,
            "starts": starts,
            "lengths": lengths,
            "frames": int(array.shape[0]),
            "sha256": _sha256(npy_path),
            "meta": self.meta.to_dict(),
        }
        atomic_write_json(self.shard_dir / f"{name}.json", record)  # last: marks the shard complete
        self._next_seq += 1
        self._buffer, self._buffer_ids, self._buffer_frames = [], [], 0
        self.shards_written.append(name)
        return name

    def close(self) -> None:
        if not self._closed:
            self.flush()
            self._closed = True

    def finalize(self) -> TokenStore:
        """close() and build the store's index (only when this is the only writer)."""
        self.close()
        return finalize_token_store(self.directory)

    def __enter__(self) -> TokenStoreWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def finalize_token_store(directory: str | os.PathLike, *, verify: bool = True) -> TokenStore:
    """Merge every complete shard of `directory` into index.npz + meta.json; returns the opened store.

    Fails (naming the files) when shards disagree on the meta or store the same id twice; with
    `verify`, every shard's checksum is recomputed first. Files of interrupted writes are removed.
    """
    directory = Path(directory)
    shards = _complete_shards(directory)
    if not shards:
        raise TokenStoreError(f"{directory}: no complete shard under {directory / 'shards'}")
    meta = shards[0].meta
    owner: dict[str, str] = {}
    for shard in shards:
        differences = meta.mismatches(shard.meta)
        if differences:
            raise TokenStoreError(
                f"{directory / 'shards' / (shard.name + '.json')}: meta differs from shard {shards[0].name} ("
                + "; ".join(differences)
                + ")"
            )
        npy_path = directory / "shards" / f"{shard.name}.npy"
        if not npy_path.is_file():
            raise TokenStoreError(f"{npy_path}: shard data missing (its index {shard.name}.json exists)")
        if verify and _sha256(npy_path) != shard.sha256:
            raise TokenStoreError(f"{npy_path}: sha256 does not match the one recorded when it was written")
        for utt_id in shard.ids:
            if utt_id in owner:
                raise TokenStoreError(f"{directory}: id {utt_id!r} is stored twice, in shards {owner[utt_id]} and {shard.name}")
            owner[utt_id] = shard.name
    # Leftovers of interrupted writes: .npy without .json, temp files.
    complete = {shard.name for shard in shards}
    for path in (directory / "shards").iterdir():
        stem = path.name[: -len(".npy")] if path.name.endswith(".npy") else None
        if path.name.endswith(".tmp") or (stem is not None and stem not in complete):
            path.unlink()
    ids = [utt_id for shard in shards for utt_id in shard.ids]
    shard_of = np.concatenate([np.full(len(s.ids), i, dtype=np.int32) for i, s in enumerate(shards)])
    starts = np.concatenate([np.asarray(s.starts, dtype=np.int64) for s in shards])
    lengths = np.concatenate([np.asarray(s.lengths, dtype=np.int64) for s in shards])
    # Ids as one UTF-8 blob: a fixed-width unicode array would cost 4 bytes x the longest id per row.
    ids_blob = np.frombuffer("\n".join(ids).encode("utf-8"), dtype=np.uint8)
    _atomic_write(
        directory / "index.npz",
        lambda stream: np.savez(stream, ids=ids_blob, shard=shard_of, start=starts, length=lengths),
    )
    record = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        **meta.to_dict(),
        "dtype": "uint8",
        "num_utterances": len(ids),
        "num_frames": int(lengths.sum()),
        "index_sha256": _sha256(directory / "index.npz"),
        "shards": [
            {"name": s.name, "frames": s.frames, "utterances": len(s.ids), "sha256": s.sha256} for s in shards
        ],
    }
    atomic_write_json(directory / "meta.json", record)
    return TokenStore(directory)


class TokenStore:
    """Read a finalized token store: `store[utt_id]` -> read-only (T, N) uint8 array (memory-mapped).

    Optional expectations (num_codebooks, quantizer_hash, teacher, frame_rate) are checked against
    meta.json at open; a mismatch raises TokenStoreError naming the file and both values.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        num_codebooks: int | None = None,
        quantizer_hash: str | None = None,
        teacher: str | None = None,
        frame_rate: float | None = None,
    ):
        self.directory = Path(directory)
        meta_path = self.directory / "meta.json"
        if not self.directory.is_dir():
            raise TokenStoreError(f"{self.directory}: token store directory not found")
        if not meta_path.is_file():
            raise TokenStoreError(
                f"{meta_path}: not found; the store was never finalized (run finalize_token_store on it)"
            )
        record = _read_json(meta_path)
        if record.get("format") != FORMAT_NAME or record.get("format_version") != FORMAT_VERSION:
            raise TokenStoreError(
                f"{meta_path}: format {record.get('format')!r} version {record.get('format_version')!r}, "
                f"this code reads {FORMAT_NAME!r} version {FORMAT_VERSION}"
            )
        self.meta = TokenStoreMeta.from_dict(record, str(meta_path))
        expected = {"num_codebooks": num_codebooks, "quantizer_hash": quantizer_hash, "teacher": teacher, "frame_rate": frame_rate}
        for name, value in expected.items():
            if value is not None and getattr(self.meta, name) != value:
                raise TokenStoreError(f"{meta_path}: {name} is {getattr(self.meta, name)!r}, expected {value!r}")
        self._shards = list(record["shards"])
        index_path = self.directory / "index.npz"
        if not index_path.is_file():
            raise TokenStoreError(f"{index_path}: not found")
        try:
            with np.load(index_path, allow_pickle=False) as index:
                self._ids = index["ids"].tobytes().decode("utf-8").split("\n")
                self._shard_of = index["shard"]
                self._start = index["start"]
                self._length = index["length"]
        except (zipfile.BadZipFile, OSError, ValueError, KeyError, EOFError) as error:
            raise TokenStoreError(f"{index_path}: not a readable index ({type(error).__name__}: {error}); rebuild it "
                                  f"from the shards: rerun the store's `spear tokenize` command with --finalize") from None
        if not len(self._ids) == len(self._shard_of) == len(self._start) == len(self._length) == record.get("num_utterances"):
            raise TokenStoreError(f"{index_path}: row counts disagree with each other or with meta.json")
        self._row = {utt_id: row for row, utt_id in enumerate(self._ids)}
        self._arrays: dict[int, np.ndarray] = {}

    def _array(self, shard: int) -> np.ndarray:
        array = self._arrays.get(shard)
        if array is None:
            path = self.directory / "shards" / f"{self._shards[shard]['name']}.npy"
            if not path.is_file():
                raise TokenStoreError(f"{path}: shard file missing")
            array = np.load(path, mmap_mode="r", allow_pickle=False)
            expected = (self._shards[shard]["frames"], self.meta.num_codebooks)
            if array.shape != expected or array.dtype != np.uint8:
                raise TokenStoreError(f"{path}: holds {array.dtype} {array.shape}, meta.json says uint8 {expected}")
            self._arrays[shard] = array
        return array

    def __getitem__(self, utt_id: str) -> np.ndarray:
        row = self._row.get(utt_id)
        if row is None:
            raise KeyError(f"{utt_id!r} is not in token store {self.directory}")
        start, length = int(self._start[row]), int(self._length[row])
        return self._array(int(self._shard_of[row]))[start : start + length]  # (T, N) uint8, read-only

    def num_frames(self, utt_id: str) -> int:
        """Token frames of one utterance, without touching its shard."""
        row = self._row.get(utt_id)
        if row is None:
            raise KeyError(f"{utt_id!r} is not in token store {self.directory}")
        return int(self._length[row])

    def __contains__(self, utt_id: object) -> bool:
        return utt_id in self._row

    def __len__(self) -> int:
        return len(self._ids)

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    @property
    def ids(self) -> list[str]:
        return list(self._ids)

    def verify(self) -> None:
        """Recompute every shard's sha256 (and the index's); TokenStoreError naming each bad file."""
        problems = []
        index_path = self.directory / "index.npz"
        record = _read_json(self.directory / "meta.json")
        if _sha256(index_path) != record.get("index_sha256"):
            problems.append(f"{index_path}: sha256 mismatch")
        for shard in self._shards:
            path = self.directory / "shards" / f"{shard['name']}.npy"
            if not path.is_file():
                problems.append(f"{path}: missing")
            elif _sha256(path) != shard["sha256"]:
                problems.append(f"{path}: sha256 mismatch (corrupt or modified since it was written)")
        if problems:
            raise TokenStoreError("token store verification failed: " + "; ".join(problems) + ". To repair: delete "
                                  "each bad shard's .npy and .json and rerun `spear tokenize` with the store's "
                                  "arguments (it tokenizes the missing clips again and finalizes the store)")

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers re-open the memory maps themselves
        state = self.__dict__.copy()
        state["_arrays"] = {}
        return state
