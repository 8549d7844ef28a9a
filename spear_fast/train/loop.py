"""The pre-training loop: one process (CPU or GPU) or DDP over torchrun (env://), any number of nodes.

One optimizer step = accum_steps micro-batches per process:
    loader (workers: audio + tokens) -> device -> [token/noise mixing] -> fbank -> masks
    -> student -> heads -> masked multi-target CE (kernels op 2)
Loss normalisation: every micro-batch's frame-weight total is known before the forward (it depends
only on the masks and lengths), so the step first sums them over micro-batches and ranks
(all_reduce) and each micro-batch backpropagates loss_sum / W_global (x world size, undoing DDP's
gradient averaging). The step's gradient is therefore that of sum(loss_sum) / W_global over the
GLOBAL batch, whatever the split into ranks and micro-batches: 2 ranks x 1 micro-batch equals
1 rank x 2 micro-batches (tests/test_train_ddp.py).
Reproducibility: every random draw of a micro-batch (mixing, masking, dropout) comes from a seed of
(runtime.seed, step, global micro-batch index = rank * accum_steps + i), the data order from the
sampler's (seed, epoch) and its resume position, so a resumed run repeats the uninterrupted run's
losses exactly (tests/test_train_resume.py).
Host and device: a step reads no tensor value on the host, so a GPU never waits for the CPU to look
at a result. What the step decides (which frames each head sees, whether a batch has tokens at all)
comes from the batch's host copies of its lengths; a non-finite gradient skips AdamW's update on the
device (ScaledAdam drops such a gradient itself). The step's numbers stay on the device until a log
line is due (every logging.log_every steps, at checkpoints and at the end): then one transfer brings
them all back and log.jsonl gets a record per step, step_time being the mean over those steps.
Stopping: SIGTERM/SIGINT set a flag; the loop finishes the current step, saves a checkpoint and
returns (all ranks agree through an all_reduce of the flag); train.py then exits with 128 + the
signal's number, so a scheduler tells a pre-empted run from a finished one. DataLoader workers ignore
both signals (a process-group signal reaches them too).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch import nn

from spear_fast.atomic import atomic_write_json
from spear_fast.audio import fbank, num_frames
from spear_fast.data.dataset import Batch
from spear_fast.data.manifest import ManifestEntry
from spear_fast.data.token_store import TokenStore
from spear_fast.config import config_to_dict
from spear_fast.errors import UserError
from spear_fast.lengths import Lengths
from spear_fast.masking import compute_masks
from spear_fast.model.config import param_count
from spear_fast.model.student import SpearStudent
from spear_fast.objective import (
    ObjectiveConfig,
    ObjectiveOutput,
    SpearObjective,
    frame_weights,
    teacher_applies,
)
from spear_fast import checkpoint as ckpt
from spear_fast.train.augment import augment_batch
from spear_fast.train.config import TrainConfig, train_config_from_dict
from spear_fast.train.data import SkippedClipsLog, build_loader, stop_workers, teacher_specs
from spear_fast.plot import plot_losses
from spear_fast.train.metrics import RunLog, peak_flops, step_flops
from spear_fast.train.scaled_adam import ScaledAdam
from spear_fast.train.schedule import lr_factor


class TrainModule(nn.Module):
    """Student + objective heads in one module (what DDP wraps)."""

    def __init__(self, student: SpearStudent, objective: SpearObjective):
        super().__init__()
        self.student = student
        self.objective = objective

    def forward(self, feats: torch.Tensor, feat_lengths: Lengths, time_mask: torch.Tensor,
                output_mask: torch.Tensor, targets: dict[str, tuple[torch.Tensor, Lengths]],
                domains: list[str], check: bool = True) -> ObjectiveOutput:
        """Lengths as tensors or Python ints (spear_fast.lengths); check=False for batches built to shape."""
        out = self.student(feats, feat_lengths, time_mask=time_mask, return_layers=False, check=check)
        hidden = out.hidden  # (B, T', d)
        device_type = hidden.device.type
        if device_type == "cuda" and torch.is_autocast_enabled(device_type):
            # the fused CE reads bf16/fp16 hidden and accumulates in fp32 (half the memory traffic)
            hidden = hidden.to(torch.get_autocast_dtype(device_type))
        return self.objective(hidden, self.student.output_lengths(feat_lengths), output_mask, targets, domains,
                              check=check)


class Prepared(NamedTuple):
    """One micro-batch on the device, ready for the forward, with its lengths on the host."""

    feats: torch.Tensor  # (B, T, 128) masked fbank (channel spans zeroed)
    feat_lengths: list[int]  # (B) fbank frames per clip
    time_mask: torch.Tensor  # (B, T) bool
    output_mask: torch.Tensor  # (B, T') bool
    targets: dict[str, tuple[torch.Tensor, list[int]]]  # teacher -> (tokens (B, T_t, N), token frames per clip)
    domains: list[str]
    weight_total: torch.Tensor  # () fp32 frame-weight total of the micro-batch
    masked_frames: torch.Tensor  # () masked student output frames
    output_frames: int  # valid student output frames
    seconds: float
    seed: int
    has_tokens: bool  # some clip has tokens of a teacher that applies to it


class StepStats(NamedTuple):
    """One optimizer step's numbers, each left where it was computed until a log line is due."""

    step: int
    epoch: int
    lr: float
    sums: torch.Tensor  # (2 T + 2,) float64: loss_sum, S_t and W_t per teacher, masked output frames (this rank)
    weight: torch.Tensor  # () the step's frame-weight total (all ranks)
    grad_norm: torch.Tensor  # () before clipping; 0 when the step had no tokens
    skipped: torch.Tensor  # () bool, the update was skipped (no tokens, or a non-finite gradient)
    no_tokens: bool
    seconds: float  # audio of this rank
    output_frames: int  # valid student output frames of this rank
    flops: float  # of this rank
    time: float  # host seconds in train_step (the wait for the device comes when the step is logged)


