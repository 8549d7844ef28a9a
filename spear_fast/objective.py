"""The SPEAR objective (SPEAR.md section 6): one linear head per teacher, masked multi-target CE via
kernels op 2, frame-rate alignment of the teachers' MVQ tokens, and the dual-domain loss.

Per teacher t and clip b (frames f at the student's rate):
    S_tb = sum_f w_f * (1/N_t) * sum_n CE(head_t(h_f)[n], z_fn),   w_f = alpha (masked), 1 - alpha
    (unmasked), 0 (padding); ignored targets (-100) contribute 0.
Which (teacher, clip) pairs count, by mode (a teacher's domain is "speech" or "audio"):
    asymmetric   speech teachers on every clip, audio teachers on audio clips only (the paper's)
    own_teacher  each teacher only on clips of its own domain
    both_all     every teacher on every clip
Teacher weights: 1 for speech teachers, lambda_audio for audio teachers (in every mode; set
lambda_audio = 1 for an unweighted ablation). So, asymmetric: L = sum_speech S_s + sum_audio
(S_s + lambda S_a). A clip with no tokens for a teacher (token length 0, or the teacher absent from
the batch) contributes nothing to that teacher's loss.

Normalisation: loss = loss_sum / weight_total with weight_total = sum of w_f over every valid student
frame of the batch (independent of teachers and tokens, so the gradient is exactly the summed
formula's times one per-batch constant). Under DDP/accumulation the trainer can instead divide
loss_sum by the global weight_total. Per-teacher logging values are S_t / W_t with W_t the frame
weight the teacher actually covered (a mean CE per weighted frame, ~ln 256 = 5.5 at init).

Frame-rate alignment (student rate r_s, teacher rate r_t): r_s = k r_t repeats each token frame k
times (25 Hz teacher, 50 Hz student: k = 2); r_t = g r_s concatenates g consecutive frames into
g N codebooks (50 Hz teacher, 25 Hz student: g = 2, the head then has g N * 256 outputs; an odd last
frame's missing half is -100). After alignment, a clip's token length may differ from its student
length by up to max_length_mismatch frames (default 2, at the student's rate): extra tokens are
trimmed, missing ones padded with -100; a larger difference raises ValueError naming the clip.

Host and device: the lengths (student frames, token frames) may come as Python ints, the host copies
that collation keeps. Which frames each head sees is then decided on the host and nothing is read
back from the device (spear_fast.lengths); the trainer calls it so, with check=False, since its
batches are built to shape.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from torch import nn

from kernels import IGNORE_INDEX
from kernels.linear_multi_target_ce import linear_multi_target_ce

from spear_fast.config import check, field
from spear_fast.errors import UserError
from spear_fast.lengths import Lengths, device_lengths, frame_indices, host_lengths

DOMAINS = ("speech", "audio")


@dataclass
class TeacherSpec:
    name: str = field(doc="teacher name (key of the targets mapping)")
    domain: Literal["speech", "audio"] = field(doc="the domain this teacher is the expert of")
    num_codebooks: int = field(doc="MVQ codebooks N of the teacher's tokens", ge=1)
    frame_rate: float = field(doc="token frames per second (Hz)", gt=0.0)
    codebook_size: int = field(256, "entries K per codebook", ge=2)


@dataclass
class ObjectiveSettings:
    """The objective's settings that hold for any set of teachers. ObjectiveConfig adds the teachers; the
    training config's `loss` section (spear_fast/train/config.py) adds what its token stores hold."""

    alpha: float = field(0.5, "frame weight of masked frames (unmasked frames: 1 - alpha)", ge=0.0, le=1.0)
    lambda_audio: float = field(0.1, "weight of the audio teachers' loss", ge=0.0)
    mode: Literal["asymmetric", "own_teacher", "both_all"] = field(
        "asymmetric", "asymmetric: speech teachers on all clips, audio teachers on audio clips; own_teacher: "
                      "each teacher on its own domain; both_all: every teacher on every clip")
    max_length_mismatch: int = field(
        2, "tolerated |token frames - student frames| per clip after alignment, at the student rate", ge=0)


