"""The trainer's data side: open and check the token stores, validate the corpus up front, and build
the DataLoader (duration-bucketed dynamic batches, workers, skip reports).

Everything that can be checked before training is checked here, so bad input fails before any
compute is spent: missing, corrupt (shard checksums) or mismatched token stores (codebooks / frame rate / codebook size vs the
config), teacher frame rates that do not divide the student's, clips without the tokens of a teacher
that applies to them, token lengths that disagree with the clip's duration, and a corpus whose clips
are all too short. Clips shorter than data.min_duration (and clips no active teacher applies to) are
skipped and reported; unreadable clips met during training are reported by the loader.
"""
from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from spear_fast.audio import SAMPLE_RATE
from spear_fast.data.batching import DurationBucketSampler
from spear_fast.data.dataset import SpearDataset, collate
from spear_fast.data.manifest import ManifestEntry
from spear_fast.data.token_store import TokenStore, TokenStoreError
from spear_fast.errors import UserError
from spear_fast.objective import TeacherSpec, rate_ratio, teacher_applies
from spear_fast.train.config import TEACHER_NAMES, TrainConfig


def active_teachers(config: TrainConfig) -> tuple[str, ...]:
    return TEACHER_NAMES if config.loss.teachers == "both" else (config.loss.teachers,)


def open_token_stores(token_dirs: Mapping[str, str | os.PathLike], config: TrainConfig) -> dict[str, TokenStore]:
    """Open the active teachers' stores, recompute every shard's checksum once (TokenStore.verify) and check
    them against config.loss.<teacher>; fields left None in the config are filled from the store (in
    place), so they are recorded with the run."""
    unknown = set(token_dirs) - set(TEACHER_NAMES)
    if unknown:
        raise UserError(f"--tokens: unknown teacher name(s) {sorted(unknown)}; use speech=DIR and/or audio=DIR")
    stores = {}
    for name in active_teachers(config):
        if name not in token_dirs:
            raise UserError(f"loss.teachers={config.loss.teachers!r} needs the {name} teacher's token store, but no "
                            f"--tokens {name}=DIR was given")
        directory = Path(token_dirs[name])
        if not directory.is_dir():
            raise TokenStoreError(f"{name} token store {directory}: directory not found")
        store = TokenStore(directory)
        try:  # every byte is a valid token: a flipped one would train silently
            store.verify()
        except TokenStoreError as error:
            raise TokenStoreError(f"{name} token store {directory}: {error}; `spear verify-tokens {directory}` "
                                  f"checks it again") from None
        expected = getattr(config.loss, name)
        meta = store.meta
        for field_name, found in (("num_codebooks", meta.num_codebooks), ("frame_rate", float(meta.frame_rate)),
                                  ("codebook_size", meta.codebook_size)):
            wanted = getattr(expected, field_name)
            if wanted is None:
                setattr(expected, field_name, found)
            elif wanted != found:
                raise TokenStoreError(f"{directory / 'meta.json'}: {field_name} is {found!r} but the config "
                                      f"(loss.{name}.{field_name}) expects {wanted!r}")
        try:
            rate_ratio(expected.frame_rate, config.model.frame_rate)
        except ValueError as error:
            raise TokenStoreError(f"{directory / 'meta.json'}: {error}") from None
        stores[name] = store
    return stores


def teacher_specs(config: TrainConfig) -> tuple[TeacherSpec, ...]:
    """The objective's TeacherSpecs (name = domain = the teacher key) of the active teachers."""
    specs = []
    for name in active_teachers(config):
        tokens = getattr(config.loss, name)
        if tokens.num_codebooks is None or tokens.frame_rate is None:
            raise ValueError(f"loss.{name}.num_codebooks / frame_rate are unset (open the token stores first)")
        specs.append(TeacherSpec(name=name, domain=name, num_codebooks=tokens.num_codebooks,
                                 frame_rate=tokens.frame_rate, codebook_size=tokens.codebook_size))
    return tuple(specs)


