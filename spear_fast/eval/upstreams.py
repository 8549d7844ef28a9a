"""Upstreams: anything that turns 16 kHz waves into per-layer frame features, behind one interface.

    upstream = load_upstream("exported/")            # a `spear export` directory
    out = upstream(waves, lengths)                    # UpstreamOutput
    out.layers   tuple of num_layers (B, T, dim), zero past out.lengths
    out.lengths  (B,) int64 valid frames

Model specs (`load_upstream(spec)`, the --model argument of `spear extract` / `spear probe`):
  DIR                      a spear-fast export (config.json + model.safetensors): the front-end output + every layer
  RUN/ckpt-XXXXXXXX.pt     a training checkpoint (EMA weights when present, as `spear export`)
  fbank                    baseline: the 128-bin log-mel fbank frames (100 Hz) as a single "layer"
  random:PRESET[?seed=N]   baseline: the student architecture of PRESET with seeded random weights
  teacher:TEACHER_SPEC     a teacher through load_teacher (e.g. teacher:whisper-demo,
                           teacher:dasheng:/m/dasheng_12b.pt?layer=40); the bare teacher spec works too.
                           WavLM/HuBERT/wav2vec2 and Dasheng expose every transformer layer up to the
                           spec's layer (the last one is exactly the teacher's frames); other teachers
                           expose their one chosen layer. Add `upstream_layers=chosen` to the query to
                           keep only the chosen layer.
  hf:PATH?trust_remote_code=1   a local transformers folder with remote code, called the SPEAR way
                           (model(audio, audio_lens) -> encoder_out, hidden_states): the SPEAR authors'
                           released checkpoints, or a spear-fast export through AutoModel
                           (spear_fast/integrations/transformers_upstream.py). hf:PATH of a folder
                           without remote code is the teacher spec of kind hf.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple
from urllib.parse import parse_qsl

import torch
from torch import nn

from spear_fast.errors import UserError
from spear_fast.sample_rate import SAMPLE_RATE

STUDENT_MIN_SAMPLES = 80  # one fbank frame (10 ms shift, snip_edges=False rounds L / 160)


class UpstreamOutput(NamedTuple):
    layers: tuple[torch.Tensor, ...]  # num_layers x (B, T, dim) float32, zero past lengths
    lengths: torch.Tensor  # (B,) int64 valid frames


@dataclass
class UpstreamInfo:
    """What a results file records about an upstream."""

    name: str  # what was asked for (the spec)
    kind: str  # "student" | "checkpoint" | "fbank" | "random" | "teacher" | "hf"
    num_layers: int
    dim: int
    frame_rate: float  # frames per second
    fingerprint: str = ""  # changes when the weights change (keys feature caches and results)


def _check_batch(name: str, waves: torch.Tensor, lengths: torch.Tensor | None, min_samples: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L) float waves and (B,) integer lengths in [min_samples, L]; samples past a length zeroed."""
    if not isinstance(waves, torch.Tensor) or waves.dim() != 2 or not waves.is_floating_point():
        shape = tuple(waves.shape) if isinstance(waves, torch.Tensor) else type(waves).__name__
        raise ValueError(f"{name}: waves must be a float (B, L) tensor, got {shape}")
    batch, max_len = waves.shape
    if lengths is None:
        lengths = torch.full((batch,), max_len, dtype=torch.int64)
    if lengths.shape != (batch,) or lengths.is_floating_point():
        raise ValueError(f"{name}: lengths must be an integer ({batch},) tensor, got {tuple(lengths.shape)} "
                         f"{lengths.dtype}")
    lengths = lengths.to("cpu", torch.int64)
    if batch == 0 or int(lengths.min()) < min_samples or int(lengths.max()) > max_len:
        raise ValueError(f"{name}: lengths must lie in [{min_samples}, {max_len}] samples, got {lengths.tolist()}")
    valid = torch.arange(max_len, device=waves.device)[None, :] < lengths.to(waves.device)[:, None]  # (B, L)
    return waves.float().masked_fill(~valid, 0.0), lengths


