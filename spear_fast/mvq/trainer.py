"""Fitting a quantiser: the reference's two-phase recipe (multi_quantization.QuantizerTrainer 0.1.1).

Phase 1 trains 2N codebooks of 16 entries; then pairs merge (C'[c, i*16+j] = C[2c,i] + C[2c+1,j],
logits likewise) into N codebooks of 256 for phase 2. Loss per step:
  relative reconstruction error (sum ||x_hat - x||^2 / sum ||x - m||^2, m the quantiser's own data
  mean estimate, as the reference) of the indexes refined 1 or 2 times (probability 1/2 each)
  + CE of the logits against those indexes + 0.01 * logits entropy loss.
Adam(lr 5e-3, betas (0.9, 0.98), eps 1e-9, weight decay 1e-6); StepLR halves the lr every quarter
phase; phase 2 starts at half the initial lr. All randomness (init, 1-vs-2 refine, batch sampling)
comes from the seed; a checkpoint holds everything needed to continue bit-for-bit.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from .frame_store import FrameStore
from .metrics import evaluate
from .quantizer import Quantizer, QuantizerConfig, is_power_of_two

from spear_fast.atomic import atomic_open
from spear_fast.config import check, field
from spear_fast.errors import UserError

PHASE1_CODEBOOK_SIZE = 16  # phase 1 codebooks; merged pairs give 16 * 16 = 256
ENTROPY_SCALE = 0.01  # weight of the logits entropy loss (the reference's entropy_scale)
TWO_REFINE_PROB = 0.5  # probability of 2 (else 1) refine passes for the training indexes


@dataclass
class TrainerConfig:
    num_codebooks: int = field(16, "N codebooks of the final quantiser, a power of two (phase 1 fits 2N of 16)")
    phase_steps: tuple[int, int] = field((35000, 35000), "steps of phase 1 and 2 (paper scale)")
    batch_size: int = field(1024, "frames per step", ge=1)
    lr: float = field(5e-3, "Adam learning rate of phase 1 (phase 2 starts at half of it)")
    seed: int = field(0, "seed of the initialisation, the refine-pass draws and the batch sampling")

    def __post_init__(self) -> None:
        self.phase_steps = tuple(int(s) for s in self.phase_steps)
        check(self)

    def validate(self) -> None:
        if not is_power_of_two(self.num_codebooks):
            raise UserError(f"TrainerConfig: num_codebooks must be a power of two, got {self.num_codebooks}")
        if len(self.phase_steps) != 2 or min(self.phase_steps) < 1:
            raise UserError(f"TrainerConfig: phase_steps must be two positive ints, got {self.phase_steps}")


def quantizer_loss(quantizer: Quantizer, x: Tensor, refine_iters: int) -> tuple[Tensor, Tensor, Tensor]:
    """x (B, D) normalised frames -> (rel_reconstruction, logprob CE, logits entropy loss), the
    reference's `compute_loss` terms."""
    indexes = quantizer.compute_indexes(x.detach(), refine_iters)  # (B, N), no gradient
    recon = quantizer.decode(indexes, normalized=True)  # (B, D), differentiable in the centres
    data_mean = quantizer.get_centers().mean(dim=1).sum(dim=0).detach()  # (D,)
    rel = (recon - x).square().sum() / ((x - data_mean).square().sum() + 1e-20)
    log_probs = quantizer.logits(x).log_softmax(dim=-1)  # (B, N, K)
    logprob_loss = -log_probs.gather(2, indexes.unsqueeze(-1)).mean()
    probs = log_probs.exp().mean(dim=0) + 1e-20  # (N, K)
    entropy = -(probs * probs.log()).sum(dim=1).mean()
    ref_entropy = math.log(quantizer.codebook_size)
    return rel, logprob_loss, (ref_entropy - entropy) / ref_entropy