def validate_corpus(entries: Sequence[ManifestEntry], stores: Mapping[str, TokenStore],
                    config: TrainConfig) -> tuple[list[ManifestEntry], list[dict[str, str]]]:
    """(entries to train on, skipped records {id, reason}); ValueError for what must stop the run."""
    if not entries:
        raise UserError("the manifest has no entries")
    kept, skipped = [], []
    missing: dict[str, list[str]] = {name: [] for name in stores}
    for entry in entries:
        duration = entry.effective_duration
        if duration < config.data.min_duration:
            skipped.append({"id": entry.id, "reason": f"too short: {duration:.3f} s < data.min_duration="
                                                      f"{config.data.min_duration} s"})
            continue
        applies = [name for name in stores if teacher_applies(name, entry.domain, config.loss.mode)]
        if not applies:
            skipped.append({"id": entry.id, "reason": f"no active teacher applies to a {entry.domain} clip "
                                                      f"(loss.mode={config.loss.mode}, loss.teachers="
                                                      f"{config.loss.teachers})"})
            continue
        for name in applies:
            store = stores[name]
            if entry.id not in store:
                missing[name].append(entry.id)
                continue
            frames = store.num_frames(entry.id)
            token_seconds = frames / store.meta.frame_rate
            if abs(token_seconds - duration) > config.data.length_tolerance + 1.0 / store.meta.frame_rate:
                raise UserError(f"{name} token store {store.directory}: clip {entry.id!r} has {frames} token frames "
                                f"({token_seconds:.3f} s at {store.meta.frame_rate} Hz) but lasts {duration:.3f} s "
                                f"in the manifest (tolerance data.length_tolerance={config.data.length_tolerance} s)")
        kept.append(entry)
    for name, ids in missing.items():
        if ids and not config.data.allow_missing_tokens:
            raise UserError(f"{name} token store {stores[name].directory} lacks {len(ids)} clip(s) the {name} teacher "
                            f"applies to, e.g. {ids[:5]}; tokenize them or set data.allow_missing_tokens=true")
        for utt_id in ids:
            skipped.append({"id": utt_id, "reason": f"no {name} tokens (kept; contributes no {name} loss)"})
    if not kept:
        reasons = sorted({record["reason"].split(":")[0] for record in skipped})
        raise UserError(f"none of the {len(entries)} manifest clips can be trained on ({'; '.join(reasons)}); "
                        f"e.g. {skipped[0]['id']!r}: {skipped[0]['reason']}")
    return kept, skipped


def build_loader(entries: Sequence[ManifestEntry], stores: Mapping[str, TokenStore], config: TrainConfig, *,
                 rank: int, world_size: int, pin_memory: bool) -> tuple[torch.utils.data.DataLoader,
                                                                         DurationBucketSampler]:
    data = config.data
    dataset = SpearDataset(entries, stores, max_duration=data.max_duration, seed=config.runtime.seed)
    sampler = DurationBucketSampler(dataset.durations(), data.max_seconds, num_buckets=data.num_buckets,
                                    shuffle=True, seed=config.runtime.seed, rank=rank, world_size=world_size,
                                    keyed_by_epoch=True)
    if len(sampler) == 0:
        raise UserError(f"the corpus gives no batch per process ({len(sampler.global_batches())} batches for "
                        f"{world_size} processes); lower data.max_seconds or add data")
    workers = data.num_workers
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler,
        collate_fn=functools.partial(collate, codebooks={name: store.meta.num_codebooks for name, store in stores.items()},
                                     min_samples=int(data.min_duration * SAMPLE_RATE)),
        num_workers=workers, persistent_workers=workers > 0, pin_memory=pin_memory,
        prefetch_factor=data.prefetch_factor if workers > 0 else None,
        # a private generator: creating an iterator must not consume the global torch RNG
        generator=torch.Generator().manual_seed(config.runtime.seed),
        worker_init_fn=_ignore_stop_signals if workers > 0 else None,
    )
    return loader, sampler


def stop_workers(loader: torch.utils.data.DataLoader) -> None:
    """Stop a loader's persistent workers now. They ignore SIGTERM (`_ignore_stop_signals`), so they
    must not outlive the run: at interpreter exit multiprocessing terminates daemonic children with
    SIGTERM and then joins them, which would wait forever on a worker still alive then."""
    iterator = getattr(loader, "_iterator", None)  # where persistent_workers keeps the live iterator
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
        loader._iterator = None


def _ignore_stop_signals(worker_id: int) -> None:
    """Ctrl-C, and the SIGTERM of `timeout`, SLURM or Kubernetes, reach the whole process group: workers
    ignore both, so the trainer finishes its step, saves and stops them itself (a worker killed by the
    signal would make the DataLoader raise instead)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class SkippedClipsLog:
    """The clips a training run left out (up-front validation, unreadable files met by the loader): appends
    {id, reason, rank[, step]} lines to RUN_DIR/skipped.jsonl (O_APPEND: ranks may share it)."""

    def __init__(self, path: Path, rank: int):
        self.path = Path(path)
        self.rank = rank
        self.count = 0

    def add(self, records: Sequence[Mapping[str, Any]]) -> None:
        if not records:
            return
        self.count += len(records)
        text = "".join(json.dumps({**record, "rank": self.rank}) + "\n" for record in records)
        with open(self.path, "a", encoding="utf-8") as stream:
            stream.write(text)