def state_fingerprint(module: nn.Module) -> str:
    """sha1 (16 hex digits) of a module's parameters and buffers (names, shapes, bytes); about a
    second per GB. Modules without tensors (the CTranslate2 teacher) hash their repr instead."""
    import hashlib

    digest = hashlib.sha1()
    count = 0
    for key, tensor in sorted(module.state_dict().items()):
        digest.update(f"{key}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        count += 1
    if count == 0:
        digest.update(repr(module).encode())
    return digest.hexdigest()[:16]


def _zero_padding(layers: list[torch.Tensor], lengths: torch.Tensor) -> tuple[torch.Tensor, ...]:
    out = []
    for x in layers:  # (B, T, d)
        valid = torch.arange(x.shape[1], device=x.device)[None, :] < lengths.to(x.device)[:, None]  # (B, T)
        out.append(x.float().masked_fill(~valid[..., None], 0.0))
    return tuple(out)


class Upstream(nn.Module):
    """Base class: frozen, eval mode, no gradients. Subclasses set info and implement _layers."""

    info: UpstreamInfo
    min_samples: int = STUDENT_MIN_SAMPLES  # shortest clip giving at least one frame

    @property
    def num_layers(self) -> int:
        return self.info.num_layers

    @property
    def dim(self) -> int:
        return self.info.dim

    @property
    def frame_rate(self) -> float:
        return self.info.frame_rate

    @property
    def device(self) -> torch.device:
        param = next(iter(self.parameters()), None)
        return param.device if param is not None else torch.device("cpu")

    def train(self, mode: bool = True) -> Upstream:
        return super().train(False)  # frozen: dropout never switches on

    def _layers(self, waves: torch.Tensor, lengths: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def forward(self, waves: torch.Tensor, lengths: torch.Tensor | None = None) -> UpstreamOutput:
        """waves (B, L) float 16 kHz, lengths (B,) samples (None: all full) -> UpstreamOutput."""
        waves, lengths = _check_batch(self.info.name, waves, lengths, self.min_samples)
        layers, frame_lengths = self._layers(waves.to(self.device), lengths)
        frame_lengths = frame_lengths.to("cpu", torch.int64)
        if len(layers) != self.num_layers:
            raise RuntimeError(f"{self.info.name}: produced {len(layers)} layers, expected {self.num_layers}")
        return UpstreamOutput(_zero_padding(layers, frame_lengths), frame_lengths)


class StudentUpstream(Upstream):
    """A SPEAR student: fbank -> SpearStudent, every hidden state as SUPERB/s3prl take them: the front
    end's output (the Transformer's input), then each Transformer layer (the last after the final norm)."""

    def __init__(self, student: nn.Module, name: str, kind: str):
        super().__init__()
        self.student = student.eval()
        for p in self.student.parameters():
            p.requires_grad_(False)
        config = student.config
        self.info = UpstreamInfo(name=name, kind=kind, num_layers=1 + config.encoder.num_layers, dim=config.encoder.dim,
                                 frame_rate=config.frame_rate, fingerprint=state_fingerprint(student))

    def _layers(self, waves, lengths):
        from spear_fast.audio import fbank

        feats, feat_lengths = fbank(waves, lengths.to(waves.device))  # (B, T, 128), (B,)
        out = self.student(feats, feat_lengths)
        return [out.embedding, *out.layers], out.lengths


class FbankUpstream(Upstream):
    """Baseline: the 128-bin log-mel fbank frames (100 Hz), the student's own input, as one layer."""

    def __init__(self, name: str = "fbank", device: str | torch.device = "cpu"):
        super().__init__()
        from spear_fast.audio import FBANK_DIM, FRAME_SHIFT

        self._device = torch.device(device)

        self.info = UpstreamInfo(name=name, kind="fbank", num_layers=1, dim=FBANK_DIM,
                                 frame_rate=SAMPLE_RATE / FRAME_SHIFT, fingerprint="fbank")

    def _layers(self, waves, lengths):
        from spear_fast.audio import fbank

        feats, frame_lengths = fbank(waves, lengths.to(waves.device))  # (B, T, 128)
        return [feats], frame_lengths

    @property
    def device(self) -> torch.device:
        return self._device


class TeacherUpstream(Upstream):
    """A frozen teacher. With all_layers (WavLM/HuBERT/wav2vec2 and Dasheng), forward hooks on the
    Transformer blocks capture every block's output up to the teacher's layer; the last captured
    layer is replaced by the teacher's own frames (identical for HF models, + the final LayerNorm for
    Dasheng at full depth), so layer -1 is always exactly what the teacher gives."""

    def __init__(self, teacher: nn.Module, name: str, all_layers: bool = True):
        super().__init__()
        self.teacher = teacher
        self.blocks, self.block_kind = (self._find_blocks(teacher) if all_layers else (None, None))
        num_layers = len(self.blocks) if self.blocks is not None else 1
        self.min_samples = int(getattr(teacher, "min_samples", 1))
        self.info = UpstreamInfo(name=name, kind="teacher", num_layers=num_layers, dim=int(teacher.dim),
                                 frame_rate=float(teacher.frame_rate), fingerprint=state_fingerprint(teacher))

    @property
    def device(self) -> torch.device:
        return torch.device(getattr(self.teacher, "device", "cpu"))

    @staticmethod
    def _find_blocks(teacher: nn.Module) -> tuple[nn.ModuleList | None, str | None]:
        from spear_fast.teachers.dasheng import DashengTeacher
        from spear_fast.teachers.hf_ssl import HFSSLTeacher

        if isinstance(teacher, HFSSLTeacher) and len(teacher.model.encoder.layers) > 0:
            return teacher.model.encoder.layers, "hf"
        if isinstance(teacher, DashengTeacher):
            return teacher.model.blocks, "dasheng"
        return None, None  # CREPE layers differ in size; the CTranslate2 encoder gives its output only

    def _layers(self, waves, lengths):
        if self.blocks is None:
            out = self.teacher(waves, lengths)
            return [out.frames], out.frame_lengths
        calls: list[list[torch.Tensor]] = [[] for _ in self.blocks]

        def hook(index):
            def record(module, args, output):
                calls[index].append((output[0] if isinstance(output, tuple) else output).float())
            return record

        handles = [block.register_forward_hook(hook(i)) for i, block in enumerate(self.blocks)]
        try:
            out = self.teacher(waves, lengths)
        finally:
            for handle in handles:
                handle.remove()
        batch, num_frames, dim = out.frames.shape  # (B, T, D)
        layers = []
        for per_call in calls[:-1]:
            if self.block_kind == "dasheng":
                if self.teacher.model.cfg.pooling == "token":  # drop the class token of each chunk
                    per_call = [x[:, 1:] for x in per_call]
                x = torch.cat(per_call, dim=1)  # chunks of (B, t, D) -> (B, T, D)
            elif len(per_call) == 1:  # HF batched: one (B, T_conv, D) call
                x = per_call[0]
            else:  # HF one clip at a time: B calls of (1, T_b, D)
                x = out.frames.new_zeros(batch, num_frames, dim)
                for b, one in enumerate(per_call):
                    x[b, : one.shape[1]] = one[0, :num_frames]
            layers.append(x[:, :num_frames].to(out.frames.device))
        layers.append(out.frames)
        return layers, out.frame_lengths


def _split_query(text: str) -> tuple[str, dict[str, str]]:
    head, _, query = text.partition("?")
    return head, dict(parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))


def load_upstream(spec: str, device: str | torch.device = "cpu") -> Upstream:
    """Build an Upstream from a model spec (see the module docstring); ValueError for unknown specs."""
    from spear_fast.teachers.spec import KINDS, TeacherSpec

    if not isinstance(spec, str) or not spec:
        raise UserError(f"model spec must be a non-empty string, got {spec!r}")
    path = Path(spec).expanduser()
    if path.is_dir():
        from spear_fast.model.pretrained import SpearModel

        return StudentUpstream(SpearModel.from_pretrained(path, device=device), name=spec, kind="student")
    if path.is_file():
        return StudentUpstream(student_from_checkpoint(path).to(device), name=spec, kind="checkpoint")
    if spec == "fbank":
        return FbankUpstream(spec, device)
    if spec.startswith("random:"):
        from spear_fast.model import SpearStudent, preset

        head, options = _split_query(spec[len("random:"):])
        seed = options.pop("seed", "0")
        if options or not seed.lstrip("-").isdigit():
            raise UserError(f"model spec {spec!r}: random:PRESET takes only ?seed=INT, got {options or seed!r}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            student = SpearStudent(preset(head))
        return StudentUpstream(student.to(device), name=spec, kind="random")
    from spear_fast.integrations.transformers_upstream import is_remote_code_folder

    if is_remote_code_folder(spec):
        from spear_fast.integrations.transformers_upstream import load_remote_code_upstream

        return load_remote_code_upstream(spec, device)
    teacher_text = spec.removeprefix("teacher:")
    if teacher_text.partition("?")[0].partition(":")[0].strip().lower() in KINDS:
        from spear_fast.teachers import load_teacher

        head, options = _split_query(teacher_text)
        chosen = options.pop("upstream_layers", "all")
        if chosen not in ("all", "chosen"):
            raise UserError(f"model spec {spec!r}: upstream_layers must be 'all' or 'chosen', got {chosen!r}")
        teacher_spec = TeacherSpec.parse(head + ("?" + "&".join(f"{k}={v}" for k, v in options.items())
                                                 if options else ""))
        teacher = load_teacher(teacher_spec, device=device)
        return TeacherUpstream(teacher, name=spec, all_layers=chosen == "all")
    if os.sep in spec or spec.endswith((".pt", ".safetensors", ".json")):
        raise UserError(f"model spec {spec!r}: no such file or directory")
    raise UserError(f"model spec {spec!r} is none of: an export DIR, a checkpoint .pt, 'fbank', 'random:PRESET', "
                    f"'hf:PATH?trust_remote_code=1', 'teacher:SPEC' (teacher kinds: {', '.join(KINDS)})")


def student_from_checkpoint(path: Path) -> nn.Module:
    """The student of a training checkpoint, with the weights `spear export` would write (EMA when present)."""
    import tempfile

    from spear_fast.model.pretrained import SpearModel
    from spear_fast.model.export import export_checkpoint

    with tempfile.TemporaryDirectory(prefix="spear-upstream-") as tmp:
        export_checkpoint(path, tmp)
        return SpearModel.from_pretrained(tmp)
