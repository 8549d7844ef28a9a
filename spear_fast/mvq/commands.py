"""`spear fit-mvq` (fit a quantiser on a frame store) and `spear mvq-eval` (score one on a store)."""
from __future__ import annotations

import argparse
from pathlib import Path

from spear_fast.errors import UserError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    fit = subparsers.add_parser("fit-mvq", help="fit an MVQ quantiser on a frame store (two-phase recipe)")
    fit.add_argument("--frames", required=True, help="frame store directory (FrameStoreWriter output)")
    fit.add_argument("--num-codebooks", type=int, default=16, help="N codebooks of 256 (a power of two)")
    fit.add_argument("--out", required=True, help="output quantiser, .safetensors")
    fit.add_argument("--normalize", action="store_true", help="per-dimension (x - mean) / (std + 1e-5), stored in the quantiser")
    fit.add_argument("--phase-steps", type=int, nargs=2, default=(35000, 35000), metavar=("P1", "P2"))
    fit.add_argument("--batch-size", type=int, default=1024)
    fit.add_argument("--lr", type=float, default=5e-3)
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--checkpoint", default=None, help="checkpoint path (default: <out>.ckpt)")
    fit.add_argument("--checkpoint-every", type=int, default=1000)
    fit.add_argument("--resume", action="store_true", help="continue from the checkpoint if it exists")
    fit.set_defaults(func=run_fit)

    ev = subparsers.add_parser("mvq-eval", help="relative reconstruction error and codebook usage of a quantiser")
    ev.add_argument("--quantizer", required=True, help=".safetensors written by fit-mvq / Quantizer.save")
    ev.add_argument("--frames", required=True, help="frame store directory")
    ev.add_argument("--max-frames", type=int, default=100000)
    ev.add_argument("--heldout", action="store_true", help="only the store's held-out frames")
    ev.add_argument("--refine-iters", type=int, default=5)
    ev.set_defaults(func=run_eval)


def _normalization_from_store(store, batch_size: int = 65536):
    """(mean, std + 1e-5) over the store's training frames, accumulated in float64."""
    import numpy as np
    import torch

    from .quantizer import normalization_stats

    total = torch.zeros(store.dim, dtype=torch.float64)
    total_sq = torch.zeros(store.dim, dtype=torch.float64)
    for start in range(0, store.num_train, batch_size):
        rows = store.train_rows(np.arange(start, min(start + batch_size, store.num_train)))
        x = store.read(rows).double()  # (b, D)
        total += x.sum(dim=0)
        total_sq += x.square().sum(dim=0)
    return normalization_stats(total, total_sq, store.num_train)


def run_fit(args: argparse.Namespace) -> int:
    from .frame_store import FrameStore
    from .trainer import QuantizerTrainer, TrainerConfig

    store = FrameStore(args.frames)
    out = Path(args.out)
    checkpoint = Path(args.checkpoint) if args.checkpoint else out.with_name(out.name + ".ckpt")
    if args.resume and checkpoint.is_file():
        trainer = QuantizerTrainer.from_checkpoint(checkpoint)
        if trainer.dim != store.dim:
            raise UserError(f"fit-mvq: checkpoint {checkpoint} has dim {trainer.dim}, store {args.frames} has {store.dim}")
        print(f"resuming from {checkpoint} at step {trainer.step_count}/{trainer.total_steps}")
    else:
        config = TrainerConfig(
            num_codebooks=args.num_codebooks,
            phase_steps=tuple(args.phase_steps),
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
        )
        stats = _normalization_from_store(store) if args.normalize else None
        trainer = QuantizerTrainer(store.dim, config, normalization=stats)
    quantizer = trainer.fit(store, checkpoint=checkpoint, checkpoint_every=args.checkpoint_every)
    quantizer.save(out)
    metrics = trainer.heldout_metrics
    if metrics is not None:
        print(f"held-out frames: {metrics['frames']}, relative reconstruction error: {metrics['rel_error']:.4f}")
    print(f"wrote {out} (fingerprint {quantizer.fingerprint()})")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    import torch

    from .frame_store import FrameStore
    from .metrics import evaluate
    from .quantizer import Quantizer

    quantizer = Quantizer.load(args.quantizer)
    store = FrameStore(args.frames)
    if store.dim != quantizer.dim:
        raise UserError(f"mvq-eval: quantizer dim {quantizer.dim} != frame store dim {store.dim} ({args.frames})")
    if args.heldout:
        frames = store.heldout(args.max_frames)
    else:
        frames = torch.cat(list(store.iter_batches(65536, max_frames=args.max_frames)))
    metrics = evaluate(quantizer, frames, args.refine_iters)
    print(f"frames: {metrics['frames']}")
    print(f"relative reconstruction error: {metrics['rel_error']:.6f}")
    max_bits = metrics["max_entropy_bits"]
    print(f"codebook usage entropy (bits, max {max_bits:.2f}):")
    for n, bits in enumerate(metrics["entropy_bits"].tolist()):
        print(f"  codebook {n:2d}: {bits:.3f}")
    return 0
