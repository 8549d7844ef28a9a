"""`spear manifest` (build a JSON-lines manifest from directories or a lhotse CutSet) and
`spear verify-tokens` (recompute a token store's checksums)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from spear_fast.atomic import atomic_open
from spear_fast.errors import UserError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    manifest = subparsers.add_parser(
        "manifest",
        help="build a manifest (JSON lines) from audio directories or a lhotse CutSet",
        description="Scan each --dir (or read a lhotse CutSet) into one manifest; unreadable files are "
        "skipped and listed in the report (OUT + '.skipped.jsonl').",
    )
    manifest.add_argument("--out", required=True, type=Path, help="manifest to write (JSON lines)")
    manifest.add_argument(
        "--dir", action="append", default=[], metavar="DOMAIN:PATH",
        help="a directory tree and its domain (speech|audio), e.g. speech:/data/librispeech; repeatable",
    )
    manifest.add_argument(
        "--lhotse", action="append", default=[], metavar="DOMAIN:CUTS",
        help="a lhotse CutSet manifest and its domain, e.g. audio:cuts.jsonl.gz; repeatable",
    )
    manifest.add_argument("--relative-paths", action="store_true", help="store paths relative to OUT's folder")
    manifest.set_defaults(func=run_manifest)

    verify = subparsers.add_parser("verify-tokens", help="recompute every shard checksum of a token store")
    verify.add_argument("store", type=Path, help="token store directory")
    verify.set_defaults(func=run_verify)


def _split(spec: str, option: str) -> tuple[str, str]:
    domain, sep, path = spec.partition(":")
    if not sep or not path:
        raise UserError(f"{option} expects DOMAIN:PATH, got {spec!r}")
    return domain, path


def run_manifest(args: argparse.Namespace) -> int:
    from .manifest import manifest_from_dir, manifest_from_lhotse, write_manifest

    if not args.dir and not args.lhotse:
        raise UserError("give at least one --dir DOMAIN:PATH or --lhotse DOMAIN:CUTS")
    entries, skipped = [], []
    for spec in args.dir:
        domain, path = _split(spec, "--dir")
        found, bad = manifest_from_dir(path, domain)
        entries += found
        skipped += bad
    for spec in args.lhotse:
        domain, path = _split(spec, "--lhotse")
        found, bad = manifest_from_lhotse(path, domain)
        entries += found
        skipped += bad
    count = write_manifest(args.out, entries, relative_paths=args.relative_paths)  # ManifestError is a UserError
    report = Path(f"{args.out}.skipped.jsonl")
    with atomic_open(report, "w", encoding="utf-8") as stream:
        for path, reason in skipped:
            stream.write(json.dumps({"path": path, "reason": reason}) + "\n")
    hours = sum(e.effective_duration for e in entries) / 3600
    print(f"{args.out}: {count} entries, {hours:.2f} h; {len(skipped)} skipped (reasons in {report})")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from .token_store import TokenStore, TokenStoreError

    try:
        store = TokenStore(args.store)
        store.verify()
    except TokenStoreError as error:
        print(f"FAILED: {error}")
        return 1
    print(f"{args.store}: OK ({len(store)} utterances, teacher {store.meta.teacher}, "
          f"{store.meta.num_codebooks} codebooks, quantizer {store.meta.quantizer_hash})")
    return 0
