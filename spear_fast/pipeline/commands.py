"""`spear collect-frames` (teacher frames -> frame store for fit-mvq) and `spear tokenize` (teacher ->
MVQ -> token store), both resumable and shardable (--shard i/n or torchrun's RANK/WORLD_SIZE)."""
from __future__ import annotations

import argparse
from pathlib import Path

from .clips import DEFAULT_MAX_DURATION, DOMAIN_CHOICES


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", required=True, type=Path, help="JSON-lines manifest (spear manifest)")
    parser.add_argument("--teacher", required=True,
                        help="teacher spec, e.g. wavlm:/models/wavlm-large?layer=21, dasheng:/m/dasheng.pt, whisper-demo")
    parser.add_argument("--domain", choices=DOMAIN_CHOICES, default="all", help="which clips (default all)")
    parser.add_argument("--shard", default=None, metavar="I/N",
                        help="this process is worker I of N (default: torchrun's RANK/WORLD_SIZE, else 0/1)")
    parser.add_argument("--batch-seconds", type=float, default=60.0,
                        help="padded audio per teacher call: longest clip x clips (default 60)")
    parser.add_argument("--max-duration", type=float, default=DEFAULT_MAX_DURATION,
                        help=f"skip (and report) clips longer than this many seconds (default {DEFAULT_MAX_DURATION:g}); "
                             "split long recordings into manifest segments instead")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda:LOCAL_RANK if CUDA, else cpu)")
    parser.add_argument("--finalize", action="store_true",
                        help="only merge/index what all N workers wrote (after they finished)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    collect = subparsers.add_parser(
        "collect-frames", help="sample teacher frames from a manifest into a frame store (for fit-mvq)",
        description="Run the teacher over a seeded random subset of the manifest and keep a random sample of "
                    "frames per clip. Resumable; unusable clips are skipped and listed in OUT/skipped.jsonl.")
    _common(collect)
    collect.add_argument("--out", required=True, type=Path, help="frame store directory")
    collect.add_argument("--max-frames", type=int, default=200_000, help="about this many frames (default 200000)")
    collect.add_argument("--frames-per-clip", type=int, default=100, help="random frames per clip, 0 = all (default 100)")
    collect.add_argument("--seed", type=int, default=0)
    collect.set_defaults(func=run_collect)

    tokenize = subparsers.add_parser(
        "tokenize", help="teacher -> MVQ quantiser -> token store over a manifest",
        description="Tokenise every clip of the manifest (after --domain) into a token store. Resumable, "
                    "shardable; unusable clips are skipped and listed in OUT/skipped.jsonl; teacher vs MVQ time "
                    "is printed and kept in OUT/workers/wIofN.json.")
    _common(tokenize)
    tokenize.add_argument("--quantizer", required=True, type=Path, help=".safetensors written by spear fit-mvq")
    tokenize.add_argument("--out", required=True, type=Path, help="token store directory")
    tokenize.add_argument("--refine-iters", type=int, default=5, help="MVQ refine passes (default 5)")
    tokenize.set_defaults(func=run_tokenize)


def _device(text: str | None) -> str:
    import os

    import torch

    if text:
        return text
    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return "cpu"


def _finalize_count(args: argparse.Namespace) -> int:
    from .workers import parse_shard

    return parse_shard(args.shard)[1]


def run_collect(args: argparse.Namespace) -> int:
    from .workers import parse_shard
    from .collect import CollectConfig, collect_frames, merge_parts

    if args.finalize:
        return 0 if merge_parts(args.out, _finalize_count(args)) else 1
    summary = collect_frames(CollectConfig(
        manifest=args.manifest, teacher=args.teacher, out=args.out, max_frames=args.max_frames,
        frames_per_clip=args.frames_per_clip, domain=args.domain, seed=args.seed, batch_seconds=args.batch_seconds,
        worker=parse_shard(args.shard), max_duration=args.max_duration, device=_device(args.device),
        progress=not args.no_progress))
    return 0 if summary.frames or summary.already_done or summary.finalized else 1


def run_tokenize(args: argparse.Namespace) -> int:
    from .workers import parse_shard
    from .tokenize import TokenizeConfig, finalize_tokens, tokenize

    if args.finalize:
        return 0 if finalize_tokens(args.out, _finalize_count(args), manifest=args.manifest, domain=args.domain) else 1
    tokenize(TokenizeConfig(
        manifest=args.manifest, teacher=args.teacher, quantizer=args.quantizer, out=args.out, domain=args.domain,
        worker=parse_shard(args.shard), batch_seconds=args.batch_seconds, max_duration=args.max_duration,
        device=_device(args.device), refine_iters=args.refine_iters, progress=not args.no_progress))
    return 0
