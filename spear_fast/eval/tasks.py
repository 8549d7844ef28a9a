"""Probe tasks as data: DIR/task.json + one manifest per split.

task.json (what `spear prepare-demo` writes under probes/<task>/, and `spear make-task` for your own):
    {"name": "voice_id", "type": "utterance", "labels": ["en-us:m1", ...], "metric": "accuracy",
     "label_field": "meta.label", "splits": {"train": "train.jsonl", "valid": "valid.jsonl",
     "test": "test.jsonl"}, "description": "..."}
Optional "subset_field" (utterance tasks): a dotted path holding each row's subset (e.g. "real" /
"synthetic" speakers); the test score is then also reported per subset.
type "utterance": the label field holds one label per row. type "frame": it holds a list of labels,
one per label frame at "label_rate" Hz (a required key for frame tasks; frame i covers
[i / label_rate, (i + 1) / label_rate) s of the row's audio). label_field is a dotted path into the
manifest row ("meta.label" or a top-level "label"). metric: "accuracy" or "macro_f1" (both are
always reported; metric names the one early stopping selects on).
"""
from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spear_fast.data.manifest import ManifestEntry, read_manifest, write_manifest
from spear_fast.errors import UserError

TASK_FILE = "task.json"
SPLITS = ("train", "valid", "test")
TASK_TYPES = ("utterance", "frame")
METRICS = ("accuracy", "macro_f1")


@dataclass
class Task:
    name: str
    type: str  # "utterance" | "frame"
    labels: list[str]  # class names; class index = position
    metric: str  # the early-stopping metric: "accuracy" | "macro_f1"
    label_field: str  # dotted path into a manifest row
    splits: dict[str, list[ManifestEntry]]  # "train" / "valid" / "test" -> rows
    directory: Path
    label_rate: float | None = None  # frame tasks: label frames per second
    subset_field: str | None = None  # utterance tasks: dotted path of each row's subset (scored apart on test)
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # other task.json keys, kept for the results file

    @property
    def fingerprint(self) -> str:
        """sha1 (16 hex digits) of task.json and the split manifests: changes when the task's data does."""
        import hashlib

        record = json.loads((self.directory / TASK_FILE).read_text())
        files = record.get("splits", {s: f"{s}.jsonl" for s in SPLITS})
        digest = hashlib.sha1((self.directory / TASK_FILE).read_bytes())
        for split in SPLITS:
            digest.update((self.directory / files[split]).read_bytes())
        return digest.hexdigest()[:16]

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def targets(self, split: str) -> list:
        """Class indexes of a split's rows: one int per row (utterance), a list of ints (frame)."""
        index = {label: i for i, label in enumerate(self.labels)}
        out = []
        for entry in self.splits[split]:
            value = _lookup(entry, self.label_field)
            where = f"{self.directory}/{split} row {entry.id!r}"
            if self.type == "utterance":
                out.append(_class_index(index, value, where))
            else:
                if not isinstance(value, list) or not value:
                    raise UserError(f"{where}: frame task label field {self.label_field!r} must be a non-empty "
                                    f"list, got {type(value).__name__}")
                out.append([_class_index(index, v, where) for v in value])
        return out

    def subsets(self, split: str) -> list[str] | None:
        """Each row's subset name (subset_field), or None when the task has no subsets."""
        if self.subset_field is None:
            return None
        return [str(_lookup(entry, self.subset_field)) for entry in self.splits[split]]


def _class_index(index: dict[str, int], value: Any, where: str) -> int:
    key = str(value) if not isinstance(value, str) else value
    if key not in index:
        raise UserError(f"{where}: label {value!r} is not one of the task's labels {sorted(index)[:20]}")
    return index[key]


def _lookup(entry: ManifestEntry, dotted: str) -> Any:
    """Value of a dotted path ("meta.label", "label") in a manifest row; top-level keys other than
    the manifest fields live in meta, so "label" falls back to meta["label"]."""
    parts = dotted.split(".")
    node: Any
    if parts[0] == "meta":
        node, parts = entry.meta, parts[1:]
    elif hasattr(entry, parts[0]):
        node, parts = getattr(entry, parts[0]), parts[1:]
    else:
        node = entry.meta
    for part in parts:
        if not isinstance(node, dict) or part not in node:
            raise UserError(f"row {entry.id!r}: no field {dotted!r} (missing {part!r})")
        node = node[part]
    return node