@dataclass
class TrainResult:
    step: int  # optimizer steps done
    stopped_by_signal: bool
    checkpoint: Path | None
    run_dir: Path
    is_main: bool = True  # rank 0 (the process that writes logs, checkpoints and reports)
    stop_signal: int | None = None  # the signal that stopped the run (SIGTERM on ranks that did not get one)


def micro_seed(seed: int, step: int, micro: int) -> int:
    """Seed of the random draws of global micro-batch `micro` of optimizer step `step`."""
    return ((seed * 1_000_003 + step) * 1_000_033 + micro) % (2**62)


class _StopFlag:
    """SIGTERM/SIGINT -> flag (checked at step boundaries); handlers restored by `restore()`."""

    def __init__(self) -> None:
        self.raised: int | None = None
        self._previous: dict[int, Any] = {}
        if threading_main():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.raised is not None and signum == signal.SIGINT:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.raised = signum

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def resolve_device(config: TrainConfig, local_rank: int) -> torch.device:
    name = config.runtime.device
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"runtime.device={name!r} but CUDA is not available")
        if device.index is None:
            device = torch.device(f"cuda:{local_rank}")
    return device


def resolve_precision(config: TrainConfig, device: torch.device) -> str:
    precision = config.runtime.precision
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


class Trainer:
    def __init__(self, config: TrainConfig, entries: list[ManifestEntry], stores: dict[str, TokenStore],
                 run_dir: Path, *, resume: bool = False, max_steps: int | None = None,
                 skipped: list[dict[str, str]] | None = None):
        self.config = config
        self.run_dir = Path(run_dir)
        self.stores = stores
        self.max_steps = min(max_steps, config.schedule.total_steps) if max_steps else config.schedule.total_steps
        self.world_size = dist.get_world_size() if dist.is_initialized() else 1
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.is_main = self.rank == 0
        # ranks agree on host decisions (stop, no tokens) over a CPU group: no device sync
        self.host_group = dist.new_group(backend="gloo") if self.world_size > 1 else None
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = resolve_device(config, local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if config.runtime.threads:
            torch.set_num_threads(config.runtime.threads)
        self.precision = resolve_precision(config, self.device)
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        self.run_dir.mkdir(parents=True, exist_ok=True)

        self.specs = teacher_specs(config)
        self.frame_rates = {spec.name: spec.frame_rate for spec in self.specs}
        torch.manual_seed(config.runtime.seed)  # the initial weights
        student = SpearStudent(config.model)
        objective = SpearObjective(ObjectiveConfig.for_teachers(self.specs, config.loss),
                                   student.dim, student.frame_rate)
        self.module = TrainModule(student, objective).to(self.device)
        self.head_outputs = sum(head.out_features for head in objective.heads.values())
        self.num_params = param_count(self.module)
        self.optimizer = self._build_optimizer()
        optim = self.config.optim
        self.clip_limit = optim.grad_clip if optim.grad_clip > 0 else math.inf  # the global-norm clip of each step
        if isinstance(self.optimizer, ScaledAdam) and optim.clipping_scale is not None:
            self.clip_limit = math.inf  # ScaledAdam clips relative to its recent norms; the loop only measures
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
        self.ema: dict[str, torch.Tensor] | None = None
        if config.checkpoint.ema_decay > 0:
            self.ema = {k: v.detach().clone().float() for k, v in student.state_dict().items()
                        if v.is_floating_point()}

        self.loader, self.sampler = build_loader(entries, stores, config, rank=self.rank, world_size=self.world_size,
                                                 pin_memory=self.device.type == "cuda")
        self.step = 0
        self.epoch = 0
        self.batches_done = 0
        self.no_token_steps = 0  # steps of this process's run whose clips carried no tokens (update skipped)
        self.resumed_from: Path | None = None
        self.unloadable_checkpoints: list[str] = []  # newer checkpoints a resume skipped, with the reason
        if resume:
            latest, state, self.unloadable_checkpoints = ckpt.load_newest_checkpoint(self.run_dir)
            if latest is not None:
                self._load(latest, state)
                self.resumed_from = latest
        self.sampler.set_epoch(self.epoch)

        self.compiled = config.runtime.compile == "on" or (config.runtime.compile == "auto"
                                                           and self.device.type == "cuda")
        if self.compiled:
            for block in student.blocks:  # per block: one graph each, reused across layers' shapes
                block.compile(backend=config.runtime.compile_backend, dynamic=True)
        self.model: nn.Module = self.module
        if self.world_size > 1:
            self.model = nn.parallel.DistributedDataParallel(
                self.module, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.peak = peak_flops(self.device)
        self.skips = SkippedClipsLog(self.run_dir / "skipped.jsonl", self.rank)
        if self.is_main and skipped and self.resumed_from is None:
            self.skips.add(skipped)

    # ------------------------------------------------------------------ set-up helpers
    def _build_optimizer(self) -> torch.optim.Optimizer:
        optim = self.config.optim
        if optim.name == "scaled_adam":  # no weight decay: each tensor's size is learned and bounded instead
            return ScaledAdam(self.module.parameters(), lr=optim.lr, betas=(optim.beta1, optim.beta2), eps=optim.eps,
                              scalar_lr_scale=optim.scalar_lr_scale, param_min_rms=optim.param_min_rms,
                              param_max_rms=optim.param_max_rms, clipping_scale=optim.clipping_scale)
        decay, no_decay = [], []
        for name, param in self.module.named_parameters():
            (decay if param.dim() >= 2 else no_decay).append(param)  # matrices decay; biases, norms, mask vector not
        groups = [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        # fused on every device: it skips an update on the device (found_inf), which the loop uses for
        # non-finite gradients
        return torch.optim.AdamW(groups, lr=optim.lr, betas=(optim.beta1, optim.beta2), eps=optim.eps, fused=True)

    def _state(self) -> dict[str, Any]:
        sampler_states = [[self.epoch, self.batches_done]]
        if self.world_size > 1:
            gathered: list[Any] = [None] * self.world_size
            dist.all_gather_object(gathered, [self.epoch, self.batches_done])
            sampler_states = gathered
        return {
            "step": self.step,
            "epoch": self.epoch,
            "config": config_to_dict(self.config),
            "model": self.module.student.state_dict(),
            "objective": self.module.objective.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "scheduler": {"kind": self.config.schedule.kind, "step": self.step},
            "sampler": {"seed": self.sampler.seed, "world_size": self.world_size,
                        "ranks": [{"epoch": int(e), "batches_done": int(b)} for e, b in sampler_states]},
            "ema": self.ema,
            "rng": ckpt.capture_rng(),
        }

    def save(self) -> Path | None:
        state = self._state()  # collective under DDP: every rank calls it
        path = None
        if self.is_main:
            path = ckpt.save_checkpoint(state, self.run_dir, self.step, self.config.checkpoint.keep_last,
                                        self.config.checkpoint.keep_every)
        if self.world_size > 1:
            dist.barrier()
        return path

    def _load(self, path: Path, state: dict[str, Any]) -> None:
        """Restore the run from `state`, the checkpoint loaded from `path`."""
        stored = train_config_from_dict(state["config"])
        if stored.model != self.config.model or stored.loss != self.config.loss:
            raise UserError(f"{path}: the checkpoint's model/loss config differs from this run's; resume with the "
                            f"same --preset/--set/token stores (or a new --out)")
        sampler = state["sampler"]
        if sampler["world_size"] != self.world_size:
            raise UserError(f"{path}: saved by {sampler['world_size']} process(es), resumed with {self.world_size}; "
                            f"resume with the same number of processes")
        self.module.student.load_state_dict(state["model"])
        self.module.objective.load_state_dict(state["objective"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state["ema"] is not None:
            self.ema = {k: v.to(self.device) for k, v in state["ema"].items()}
        mine = sampler["ranks"][self.rank]
        self.sampler.load_state_dict({"epoch": mine["epoch"], "batches_done": mine["batches_done"],
                                      "seed": sampler["seed"]})
        self.step = int(state["step"])
        self.epoch = int(mine["epoch"])
        self.batches_done = int(mine["batches_done"])
        ckpt.restore_rng(state["rng"])

    # ------------------------------------------------------------------ data
    def _batches(self):
        """Endless stream of usable Batches across epochs; tracks (epoch, batches_done) for resume."""
        empty_epochs = 0
        while True:
            got_one = False
            for loaded in self.loader:
                self.batches_done += 1
                if loaded.skipped:
                    self.skips.add([{"id": b.id, "reason": b.reason, "step": self.step} for b in loaded.skipped])
                if loaded.batch is None:
                    continue
                got_one = True
                yield loaded.batch
            empty_epochs = 0 if got_one else empty_epochs + 1
            if empty_epochs >= 2:
                raise UserError(f"rank {self.rank}: a whole epoch gave no usable clip (see {self.skips.path})")
            self.epoch += 1
            self.batches_done = 0
            self.sampler.set_epoch(self.epoch)

    def prepare(self, batch: Batch, seed: int, train: bool = True) -> Prepared:
        """The micro-batch on the device: mixed, fbank, masks. Everything decided on the host comes from
        the batch's host copies of its lengths (Batch.num_samples, num_token_frames)."""
        samples = batch.num_samples
        batch = batch.to(self.device)
        generator = torch.Generator().manual_seed(seed)
        waves = batch.waves
        tokens = dict(batch.tokens)
        if train:
            mixed = augment_batch(waves, samples, tokens, self.frame_rates, self.config.mixing, generator, seed)
            waves, tokens = mixed.waves, mixed.targets
        feats, _ = fbank(waves, samples)  # (B, T, 128)
        feat_lengths = [num_frames(n) for n in samples]
        masking = dataclasses.replace(self.config.masking, enabled=self.config.masking.enabled and train)
        masks = compute_masks(feats, feat_lengths, masking, generator, self.config.model.subsampling.time_stride)
        weights = frame_weights(masks.output_mask, masks.output_lengths, self.config.loss.alpha)  # (B, T')
        targets = {name: (tokens[name], batch.num_token_frames[name]) for name in tokens}
        return Prepared(masks.feats, feat_lengths, masks.time_mask, masks.output_mask, targets, batch.domains,
                        weights.sum(), masks.output_mask.sum(), masks.valid_output_frames, batch.seconds, seed,
                        self._has_tokens(batch))

    def _has_tokens(self, batch: Batch) -> bool:
        """Whether some clip of the batch has tokens of a teacher that applies to it."""
        mode = self.config.loss.mode
        return any(frames > 0 and teacher_applies(spec.domain, domain, mode)
                   for spec in self.specs
                   for frames, domain in zip(batch.num_token_frames[spec.name], batch.domains))

    # ------------------------------------------------------------------ the step
    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            dist.all_reduce(tensor)
        return tensor

    def _any_rank(self, flag: bool) -> bool:
        """Whether `flag` holds on some rank (a CPU all_reduce: no device sync)."""
        if self.host_group is None:
            return flag
        value = torch.tensor([1.0 if flag else 0.0])
        dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self.host_group)
        return value.item() > 0

    def train_step(self, micro_batches: list[Batch]) -> StepStats:
        """One optimizer step. It reads no tensor value on the host: its numbers come back as a
        StepStats, for `log_records`."""
        accum = self.config.optim.accum_steps
        start = time.perf_counter()
        self.model.train()
        prepared = [self.prepare(b, micro_seed(self.config.runtime.seed, self.step, self.rank * accum + i))
                    for i, b in enumerate(micro_batches)]
        local_weight = torch.stack([p.weight_total for p in prepared]).sum().to(self.device, torch.float32)
        global_weight = self._all_reduce(local_weight.clone()).clamp(min=torch.finfo(torch.float32).tiny)
        names = [spec.name for spec in self.specs]
        sums = None  # [loss_sum, per-teacher sums, per-teacher weights, masked frames], float64
        for i, p in enumerate(prepared):
            last = i == len(prepared) - 1
            sync = contextlib.nullcontext() if (last or self.world_size == 1) else self.model.no_sync()
            torch.manual_seed(p.seed)  # dropout
            with sync:
                with self._autocast():
                    out = self.model(p.feats, p.feat_lengths, p.time_mask, p.output_mask, p.targets, p.domains,
                                     check=False)
                loss = out.loss_sum / global_weight * self.world_size  # DDP averages: x world -> global sum
                (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            values = torch.stack([out.loss_sum.detach().double()]
                                 + [out.teacher_sums[n].double() for n in names]
                                 + [out.teacher_weights[n].double() for n in names]
                                 + [p.masked_frames.double()])
            sums = values if sums is None else sums + values

        lr = self.config.optim.lr * lr_factor(self.config.schedule, self.step, self.epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        # No clip of the step (all ranks) has tokens of a teacher that applies to it: every clip lacks its
        # tokens (data.allow_missing_tokens). Its loss is a constant 0, so an update would only apply
        # weight decay and stale momentum: the step is skipped and counted.
        no_tokens = not self._any_rank(any(p.has_tokens for p in prepared))
        if no_tokens:
            grad_norm = global_weight.new_zeros(())
            skipped = torch.ones((), dtype=torch.bool, device=self.device)
            self.no_token_steps += 1
        else:
            grad_norm, skipped = self._optimizer_step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None and not no_tokens:
            self._update_ema(skipped)
        self.step += 1
        return StepStats(
            step=self.step, epoch=self.epoch, lr=lr, sums=sums, weight=global_weight, grad_norm=grad_norm,
            skipped=skipped, no_tokens=no_tokens, seconds=sum(p.seconds for p in prepared),
            output_frames=sum(p.output_frames for p in prepared),
            flops=sum(step_flops(self.config.model, p.feat_lengths, self.head_outputs) for p in prepared),
            time=time.perf_counter() - start)

    def _optimizer_step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Clip and step. Returns the gradient norm and whether AdamW's update was skipped for a
        non-finite gradient, both on the device. The fp16 grad scaler skips such steps itself, and
        ScaledAdam drops such a gradient itself (its momentum still moves the weights, as in icefall)."""
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grad_norm = nn.utils.clip_grad_norm_(self.module.parameters(), self.clip_limit)
        skipped = ~torch.isfinite(grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
            return grad_norm, torch.zeros_like(skipped)
        if isinstance(self.optimizer, ScaledAdam):
            self.optimizer.step()
            return grad_norm, torch.zeros_like(skipped)
        # torch's fused AdamW skips on the device where `found_inf` is set (what GradScaler passes it)
        self.optimizer.found_inf = skipped.float()
        try:
            self.optimizer.step()
        finally:
            del self.optimizer.found_inf
        return grad_norm, skipped

    @torch.no_grad()
    def _update_ema(self, skipped: torch.Tensor) -> None:
        weight = torch.where(skipped, 0.0, 1.0 - self.config.checkpoint.ema_decay).float()  # 0: EMA unchanged
        current = self.module.student.state_dict()
        keys = list(self.ema)
        torch._foreach_lerp_([self.ema[k] for k in keys], [current[k].float() for k in keys], weight)

    def log_records(self, steps: list[StepStats]) -> list[dict[str, Any]]:
        """The log records of `steps`, in one device -> host transfer (and one all_reduce under DDP):
        the loop's only wait for the device. step_time is the mean over `steps`."""
        names = [spec.name for spec in self.specs]
        count = len(names)
        host = torch.tensor([[s.seconds, s.output_frames, s.flops] for s in steps], dtype=torch.float64)
        summed = self._all_reduce(torch.cat([torch.stack([s.sums for s in steps]), host.to(self.device)], 1))
        shared = torch.stack([torch.stack([s.weight.double(), s.grad_norm.double(), s.skipped.double()])
                              for s in steps])  # (S, 3), the same on every rank
        waited = time.perf_counter()
        rows = torch.cat([summed, shared], 1).tolist()
        step_time = (sum(s.time for s in steps) + time.perf_counter() - waited) / len(steps)
        records = []
        for s, row in zip(steps, rows):
            loss_sum, teacher_sums, teacher_weights = row[0], row[1:1 + count], row[1 + count:1 + 2 * count]
            masked, seconds, output_frames, flops, weight, grad_norm, skipped = row[1 + 2 * count:]
            record: dict[str, Any] = {"step": s.step, "epoch": s.epoch, "loss": loss_sum / weight}
            for name, total, covered in zip(names, teacher_sums, teacher_weights):
                record[f"loss_{name}"] = total / covered if covered > 0 else None
            record.update({
                "lr": s.lr, "grad_norm": grad_norm, "audio_seconds": seconds, "step_time": step_time,
                "audio_per_second": seconds / step_time, "masked_fraction": masked / max(output_frames, 1.0),
                "frame_weight": weight,
            })
            if self.peak is not None:
                record["mfu"] = flops / step_time / (self.peak * self.world_size)
            if skipped:
                record["skipped_update"] = True
            if s.no_tokens:
                record["no_tokens"] = True
            records.append(record)
        return records

    # ------------------------------------------------------------------ the run
    def fit(self) -> TrainResult:
        config = self.config
        stop = _StopFlag()
        log = RunLog(self.run_dir, tensorboard=config.logging.tensorboard and self.is_main,
                     resume_step=self.step if self.resumed_from is not None else None) if self.is_main else None
        if self.is_main:
            atomic_write_json(self.run_dir / "config.json", config_to_dict(config))
            self._say(f"run {self.run_dir}: {self.num_params:,} parameters (student + heads), device {self.device}, "
                      f"precision {self.precision}, compile {'on' if self.compiled else 'off'}, "
                      f"{self.world_size} process(es), teachers {[s.name for s in self.specs]}")
            for skipped in self.unloadable_checkpoints:
                self._say(f"resume: skipped {skipped}")
            if self.resumed_from is not None:
                self._say(f"resumed from {self.resumed_from} at step {self.step}")
            elif self.unloadable_checkpoints:
                self._say("resume: no checkpoint of the run loads; starting from step 0")
            if log is not None and log.tensorboard_note:
                self._say(log.tensorboard_note)
        progress = None
        if self.is_main and config.logging.progress:
            from tqdm import tqdm

            progress = tqdm(total=self.max_steps, initial=self.step, desc="train", dynamic_ncols=True, file=sys.stderr)
        batches = self._batches()
        last_saved: Path | None = self.resumed_from  # the run's newest checkpoint so far
        stopped = False
        unlogged: list[StepStats] = []
        try:
            while self.step < self.max_steps:
                micro = [next(batches) for _ in range(config.optim.accum_steps)]
                unlogged.append(self.train_step(micro))
                if progress is not None:
                    progress.update(1)
                stopped = self._any_rank(stop.raised is not None)
                milestone = config.checkpoint.keep_every and self.step % config.checkpoint.keep_every == 0
                save = (stopped or milestone or self.step % config.checkpoint.every_steps == 0
                        or self.step >= self.max_steps)
                if save or self._log_line_due(self.step):
                    records = self.log_records(unlogged)
                    unlogged = []
                    if log is not None:
                        for record in records:
                            log.write(record)
                    if self.is_main:
                        self._report(records[-1], progress)
                if save:
                    last_saved = self.save() or last_saved
                if stopped:
                    if self.is_main:
                        self._say(f"stopped by signal at step {self.step}; checkpoint {last_saved}")
                    break
        finally:
            batches.close()
            stop_workers(self.loader)
            stop.restore()
            if progress is not None:
                progress.close()
            if log is not None:
                log.close()
        if self.is_main:
            if self.skips.count:
                self._say(f"{self.skips.count} clip(s) skipped: see {self.skips.path}")
            if self.no_token_steps:
                self._say(f"{self.no_token_steps} step(s) had no clip with tokens: their optimiser update was "
                          f"skipped (log.jsonl marks them no_tokens)")
            if config.logging.plot:
                note = plot_losses(self.run_dir / "log.jsonl", self.run_dir / "loss.png")
                if note:
                    self._say(note + " (pip install matplotlib)")
        stop_signal = (stop.raised or signal.SIGTERM) if stopped else None
        return TrainResult(self.step, stopped, last_saved, self.run_dir, self.is_main,
                           None if stop_signal is None else int(stop_signal))

    def _say(self, text: str) -> None:
        from tqdm import tqdm

        tqdm.write(text, file=sys.stdout)
        sys.stdout.flush()

    def _log_line_due(self, step: int) -> bool:
        """Whether `step` prints a line (the first step of a fresh run, every log_every, the last)."""
        first = self.resumed_from is None and step == 1
        return first or step % self.config.logging.log_every == 0 or step == self.max_steps

    def _report(self, record: dict[str, Any], progress) -> None:
        """The progress bar's numbers and, when due, the stdout line, from the newest logged step."""
        step = record["step"]
        teacher_text = " ".join(f"{k[5:]}={v:.3f}" for k, v in record.items() if k.startswith("loss_") and v is not None)
        mfu = f" mfu={record['mfu'] * 100:.1f}%" if "mfu" in record else ""
        if progress is not None:
            postfix = {k[5:]: f"{v:.3f}" for k, v in record.items() if k.startswith("loss_") and v is not None}
            postfix["audio_s/s"] = f"{record['audio_per_second']:.1f}"
            if "mfu" in record:
                postfix["mfu"] = f"{record['mfu'] * 100:.1f}%"
            progress.set_postfix(postfix, refresh=False)
        first = self.resumed_from is None and step == 1
        if self._log_line_due(step):
            prefix = (f"first step took {record['step_time']:.2f} s for {record['audio_seconds']:.1f} s of audio; "
                      if first else "")
            self._say(f"{prefix}step {step} loss={record['loss']:.4f} {teacher_text} lr={record['lr']:.2e} "
                      f"grad_norm={record['grad_norm']:.3f} step_time={record['step_time']:.2f}s "
                      f"audio_s/s={record['audio_per_second']:.1f}{mfu}")


def init_distributed(config: TrainConfig) -> bool:
    """Join the torchrun process group (env://) when WORLD_SIZE > 1; True when this call created it."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    use_nccl = torch.cuda.is_available() and config.runtime.device != "cpu"
    dist.init_process_group("nccl" if use_nccl else "gloo", init_method="env://")
    return True
