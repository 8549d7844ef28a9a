"""One full pre-training step (fbank -> masks -> student -> heads -> loss -> backward -> AdamW) on a
fixed batch, in two forms with the same weights and batch:

  spear   the trainer's path: TrainModule (student + SpearObjective with the fused
          linear_multi_target_ce), bf16 autocast on CUDA, torch.compile'd blocks (as the trainer
          compiles them) and the "auto" attention backend (flash-attn, else xformers, else SDPA)
  plain   the same student in plain eager PyTorch with SDPA attention (no compile), and the unfused
          loss: nn.Linear over all frames -> full (B, T', N*K) logits -> F.cross_entropy; bf16
          autocast on CUDA too
Batch: 2 teachers (speech 16 codebooks at 50 Hz on every clip, audio 8 at 25 Hz on half the clips),
every third clip 3/4 long (padding); masking as in training. AdamW (fused on CUDA) for both.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from kernels import IGNORE_INDEX

from spear_fast.audio import fbank
from spear_fast.config import apply_overrides
from spear_fast.masking import MaskingConfig, compute_masks
from spear_fast.model.attention import resolve_backend
from spear_fast.model.config import StudentConfig, preset
from spear_fast.model.student import SpearStudent
from spear_fast.objective import (
    ObjectiveConfig,
    SpearObjective,
    TeacherSpec,
    align_targets,
    frame_weights,
    teacher_applies,
)
from spear_fast.train.loop import TrainModule

TEACHERS = (TeacherSpec("speech", "speech", 16, 50.0), TeacherSpec("audio", "audio", 8, 25.0))
CONTENDERS = ("spear", "plain")


def batch_shape_for(device: torch.device) -> tuple[int, float]:
    """(clips, seconds per clip): 16 x 10 s on a GPU; 2 x 4 s on a CPU (keeps a CPU run under a minute)."""
    return (16, 10.0) if device.type == "cuda" else (2, 4.0)


def batch_for(device: torch.device, clips: int, seconds: float):
    gen = torch.Generator().manual_seed(0)
    samples = int(seconds * 16000)
    lengths = torch.full((clips,), samples)
    lengths[1::3] = samples * 3 // 4  # some padding
    waves = 0.1 * torch.randn(clips, samples, generator=gen) * (torch.arange(samples)[None] < lengths[:, None])
    targets = {}
    for spec in TEACHERS:
        frames = int(seconds * spec.frame_rate)
        tokens = torch.randint(0, 256, (clips, frames, spec.num_codebooks), generator=gen)
        token_lengths = (lengths * spec.frame_rate / 16000).long()
        if spec.name == "audio":
            token_lengths[::2] = 0  # speech clips have no audio-teacher tokens
        tokens[torch.arange(frames)[None] >= token_lengths[:, None]] = IGNORE_INDEX
        targets[spec.name] = (tokens.to(device), token_lengths.to(device))
    domains = ["speech" if i % 2 == 0 else "audio" for i in range(clips)]
    return waves.to(device), lengths.to(device), targets, domains


def plain_loss(heads: torch.nn.ModuleDict, hidden, lengths, output_mask, targets, domains, student_rate):
    """nn.Linear over every frame, full logits, F.cross_entropy; the same weighting as the objective."""
    weights = frame_weights(output_mask, lengths, 0.5)  # (B, T')
    total = hidden.new_zeros((), dtype=torch.float32)
    for spec in TEACHERS:
        tokens, token_lengths = targets[spec.name]
        aligned = align_targets(tokens, token_lengths, spec.frame_rate, student_rate, lengths, hidden.shape[1])
        logits = heads[spec.name](hidden).float()  # (B, T', N*K)
        ce = F.cross_entropy(logits.reshape(-1, 256), aligned.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none")
        ce = ce.view(*aligned.shape).mean(-1)  # (B, T')
        applies = torch.tensor([teacher_applies(spec.domain, d, "asymmetric") for d in domains], device=hidden.device)
        scale = 1.0 if spec.domain == "speech" else 0.1
        total = total + scale * (ce * weights * applies[:, None]).sum()
    return total / weights.sum()


@dataclass
class StepSetup:
    step: Callable[[], torch.Tensor]  # one optimizer step on the fixed batch; returns the loss
    audio_seconds: float  # seconds of (unpadded) audio in the batch
    feat_lengths: torch.Tensor  # (B,) fbank frames per clip, on the CPU (spear_fast.train.metrics.step_flops)
    config: StudentConfig
    head_outputs: int  # logits per student frame over all heads
    attention: str  # the attention backend the student runs
    compile_backend: str | None  # torch.compile backend of the blocks, None = eager


def make_step(contender: str, preset_name: str, device: torch.device, *, clips: int | None = None,
              seconds: float | None = None, compile_blocks: bool | None = None,
              compile_backend: str = "inductor", overrides: tuple[str, ...] = ()) -> StepSetup:
    """The step of `contender` ("spear" | "plain") for student preset `preset_name` (+ `overrides`).
    compile_blocks: None = compile the spear step's blocks on CUDA only (inductor on a CPU takes
    minutes); the plain step is never compiled."""
    if contender not in CONTENDERS:
        raise ValueError(f"make_step: contender must be one of {CONTENDERS}, got {contender!r}")
    default_clips, default_seconds = batch_shape_for(device)
    clips = default_clips if clips is None else clips
    seconds = default_seconds if seconds is None else seconds
    attention = ["encoder.attention=sdpa"] if contender == "plain" else []
    config = apply_overrides(preset(preset_name), [*attention, "encoder.dropout=0.0", "subsampling.dropout=0.0",
                                                   *overrides])
    torch.manual_seed(0)
    student = SpearStudent(config)
    objective = SpearObjective(ObjectiveConfig(teachers=TEACHERS), student.dim, student.frame_rate)
    module = TrainModule(student, objective).to(device)
    if compile_blocks is None:
        compile_blocks = device.type == "cuda"
    compiled = contender == "spear" and compile_blocks
    if compiled:
        for block in student.blocks:
            block.compile(backend=compile_backend, dynamic=True)
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4, fused=device.type == "cuda")
    waves, lengths, targets, domains = batch_for(device, clips, seconds)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step():
        feats, feat_lengths = fbank(waves, lengths)
        masks = compute_masks(feats, feat_lengths, MaskingConfig(), torch.Generator().manual_seed(1))
        with autocast:
            if contender == "spear":
                loss = module(masks.feats, feat_lengths, masks.time_mask, masks.output_mask, targets, domains).loss
            else:
                out = student(masks.feats, feat_lengths, time_mask=masks.time_mask, return_layers=False)
                loss = plain_loss(objective.heads, out.hidden, out.lengths, masks.output_mask, targets, domains,
                                  student.frame_rate)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return loss

    feat_lengths = fbank(waves, lengths)[1].cpu()
    return StepSetup(step=step, audio_seconds=float(lengths.sum()) / 16000, feat_lengths=feat_lengths,
                     config=config, head_outputs=sum(head.out_features for head in objective.heads.values()),
                     attention=resolve_backend(config.encoder.attention, device),
                     compile_backend=compile_backend if compiled else None)
