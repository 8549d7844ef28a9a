"""One full pre-training step (fbank -> masks -> student -> heads -> loss -> backward -> AdamW), in
seconds of audio per second, and its peak memory.

Contenders, same weights and batch, in the same run:
  spear   the trainer's path: TrainModule (student + SpearObjective with the fused
          linear_multi_target_ce), bf16 autocast + torch.compile'd blocks + flash/xformers when
          available on CUDA; fp32 eager on CPU
  plain   the same student in plain eager PyTorch with SDPA attention (no compile), and the unfused
          loss: nn.Linear over all frames -> full (B, T', N*K) logits -> F.cross_entropy; bf16 autocast
          on CUDA too
Batch: 2 teachers (speech 16 codebooks at 50 Hz on every clip, audio 8 at 25 Hz on half the clips),
CPU: tiny, 2 clips x 4 s (keeps the CPU run under a minute); GPU: tiny and base, 16 clips x 10 s (160 s of audio). Masking as in training.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from spear_fast.audio import fbank
from spear_fast.masking import MaskingConfig, compute_masks
from spear_fast.model.config import apply_overrides, preset
from spear_fast.model.student import SpearStudent
from spear_fast.objective import (
    IGNORE,
    ObjectiveConfig,
    SpearObjective,
    TeacherSpec,
    align_targets,
    frame_weights,
    teacher_applies,
)
from spear_fast.train.loop import TrainModule

TEACHERS = (TeacherSpec("speech", "speech", 16, 50.0), TeacherSpec("audio", "audio", 8, 25.0))


def batch_for(device: torch.device):
    clips, seconds = (16, 10.0) if device.type == "cuda" else (2, 4.0)
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
        tokens[torch.arange(frames)[None] >= token_lengths[:, None]] = IGNORE
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
        ce = F.cross_entropy(logits.reshape(-1, 256), aligned.reshape(-1), ignore_index=IGNORE, reduction="none")
        ce = ce.view(*aligned.shape).mean(-1)  # (B, T')
        applies = torch.tensor([teacher_applies(spec.domain, d, "asymmetric") for d in domains], device=hidden.device)
        scale = 1.0 if spec.domain == "speech" else 0.1
        total = total + scale * (ce * weights * applies[:, None]).sum()
    return total / weights.sum()


def make_step(contender: str, preset_name: str, device: torch.device):
    overrides = ["encoder.attention=sdpa"] if contender == "plain" else []
    config = apply_overrides(preset(preset_name), overrides + ["encoder.dropout=0.0", "subsampling.dropout=0.0"])
    torch.manual_seed(0)
    student = SpearStudent(config)
    objective = SpearObjective(ObjectiveConfig(teachers=TEACHERS), student.dim, student.frame_rate)
    module = TrainModule(student, objective).to(device)
    if contender == "spear" and device.type == "cuda":
        for block in student.blocks:
            block.compile(dynamic=True)
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4, fused=device.type == "cuda")
    waves, lengths, targets, domains = batch_for(device)
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

    return step, float(lengths.sum()) / 16000


@pytest.mark.parametrize("preset_name", ["tiny", "base"])
@pytest.mark.parametrize("contender", ["spear", "plain"])
def test_train_step(benchmark, device, peak_memory, machine, contender, preset_name):
    if preset_name == "base" and device.type != "cuda":
        pytest.skip("base is benchmarked on CUDA only (a CPU step takes minutes; CPU runs tiny)")
    step, audio_seconds = make_step(contender, preset_name, device)
    step()  # warm-up (compilation on CUDA)
    if device.type == "cuda":
        step()
    memory = peak_memory(step)
    benchmark.group = f"train_step {preset_name}"
    benchmark.extra_info.update({"peak_memory_bytes": memory, "machine": machine, "preset": preset_name,
                                 "audio_seconds_per_step": audio_seconds})
    benchmark.pedantic(step, rounds=5 if device.type == "cuda" else 2, iterations=1)
    benchmark.extra_info["audio_seconds_per_second"] = audio_seconds / benchmark.stats.stats.mean