@dataclass
class ObjectiveConfig(ObjectiveSettings):
    teachers: tuple[TeacherSpec, ...] = field((), "the teachers, one head each")

    @classmethod
    def for_teachers(cls, teachers: Sequence[TeacherSpec], settings: ObjectiveSettings) -> ObjectiveConfig:
        """The objective of `teachers` with the settings of `settings` (e.g. the training config's loss)."""
        shared = {f.name: getattr(settings, f.name) for f in dataclasses.fields(ObjectiveSettings)}
        return cls(teachers=tuple(teachers), **shared)

    def validate(self) -> None:
        if not self.teachers:
            raise UserError("objective.teachers is empty: the objective needs at least one teacher")
        names = [t.name for t in self.teachers]
        if len(set(names)) != len(names):
            raise UserError(f"objective.teachers has duplicate names: {names}")


def rate_ratio(teacher_rate: float, student_rate: float) -> tuple[int, int]:
    """(repeat k, group g): student = k * teacher (repeat frames) or teacher = g * student (group
    frames); one of them is 1. ValueError for non-integer ratios."""
    for a, b, kind in ((student_rate, teacher_rate, "repeat"), (teacher_rate, student_rate, "group")):
        ratio = a / b
        if ratio >= 1 and abs(ratio - round(ratio)) < 1e-6:
            return (round(ratio), 1) if kind == "repeat" else (1, round(ratio))
    raise UserError(f"teacher frame rate {teacher_rate} Hz and student frame rate {student_rate} Hz are not "
                    f"integer multiples of each other")


def head_codebooks(spec: TeacherSpec, student_rate: float) -> int:
    """Codebooks the teacher's head predicts per student frame (g * N)."""
    _, group = rate_ratio(spec.frame_rate, student_rate)
    return group * spec.num_codebooks


