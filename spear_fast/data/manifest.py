"""Manifests: one JSON object per line, one line per utterance (or per segment of a file).

    {"id": "spk1/utt003", "path": "/data/spk1/utt003.flac", "duration": 4.21, "sample_rate": 44100,
     "domain": "speech", "offset": 0.0, "segment_duration": null, "meta": {"licence": "CC-BY-4.0"}}

id: unique key (token stores are keyed by it); path: the audio file (a relative path is relative to
the manifest's own directory); duration: the whole file's length in seconds; sample_rate: the file's
native rate; domain: "speech" or "audio" (which teachers' losses apply, SPEAR.md section 6); offset /
segment_duration: the part of the file this entry stands for (None: to the end); meta: free JSON.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from spear_fast.atomic import atomic_open
from spear_fast.errors import UserError

DOMAINS = ("speech", "audio")
# File types manifest_from_dir picks up by default: those libsndfile decodes (spear_fast.audio.load_audio).
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".aiff", ".aif", ".au", ".w64", ".caf")
_FIELDS = ("id", "path", "duration", "sample_rate", "domain", "offset", "segment_duration", "meta")
_REQUIRED = ("id", "path", "duration", "sample_rate", "domain")


class ManifestError(UserError):
    """A manifest line or entry that breaks the format; the message names the file, line and field."""


@dataclass
class ManifestEntry:
    id: str
    path: str
    duration: float  # seconds, the whole file
    sample_rate: int  # Hz, the file's native rate
    domain: str  # "speech" | "audio"
    offset: float = 0.0  # seconds into the file where this entry starts
    segment_duration: float | None = None  # seconds from offset; None = to the end of the file
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def effective_duration(self) -> float:
        """Seconds of audio this entry stands for."""
        if self.segment_duration is not None:
            return self.segment_duration
        return self.duration - self.offset

    def validate(self, where: str = "") -> None:
        """Raise ManifestError naming `where` (e.g. "m.jsonl line 3") and the bad field."""
        prefix = f"{where}: " if where else ""

        def bad(name: str, why: str) -> ManifestError:
            return ManifestError(f"{prefix}field {name!r} {why} (entry id {self.id!r})")

        if not isinstance(self.id, str) or not self.id:
            raise bad("id", f"must be a non-empty string, got {self.id!r}")
        if not isinstance(self.path, str) or not self.path:
            raise bad("path", f"must be a non-empty string, got {self.path!r}")
        if not _is_number(self.duration) or not math.isfinite(self.duration) or self.duration <= 0:
            raise bad("duration", f"must be a finite number of seconds > 0, got {self.duration!r}")
        if isinstance(self.sample_rate, bool) or not isinstance(self.sample_rate, int) or self.sample_rate <= 0:
            raise bad("sample_rate", f"must be a positive integer, got {self.sample_rate!r}")
        if self.domain not in DOMAINS:
            raise bad("domain", f"must be one of {DOMAINS}, got {self.domain!r}")
        if not _is_number(self.offset) or not math.isfinite(self.offset) or not 0 <= self.offset < self.duration:
            raise bad("offset", f"must be a number in [0, duration={self.duration}), got {self.offset!r}")
        if self.segment_duration is not None:
            if not _is_number(self.segment_duration) or not math.isfinite(self.segment_duration) or self.segment_duration <= 0:
                raise bad("segment_duration", f"must be None or a number > 0, got {self.segment_duration!r}")
            # 1 ms of slack: durations in manifests are rounded decimal seconds.
            if self.offset + self.segment_duration > self.duration + 1e-3:
                raise bad(
                    "segment_duration",
                    f"runs past the end of the file: offset {self.offset} + {self.segment_duration} > "
                    f"duration {self.duration}",
                )
        if not isinstance(self.meta, dict):
            raise bad("meta", f"must be a JSON object, got {type(self.meta).__name__}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, record: Any, where: str = "") -> ManifestEntry:
        prefix = f"{where}: " if where else ""
        if not isinstance(record, dict):
            raise ManifestError(f"{prefix}expected a JSON object, got {type(record).__name__}")
        missing = [name for name in _REQUIRED if name not in record]
        if missing:
            raise ManifestError(f"{prefix}missing field(s) {missing}")
        unknown = sorted(set(record) - set(_FIELDS))
        if unknown:
            raise ManifestError(f"{prefix}unknown field(s) {unknown} (allowed: {list(_FIELDS)})")
        values = dict(record)
        if values.get("offset") is None:
            values["offset"] = 0.0
        if values.get("meta") is None:
            values["meta"] = {}
        entry = cls.__new__(cls)  # validate with the location before __post_init__'s anonymous check
        for name in _FIELDS:
            setattr(entry, name, values.get(name))
        if _is_number(entry.sample_rate) and float(entry.sample_rate).is_integer() and not isinstance(entry.sample_rate, bool):
            entry.sample_rate = int(entry.sample_rate)
        entry.validate(where)
        return entry


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_manifest(path: str | os.PathLike, *, resolve_paths: bool = True) -> list[ManifestEntry]:
    """Entries of a JSON-lines manifest; blank lines are skipped; duplicate ids are an error.

    With resolve_paths, relative audio paths are made absolute against the manifest's directory.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    entries: list[ManifestEntry] = []
    first_line: dict[str, int] = {}
    with open(path, "rb") as stream:
        for number, raw in enumerate(stream, start=1):
            where = f"{path} line {number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ManifestError(f"{where}: not UTF-8 text (byte {raw[error.start]:#04x} at column "
                                    f"{error.start + 1}); a manifest is JSON lines") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ManifestError(f"{where}: invalid JSON ({error.msg} at column {error.colno})") from error
            entry = ManifestEntry.from_dict(record, where)
            if entry.id in first_line:
                raise ManifestError(f"{where}: duplicate id {entry.id!r} (first on line {first_line[entry.id]})")
            first_line[entry.id] = number
            if resolve_paths and not os.path.isabs(entry.path):
                entry.path = os.path.normpath(os.path.join(path.parent.absolute(), entry.path))
            entries.append(entry)
    return entries


def write_manifest(
    path: str | os.PathLike, entries: Iterable[ManifestEntry], *, relative_paths: bool = False
) -> int:
    """Write entries atomically (temp file + os.replace); returns the number written.

    relative_paths stores each audio path relative to the manifest's directory (a portable corpus).
    Entries are validated and ids must be unique.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = path.parent.absolute()
    seen: set[str] = set()
    count = 0
    with atomic_open(path, "w", encoding="utf-8") as stream:
        for index, entry in enumerate(entries):
            if not isinstance(entry, ManifestEntry):
                raise ManifestError(f"{path}: entry {index} is a {type(entry).__name__}, not a ManifestEntry")
            entry.validate(f"{path} entry {index}")
            if entry.id in seen:
                raise ManifestError(f"{path} entry {index}: duplicate id {entry.id!r}")
            seen.add(entry.id)
            record = entry.to_dict()
            if relative_paths:
                record["path"] = os.path.relpath(os.path.abspath(entry.path), base)
            stream.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    return count


def manifest_from_dir(
    root: str | os.PathLike,
    domain: str,
    extensions: Sequence[str] = AUDIO_EXTENSIONS,
    meta: dict[str, Any] | None = None,
    progress: bool = True,
) -> tuple[list[ManifestEntry], list[tuple[str, str]]]:
    """Scan `root` recursively for audio files; returns (entries, skipped).

    ids are the paths relative to root without the extension ("spk1/utt003"); where two files differ
    only by extension, both keep their extension in the id. Durations and rates come from the file
    headers. Files that cannot be read (corrupt, empty, zero-length) are not fatal: they are returned
    in `skipped` as (path, reason). `meta` is copied into every entry.
    """
    from spear_fast.audio import AudioError, audio_info

    if domain not in DOMAINS:
        raise UserError(f"manifest_from_dir: domain must be one of {DOMAINS}, got {domain!r}")
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"manifest_from_dir: {root} is not a directory")
    wanted = tuple(ext.lower() if ext.startswith(".") else "." + ext.lower() for ext in extensions)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in wanted)
    stems: dict[str, int] = {}
    for file in files:
        stem = file.relative_to(root).with_suffix("").as_posix()
        stems[stem] = stems.get(stem, 0) + 1
    entries: list[ManifestEntry] = []
    skipped: list[tuple[str, str]] = []
    for file in tqdm(files, desc=f"scan {root}", unit="file", disable=not progress or len(files) < 100):
        relative = file.relative_to(root)
        stem = relative.with_suffix("").as_posix()
        utt_id = stem if stems[stem] == 1 else relative.as_posix()
        try:
            info = audio_info(file)
            if info.num_frames == 0:
                raise AudioError(file, "zero-length audio (the header declares 0 samples)")
        except AudioError as error:
            skipped.append((str(file), error.reason))
            continue
        entries.append(
            ManifestEntry(
                id=utt_id,
                path=str(file.absolute()),
                duration=info.duration,
                sample_rate=info.sample_rate,
                domain=domain,
                meta=dict(meta or {}),
            )
        )
    return entries, skipped


def manifest_from_lhotse(cuts: Any, domain: str) -> tuple[list[ManifestEntry], list[tuple[str, str]]]:
    """Entries from a lhotse CutSet (object or manifest path); returns (entries, skipped).

    Each single-recording cut whose audio is one file becomes an entry (offset = cut.start,
    segment_duration = cut.duration unless the cut spans the whole recording); supervision text,
    speaker and language go to meta. Cuts lhotse keeps elsewhere (URLs, memory, commands, mixed
    cuts, multi-file recordings) are returned in `skipped` as (cut id, reason).
    """
    try:
        from lhotse import CutSet
    except ImportError as error:
        raise ImportError("manifest_from_lhotse needs lhotse: pip install lhotse urllib3") from error
    if domain not in DOMAINS:
        raise UserError(f"manifest_from_lhotse: domain must be one of {DOMAINS}, got {domain!r}")
    if not isinstance(cuts, CutSet):
        cuts = CutSet.from_file(cuts)
    entries: list[ManifestEntry] = []
    skipped: list[tuple[str, str]] = []
    for cut in cuts:
        recording = getattr(cut, "recording", None)
        if recording is None or not getattr(cut, "has_recording", False):
            skipped.append((cut.id, f"{type(cut).__name__} without a single recording"))
            continue
        if len(recording.sources) != 1 or recording.sources[0].type != "file":
            kinds = [source.type for source in recording.sources]
            skipped.append((cut.id, f"recording {recording.id} is not one file (sources: {kinds})"))
            continue
        whole = cut.start <= 1e-6 and cut.duration >= recording.duration - 1e-6
        meta: dict[str, Any] = {"lhotse_recording_id": recording.id}
        supervisions = [
            {key: value for key, value in (("text", s.text), ("speaker", s.speaker), ("language", s.language)) if value}
            for s in cut.supervisions
        ]
        if any(supervisions):
            meta["supervisions"] = supervisions
        try:
            entries.append(
                ManifestEntry(
                    id=cut.id,
                    path=str(recording.sources[0].source),
                    duration=float(recording.duration),
                    sample_rate=int(recording.sampling_rate),
                    domain=domain,
                    offset=0.0 if whole else float(cut.start),
                    segment_duration=None if whole else float(cut.duration),
                    meta=meta,
                )
            )
        except ManifestError as error:
            skipped.append((cut.id, str(error)))
    return entries, skipped