class QuantizerTrainer:
    """trainer = QuantizerTrainer(dim, TrainerConfig(...)); trainer.fit(store) -> Quantizer.
    Or drive it: while not trainer.done(): trainer.step(batch)."""

    def __init__(self, dim: int, config: TrainerConfig, normalization: tuple[Tensor, Tensor] | None = None) -> None:
        self.dim, self.config = dim, config
        self.generator = torch.Generator().manual_seed(config.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.quantizer = Quantizer(dim, 2 * config.num_codebooks, PHASE1_CODEBOOK_SIZE)
        if normalization is not None:
            self.quantizer.set_normalization(*normalization)
        self.step_count = 0  # steps done, over both phases
        self.last_rel_error = float("nan")
        self._init_optimizer(config.lr, config.phase_steps[0])

    @property
    def phase(self) -> int:
        return 1 if self.step_count < self.config.phase_steps[0] else 2

    @property
    def total_steps(self) -> int:
        return sum(self.config.phase_steps)

    def done(self) -> bool:
        return self.step_count >= self.total_steps

    def _init_optimizer(self, lr: float, phase_steps: int) -> None:
        self.optimizer = torch.optim.Adam(
            self.quantizer.parameters(), lr=lr, betas=(0.9, 0.98), eps=1e-9, weight_decay=1e-6
        )
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=max(1.0, phase_steps / 4), gamma=0.5)

    def step(self, frames: Tensor) -> float:
        """One optimiser step on a batch of raw frames (B, D); returns the relative reconstruction error."""
        if self.done():
            raise ValueError(f"QuantizerTrainer.step: all {self.total_steps} steps are done")
        if frames.ndim != 2 or frames.shape[1] != self.dim:
            raise ValueError(f"QuantizerTrainer.step: expected frames (B, {self.dim}), got {tuple(frames.shape)}")
        x = self.quantizer.normalize(frames.float())
        two = bool(torch.rand((), generator=self.generator) < TWO_REFINE_PROB)
        rel, logprob_loss, entropy_loss = quantizer_loss(self.quantizer, x, 2 if two else 1)
        loss = rel + logprob_loss + ENTROPY_SCALE * entropy_loss
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.step_count += 1
        self.last_rel_error = float(rel.detach())
        if self.step_count == self.config.phase_steps[0]:
            self._begin_phase_two()
        return self.last_rel_error

    def _begin_phase_two(self) -> None:
        self.quantizer = self.quantizer.merged_pairs()
        self._init_optimizer(self.config.lr * 0.5, self.config.phase_steps[1])

    def get_quantizer(self) -> Quantizer:
        if not self.done():
            raise ValueError(f"QuantizerTrainer: {self.step_count} of {self.total_steps} steps done")
        return self.quantizer

    # ------------------------------------------------------------- fit loop and checkpoints
    def fit(
        self,
        store: FrameStore,
        checkpoint: str | os.PathLike | None = None,
        checkpoint_every: int = 1000,
        eval_frames: int = 10000,
        progress: bool = True,
    ) -> Quantizer:
        """Run the remaining steps on batches sampled from `store`; checkpoint every N steps and at
        the end; evaluate on the store's held-out frames at the end (self.heldout_metrics)."""
        if store.dim != self.dim:
            raise UserError(f"QuantizerTrainer.fit: store {store.directory} has dim {store.dim}, trainer {self.dim}")
        bar = tqdm(total=self.total_steps, initial=self.step_count, disable=not progress, unit="step", desc="fit-mvq")
        while not self.done():
            rel = self.step(store.sample(self.config.batch_size, self.generator))
            bar.update(1)
            bar.set_postfix(phase=self.phase, rel_err=f"{rel:.4f}", refresh=False)
            if checkpoint is not None and self.step_count % checkpoint_every == 0:
                self.save_checkpoint(checkpoint)
        bar.close()
        if checkpoint is not None:
            self.save_checkpoint(checkpoint)
        heldout = store.heldout(eval_frames)
        self.heldout_metrics = evaluate(self.quantizer, heldout) if heldout.shape[0] else None
        return self.quantizer

    def state_dict(self) -> dict:
        q = self.quantizer
        return {
            "dim": self.dim,
            "config": {**asdict(self.config), "phase_steps": list(self.config.phase_steps)},
            "quantizer_config": asdict(q.config),
            "quantizer": q.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(),
            "step_count": self.step_count,
        }

    def save_checkpoint(self, path: str | os.PathLike) -> None:
        with atomic_open(path, "wb") as stream:
            torch.save(self.state_dict(), stream)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike) -> "QuantizerTrainer":
        path = Path(path)
        if not path.is_file():
            raise UserError(f"QuantizerTrainer.from_checkpoint: no such file {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        config = TrainerConfig(**state["config"])
        trainer = cls(state["dim"], config)
        qc = QuantizerConfig(**state["quantizer_config"])
        trainer.quantizer = Quantizer(qc.dim, qc.num_codebooks, qc.codebook_size, qc.normalized)
        trainer.quantizer._load_checked(state["quantizer"], str(path))
        trainer.step_count = int(state["step_count"])
        phase_steps = config.phase_steps[0] if trainer.phase == 1 else config.phase_steps[1]
        lr = config.lr if trainer.phase == 1 else config.lr * 0.5
        trainer._init_optimizer(lr, phase_steps)
        trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.scheduler.load_state_dict(state["scheduler"])
        trainer.generator.set_state(state["generator"])
        return trainer