def aligned_lengths(token_lengths: Sequence[int], teacher_rate: float, student_rate: float) -> list[int]:
    """Token frames per clip at the student rate: k T_t when repeating, ceil(T_t / g) when grouping."""
    repeat, group = rate_ratio(teacher_rate, student_rate)
    return [n * repeat if repeat > 1 else (n + group - 1) // group for n in token_lengths]


def align_targets(tokens: torch.Tensor, token_lengths: Lengths, teacher_rate: float, student_rate: float,
                  student_lengths: Lengths, num_frames: int, max_mismatch: int = 2,
                  name: str = "teacher", check: bool = True) -> torch.Tensor:
    """Teacher tokens (B, T_t, N) at teacher_rate -> (B, num_frames, g N) int64 at student_rate, -100
    beyond each clip's aligned length and on padding. Clips with token length 0 come out all -100.
    The lengths (B,) may be Python ints (nothing is then read back from the device). check=False skips
    the shape and range checks; the length mismatch is checked always (on the host)."""
    if check and (tokens.dim() != 3 or tokens.is_floating_point()):
        raise ValueError(f"{name}: tokens must be an integer (B, T, N) tensor, got {tuple(tokens.shape)} "
                         f"{tokens.dtype}")
    batch, teacher_frames, codebooks = tokens.shape
    host_tokens, host_student = host_lengths(token_lengths), host_lengths(student_lengths)
    if check and (len(host_tokens) != batch or len(host_student) != batch):
        raise ValueError(f"{name}: token_lengths and student_lengths must have {batch} values, got "
                         f"{len(host_tokens)} and {len(host_student)}")
    if check and batch and (min(host_tokens) < 0 or max(host_tokens) > teacher_frames):
        raise ValueError(f"{name}: token_lengths must lie in [0, {teacher_frames}] (tokens {tuple(tokens.shape)}), "
                         f"got {host_tokens}")
    aligned = aligned_lengths(host_tokens, teacher_rate, student_rate)
    for b, (tokens_b, aligned_b, student_b) in enumerate(zip(host_tokens, aligned, host_student)):
        if tokens_b > 0 and abs(aligned_b - student_b) > max_mismatch:
            raise ValueError(f"{name}: utterance {b} has {aligned_b} token frames at the student rate "
                             f"{student_rate} Hz ({tokens_b} at {teacher_rate} Hz) but the student has "
                             f"{student_b} frames (tolerance {max_mismatch})")
    repeat, group = rate_ratio(teacher_rate, student_rate)
    device = tokens.device
    token_lengths = device_lengths(host_tokens, device)
    tokens = tokens.to(torch.int64)
    beyond = torch.arange(teacher_frames, device=device)[None, :] >= token_lengths[:, None]  # (B, T_t)
    tokens = tokens.masked_fill(beyond[..., None], IGNORE_INDEX)
    if repeat > 1:
        tokens = tokens.repeat_interleave(repeat, dim=1)  # (B, k T_t, N)
    elif group > 1:
        padded_frames = math.ceil(teacher_frames / group) * group
        tokens = nn.functional.pad(tokens, (0, 0, 0, padded_frames - teacher_frames), value=IGNORE_INDEX)
        tokens = tokens.reshape(batch, padded_frames // group, group * codebooks)  # (B, T_t / g, g N)
    out = tokens.new_full((batch, num_frames, tokens.shape[2]), IGNORE_INDEX)  # (B, T', g N)
    width = min(num_frames, tokens.shape[1])
    kept = device_lengths([min(a, n) for a, n in zip(aligned, host_student)], device)  # (B,)
    keep = torch.arange(width, device=device)[None, :] < kept[:, None]  # (B, width)
    out[:, :width] = tokens[:, :width].masked_fill(~keep[..., None], IGNORE_INDEX)
    return out


def frame_weights(output_mask: torch.Tensor, lengths: torch.Tensor, alpha: float,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, T'): alpha on masked frames, 1 - alpha on unmasked, 0 on padding (t >= lengths)."""
    valid = torch.arange(output_mask.shape[1], device=output_mask.device)[None, :] < lengths[:, None]
    masked = torch.tensor(alpha, dtype=dtype, device=output_mask.device)
    weights = torch.where(output_mask, masked, 1.0 - masked)
    return weights * valid


def teacher_applies(teacher_domain: str, clip_domain: str, mode: str) -> bool:
    if mode == "both_all":
        return True
    if mode == "own_teacher":
        return teacher_domain == clip_domain
    return teacher_domain == "speech" or clip_domain == "audio"  # asymmetric


class ObjectiveOutput(NamedTuple):
    loss: torch.Tensor  # () loss_sum / weight_total, what to optimise
    loss_sum: torch.Tensor  # () sum_t weight_t * S_t (differentiable)
    weight_total: torch.Tensor  # () sum of frame weights over valid student frames (no grad)
    teacher_losses: dict[str, torch.Tensor]  # name -> () S_t / W_t, detached (nan when W_t = 0)
    teacher_sums: dict[str, torch.Tensor]  # name -> () S_t, detached
    teacher_weights: dict[str, torch.Tensor]  # name -> () W_t


class SpearObjective(nn.Module):
    """Heads + loss. forward(hidden, lengths, output_mask, targets, domains) -> ObjectiveOutput."""

    def __init__(self, config: ObjectiveConfig, model_dim: int, student_frame_rate: float):
        super().__init__()
        check(config)
        self.config = config
        self.model_dim = model_dim
        self.student_frame_rate = student_frame_rate
        self.heads = nn.ModuleDict()
        for spec in config.teachers:
            outputs = head_codebooks(spec, student_frame_rate) * spec.codebook_size
            self.heads[spec.name] = nn.Linear(model_dim, outputs)  # weight (g N K, d): codebook n = rows [nK, (n+1)K)

    def forward(self, hidden: torch.Tensor, lengths: Lengths, output_mask: torch.Tensor,
                targets: Mapping[str, tuple[torch.Tensor, Lengths]], domains: Sequence[str],
                check: bool = True) -> ObjectiveOutput:
        """hidden (B, T', d) student output; lengths (B,); output_mask (B, T') bool (masked frames);
        targets: teacher name -> (tokens (B, T_t, N_t) int, -100 allowed; token_lengths (B,), 0 = none);
        domains: B strings in {"speech", "audio"}. Lengths as Python ints: no device read (module
        docstring). check=False skips the shape checks (for batches built to shape)."""
        config = self.config
        host = host_lengths(lengths)
        if check:
            self._check(hidden, host, output_mask, targets, domains)
        batch, num_frames, _ = hidden.shape
        device = hidden.device
        lengths = device_lengths(host, device)
        weight_dtype = torch.promote_types(hidden.dtype, torch.float32)  # fp32, or fp64 for fp64 hidden
        weights = frame_weights(output_mask.to(device), lengths, config.alpha, weight_dtype)  # (B, T')
        flat_hidden = hidden.reshape(batch * num_frames, -1)  # (B T', d)

        loss_sum = hidden.new_zeros((), dtype=weight_dtype)
        teacher_losses, teacher_sums, teacher_weights = {}, {}, {}
        for spec in config.teachers:
            head = self.heads[spec.name]
            scale = 1.0 if spec.domain == "speech" else config.lambda_audio
            counts = [0] * batch  # frames of each clip this teacher's head is trained on
            if spec.name in targets:
                tokens, token_lengths = targets[spec.name]
                token_lengths = host_lengths(token_lengths)
                aligned = align_targets(tokens.to(device), token_lengths, spec.frame_rate, self.student_frame_rate,
                                        host, num_frames, config.max_length_mismatch, name=spec.name,
                                        check=check)  # (B, T', g N)
                counts = [min(n, student) if teacher_applies(spec.domain, domain, config.mode) else 0
                          for n, student, domain in zip(aligned_lengths(token_lengths, spec.frame_rate,
                                                                        self.student_frame_rate), host, domains)]
            if sum(counts) == 0:
                # keep the head in the graph (DDP expects every parameter to receive a gradient)
                term = (head.weight.sum() + head.bias.sum()) * 0.0
                covered = weights.new_zeros(())
            else:
                selected = frame_indices(counts, num_frames, device)  # (F,)
                h = flat_hidden.index_select(0, selected)  # (F, d)
                w = weights.reshape(-1).index_select(0, selected)  # (F,)
                z = aligned.reshape(batch * num_frames, -1).index_select(0, selected)  # (F, g N)
                term = linear_multi_target_ce(h, head.weight.to(h.dtype), z, w, bias=head.bias.to(h.dtype),
                                              reduction="sum", check=False, skip_empty_frames=False)
                covered = (w * (z != IGNORE_INDEX).any(dim=1)).sum()  # a frame whose targets are all -100 adds 0
            loss_sum = loss_sum + scale * term.to(weight_dtype)
            teacher_sums[spec.name] = term.detach().to(weight_dtype)
            teacher_weights[spec.name] = covered.detach()
            teacher_losses[spec.name] = torch.where(covered > 0, teacher_sums[spec.name] / covered, math.nan)
        weight_total = weights.sum().detach()
        loss = loss_sum / weight_total.clamp(min=torch.finfo(weight_dtype).tiny)
        return ObjectiveOutput(loss=loss, loss_sum=loss_sum, weight_total=weight_total,
                               teacher_losses=teacher_losses, teacher_sums=teacher_sums,
                               teacher_weights=teacher_weights)

    def _check(self, hidden: torch.Tensor, lengths: list[int], output_mask: torch.Tensor,
               targets: Mapping[str, tuple[torch.Tensor, Lengths]], domains: Sequence[str]) -> None:
        if hidden.dim() != 3 or hidden.shape[2] != self.model_dim:
            raise ValueError(f"hidden must be (B, T', {self.model_dim}), got {tuple(hidden.shape)}")
        batch, num_frames, _ = hidden.shape
        if len(lengths) != batch:
            raise ValueError(f"lengths must be ({batch},), got {len(lengths)} values")
        if output_mask.shape != (batch, num_frames) or output_mask.dtype != torch.bool:
            raise ValueError(f"output_mask must be a bool ({batch}, {num_frames}) tensor, got "
                             f"{tuple(output_mask.shape)} {output_mask.dtype}")
        if len(domains) != batch or any(d not in DOMAINS for d in domains):
            raise ValueError(f"domains must be {batch} values in {DOMAINS}, got {list(domains)}")
        unknown = set(targets) - set(self.heads.keys())
        if unknown:
            raise ValueError(f"targets for unknown teachers {sorted(unknown)}; heads: {list(self.heads.keys())}")
        codebooks = {spec.name: spec.num_codebooks for spec in self.config.teachers}
        for name, (tokens, _) in targets.items():
            if tokens.dim() != 3 or tokens.shape[0] != batch or tokens.shape[2] != codebooks[name]:
                raise ValueError(f"{name}: tokens must be ({batch}, T, {codebooks[name]}), got {tuple(tokens.shape)}")