def load_task(directory: str | os.PathLike) -> Task:
    """Read DIR/task.json and its split manifests; ValueError naming the file and key on bad input."""
    directory = Path(directory)
    path = directory / TASK_FILE
    if not path.is_file():
        raise UserError(f"{path}: not found (a probe task directory holds task.json + split manifests)")
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(record, dict):
        raise UserError(f"{path}: expected a JSON object")
    for key in ("name", "type", "labels"):
        if key not in record:
            raise UserError(f"{path}: missing key {key!r}")
    if record["type"] not in TASK_TYPES:
        raise UserError(f"{path}: type {record['type']!r} must be one of {TASK_TYPES}")
    labels = record["labels"]
    if not isinstance(labels, list) or len(labels) < 2 or len(set(map(str, labels))) != len(labels):
        raise UserError(f"{path}: labels must be a list of >= 2 distinct names, got {labels!r}")
    metric = record.get("metric", "accuracy")
    if metric not in METRICS:
        raise UserError(f"{path}: metric {metric!r} must be one of {METRICS}")
    label_rate = record.get("label_rate")
    if record["type"] == "frame" and (not isinstance(label_rate, (int, float)) or label_rate <= 0):
        raise UserError(f"{path}: a frame task needs label_rate (label frames per second > 0), got {label_rate!r}")
    subset_field = record.get("subset_field")
    if subset_field is not None and (record["type"] != "utterance" or not isinstance(subset_field, str)):
        raise UserError(f"{path}: subset_field must be a dotted field name of an utterance task, got {subset_field!r}")
    split_files = record.get("splits", {s: f"{s}.jsonl" for s in SPLITS})
    if not isinstance(split_files, dict) or set(split_files) != set(SPLITS):
        raise UserError(f"{path}: splits must map exactly {SPLITS} to manifest files, got {split_files!r}")
    splits = {}
    for split in SPLITS:
        rows = read_manifest(directory / split_files[split])
        if not rows:
            raise UserError(f"{directory / split_files[split]}: split {split!r} is empty")
        splits[split] = rows
    known = {"name", "type", "labels", "metric", "label_field", "splits", "label_rate", "subset_field", "description"}
    task = Task(name=str(record["name"]), type=record["type"], labels=[str(x) for x in labels], metric=metric,
                label_field=record.get("label_field", "meta.label"), splits=splits, directory=directory,
                label_rate=None if label_rate is None else float(label_rate), subset_field=subset_field,
                description=str(record.get("description", "")),
                extra={k: v for k, v in record.items() if k not in known})
    for split in SPLITS:
        task.targets(split)  # every label (and subset) resolves now, not in the middle of a probe run
        task.subsets(split)
    return task


def make_task(manifest: str | os.PathLike, out_dir: str | os.PathLike, *, name: str | None = None,
              label_field: str = "meta.label", task_type: str = "utterance", label_rate: float | None = None,
              split_field: str | None = None, valid_fraction: float = 0.1, test_fraction: float = 0.2,
              seed: int = 0, metric: str = "accuracy") -> Path:
    """A task directory from a labelled manifest: rows go to train/valid/test by `split_field` (a
    dotted field holding "train"/"valid"/"test") or, without it, at random by the fractions (seeded,
    stratified by label for utterance tasks). Labels are the sorted distinct values found."""
    if task_type not in TASK_TYPES:
        raise UserError(f"make_task: type {task_type!r} must be one of {TASK_TYPES}")
    if task_type == "frame" and (label_rate is None or label_rate <= 0):
        raise UserError("make_task: a frame task needs label_rate > 0")
    if not (0 < valid_fraction < 1 and 0 < test_fraction < 1 and valid_fraction + test_fraction < 1):
        raise UserError(f"make_task: fractions valid={valid_fraction}, test={test_fraction} must be in (0, 1) "
                        f"and sum below 1")
    rows = read_manifest(manifest)
    if not rows:
        raise UserError(f"{manifest}: empty manifest")
    values = [_lookup(entry, label_field) for entry in rows]
    if task_type == "utterance":
        labels = sorted({str(v) for v in values})
    else:
        labels = sorted({str(x) for v in values for x in (v if isinstance(v, list) else [v])})
    splits: dict[str, list[ManifestEntry]] = {s: [] for s in SPLITS}
    if split_field is not None:
        for entry in rows:
            split = str(_lookup(entry, split_field))
            if split not in SPLITS:
                raise UserError(f"{manifest}: row {entry.id!r} has {split_field}={split!r}, not one of {SPLITS}")
            splits[split].append(entry)
    else:
        groups: dict[str, list[ManifestEntry]] = {}
        for entry, value in zip(rows, values, strict=True):
            groups.setdefault(str(value) if task_type == "utterance" else "", []).append(entry)
        rng = random.Random(seed)
        for key in sorted(groups):
            members = groups[key]
            rng.shuffle(members)
            n_test = max(1, round(len(members) * test_fraction))
            n_valid = max(1, round(len(members) * valid_fraction))
            splits["test"] += members[:n_test]
            splits["valid"] += members[n_test : n_test + n_valid]
            splits["train"] += members[n_test + n_valid :]
    for split, members in splits.items():
        if not members:
            raise UserError(f"make_task: split {split!r} would be empty ({len(rows)} rows in {manifest})")
    out_dir = Path(out_dir)
    for split in SPLITS:
        write_manifest(out_dir / f"{split}.jsonl", splits[split])
    record = {"name": name or out_dir.name, "type": task_type, "labels": labels, "metric": metric,
              "label_field": label_field, "splits": {s: f"{s}.jsonl" for s in SPLITS},
              "description": f"made from {Path(manifest).resolve()} by make_task (seed {seed})"}
    if task_type == "frame":
        record["label_rate"] = float(label_rate)
    tmp = out_dir / f".{TASK_FILE}.tmp"
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, out_dir / TASK_FILE)
    return out_dir
