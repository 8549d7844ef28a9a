"""Pre-training configuration: one typed dataclass per concern, nested under `TrainConfig`.

Fields, bounds and overrides are spear_fast/config.py's, so one `apply_overrides` sets the whole tree:

    config = apply_overrides(train_config("tiny"), ["optim.lr=3e-4", "model.encoder.num_layers=4"])

Sections: model (the student), masking, loss (objective + the teachers' token layout), optim,
schedule, data (batching, workers, validation), mixing (token and noise mixing), runtime (device,
precision, compile, seed), logging, checkpoint.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from spear_fast.config import apply_overrides, check, config_from_dict, field
from spear_fast.errors import UserError
from spear_fast.masking import MaskingConfig
from spear_fast.model.config import StudentConfig, preset
from spear_fast.objective import ObjectiveSettings

TEACHER_NAMES = ("speech", "audio")  # the key of each teacher = the domain it is the expert of


@dataclass
class TeacherTokensConfig:
    """What one teacher's token store must hold; None = take it from the store's meta.json (the
    resolved value is written back, so a resumed run checks the store against it)."""

    num_codebooks: int | None = field(None, "MVQ codebooks N per token frame (None: from the store)", ge=1)
    frame_rate: float | None = field(None, "token frames per second (None: from the store)", gt=0.0)
    codebook_size: int = field(256, "entries K per codebook", ge=2, le=256)


@dataclass
class LossConfig(ObjectiveSettings):
    """The objective of SPEAR.md section 6: its settings (alpha, lambda_audio, mode, max_length_mismatch;
    spear_fast/objective.py), which teachers it uses, and what their token stores hold."""

    teachers: Literal["both", "speech", "audio"] = field(
        "both", "which teachers' losses are used (single-teacher ablations drop the other store)")
    speech: TeacherTokensConfig = field(TeacherTokensConfig(), "speech teacher's tokens")
    audio: TeacherTokensConfig = field(TeacherTokensConfig(), "audio teacher's tokens")


@dataclass
class OptimConfig:
    """The optimizer (AdamW or ScaledAdam), gradient clipping and accumulation."""

    name: Literal["adamw", "scaled_adam"] = field(
        "adamw", "adamw: torch AdamW; scaled_adam: Zipformer's ScaledAdam (spear_fast/train/scaled_adam.py; the "
                 "paper: optim.lr=0.045 with schedule.kind=eden)")
    lr: float = field(5e-4, "peak learning rate", gt=0.0)
    beta1: float = field(0.9, "Adam beta1 (momentum)", ge=0.0, lt=1.0)
    beta2: float = field(0.98, "Adam beta2 (second moment)", ge=0.0, lt=1.0)
    eps: float = field(1e-8, "Adam epsilon", gt=0.0)
    weight_decay: float = field(0.01, "AdamW decoupled weight decay (not on biases, norms, mask vector); "
                                       "ScaledAdam has none", ge=0.0)
    grad_clip: float = field(1.0, "clip the global gradient norm to this (0: no clipping); not applied when "
                                   "ScaledAdam clips (clipping_scale set)", ge=0.0)
    accum_steps: int = field(1, "micro-batches per optimizer step (gradient accumulation)", ge=1)
    clipping_scale: float | None = field(
        2.0, "ScaledAdam: clip the parameter-scaled gradient norm to this many times the median of the last "
             "100 steps (none: off, grad_clip applies instead)", gt=0.0)
    scalar_lr_scale: float = field(0.1, "ScaledAdam: lr factor of scalar parameters and of tensor-size steps",
                                    gt=0.0)
    param_min_rms: float = field(1e-5, "ScaledAdam: a tensor's RMS is kept >= this (smallest step scale)", gt=0.0)
    param_max_rms: float = field(3.0, "ScaledAdam: a tensor's RMS is kept <= this by its size steps", gt=0.0)

    def __post_init__(self) -> None:
        check(self)  # also when built in code, not only from the command line or a checkpoint


@dataclass
class ScheduleConfig:
    """Learning-rate schedule: linear warm-up, then cosine, Eden or constant."""

    kind: Literal["cosine", "eden", "constant"] = field(
        "cosine", "cosine: decay to min_lr_ratio * lr at total_steps; eden: Zipformer/icefall Eden "
                  "((s^2 + S^2)/S^2)^-1/4 * ((e^2 + E^2)/E^2)^-1/4; constant: lr after warm-up")
    total_steps: int = field(100_000, "optimizer steps of the run (the schedule's length and the default stop)",
                              ge=1)
    warmup_steps: int = field(2_000, "linear warm-up steps from warmup_start * lr to lr", ge=0)
    warmup_start: float = field(0.0, "lr factor at step 0 of the warm-up", ge=0.0, le=1.0)
    min_lr_ratio: float = field(0.02, "cosine: final lr / peak lr", ge=0.0, le=1.0)
    eden_lr_steps: float = field(7500.0, "eden: step scale S of the step factor", gt=0.0)
    eden_lr_epochs: float = field(3.5, "eden: epoch scale E of the epoch factor", gt=0.0)


@dataclass
class DataConfig:
    """Batching (dynamic, by seconds of padded audio), loading and up-front validation."""

    max_seconds: float = field(200.0, "seconds of PADDED audio per micro-batch per process", gt=0.0)
    num_buckets: int = field(10, "duration buckets of the batch sampler", ge=1)
    max_duration: float = field(30.0, "clips longer than this are randomly cropped to it (seconds)", gt=0.04)
    min_duration: float = field(0.2, "clips shorter than this are skipped (reported in skipped.jsonl)", ge=0.01)
    num_workers: int = field(2, "DataLoader worker processes (0: load in the training process)", ge=0)
    prefetch_factor: int = field(2, "batches prefetched per worker", ge=1)
    allow_missing_tokens: bool = field(
        False, "False: every clip must have tokens of every teacher that applies to it (checked up front)")
    length_tolerance: float = field(
        0.1, "up-front check: |token frames / frame_rate - clip duration| must be <= this many seconds", ge=0.0)


@dataclass
class MixingConfig:
    """Token mixing (SPEAR.md section 7, kernels.token_mix) and noise mixing; training only."""

    token_mix_prob: float = field(0.1, "probability that a clip gets another clip of the batch mixed in",
                                   ge=0.0, le=1.0)
    snr_min_db: float = field(-5.0, "token mixing: lowest primary-to-partner SNR (dB)")
    snr_max_db: float = field(5.0, "token mixing: highest SNR (dB)")
    overlap_min: float = field(0.2, "token mixing: shortest partial overlap, fraction of the primary", ge=0.0,
                                le=1.0)
    overlap_max: float = field(0.5, "token mixing: longest partial overlap, fraction of the primary", ge=0.0,
                                le=1.0)
    full_overlap_prob: float = field(0.5, "token mixing: probability of a full-length overlap", ge=0.0, le=1.0)
    noise_prob: float = field(0.0, "probability that a clip gets noise added (targets unchanged)", ge=0.0,
                               le=1.0)
    noise_kind: Literal["gaussian", "batch"] = field(
        "gaussian", "noise source: white Gaussian noise, or another clip of the batch (babble, no token swap)")
    noise_snr_min_db: float = field(5.0, "noise mixing: lowest SNR (dB)")
    noise_snr_max_db: float = field(20.0, "noise mixing: highest SNR (dB)")

    def validate(self) -> None:
        if self.snr_min_db > self.snr_max_db or self.noise_snr_min_db > self.noise_snr_max_db:
            raise UserError(f"mixing: SNR ranges must have min <= max, got [{self.snr_min_db}, {self.snr_max_db}] "
                            f"and [{self.noise_snr_min_db}, {self.noise_snr_max_db}]")
        if self.overlap_min > self.overlap_max:
            raise UserError(f"mixing.overlap_min={self.overlap_min} > mixing.overlap_max={self.overlap_max}")


@dataclass
class RuntimeConfig:
    """Device, precision, compilation, seed."""

    device: str = field("auto", "auto (cuda if available, else cpu), cpu, cuda, cuda:N")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = field(
        "auto", "auto: bf16 autocast on CUDA, fp32 on CPU; fp16 uses a GradScaler")
    compile: Literal["auto", "on", "off"] = field("auto", "torch.compile the student's blocks; auto: on for CUDA")
    compile_backend: str = field("inductor", "torch.compile backend (aot_eager/eager for quick CPU checks)")
    seed: int = field(0, "seed of the data order, crops, masks, mixing and dropout (per step)", ge=0)
    threads: int = field(0, "torch CPU threads (0: torch's default)", ge=0)


@dataclass
class LoggingConfig:
    log_every: int = field(10, "steps between stdout lines, when the loop reads the steps' numbers from the "
                               "device (log.jsonl gets every step)", ge=1)
    progress: bool = field(True, "tqdm progress bar (rank 0)")
    tensorboard: bool = field(True, "write TensorBoard events when torch.utils.tensorboard is importable")
    plot: bool = field(True, "loss-curve PNG at the end (needs matplotlib)")


@dataclass
class CheckpointConfig:
    every_steps: int = field(1000, "save every N optimizer steps (and always at the end / on SIGTERM)", ge=1)
    keep_last: int = field(3, "checkpoints kept (older ones are deleted)", ge=1)
    keep_every: int = field(0, "also save and keep for good every checkpoint whose step is a multiple of this "
                                "(0: none); the demo report probes them for its trend panel", ge=0)
    ema_decay: float = field(0.0, "EMA of the student's weights (0: off; e.g. 0.9999)", ge=0.0, lt=1.0)


@dataclass
class TrainConfig:
    """Everything `train.py` needs besides the data paths."""

    model: StudentConfig = field(StudentConfig(), "the student (preset + overrides)")
    masking: MaskingConfig = field(MaskingConfig(), "fbank span masking (spear_fast/masking.py)")
    loss: LossConfig = field(LossConfig(), "objective")
    optim: OptimConfig = field(OptimConfig(), "optimizer")
    schedule: ScheduleConfig = field(ScheduleConfig(), "learning-rate schedule")
    data: DataConfig = field(DataConfig(), "batching and loading")
    mixing: MixingConfig = field(MixingConfig(), "token and noise mixing")
    runtime: RuntimeConfig = field(RuntimeConfig(), "device, precision, compile, seed")
    logging: LoggingConfig = field(LoggingConfig(), "logging")
    checkpoint: CheckpointConfig = field(CheckpointConfig(), "checkpointing")

    def validate(self) -> None:
        if self.data.min_duration >= self.data.max_duration:
            raise UserError(f"data.min_duration={self.data.min_duration} must be < data.max_duration="
                            f"{self.data.max_duration}")
        if self.data.max_duration > self.data.max_seconds:
            raise UserError(f"data.max_duration={self.data.max_duration} s does not fit in a batch of "
                            f"data.max_seconds={self.data.max_seconds} s")
        if self.schedule.warmup_steps > self.schedule.total_steps:
            raise UserError(f"schedule.warmup_steps={self.schedule.warmup_steps} exceeds schedule.total_steps="
                            f"{self.schedule.total_steps}")


# Per-preset training defaults: the student preset plus batch/optimiser choices that suit its size.
# All presets use the paper's optimiser, ScaledAdam at lr 0.045 (SPEAR.md section 6). The CPU demo
# (tiny) is sized to its budget (~10 of the demo's 20 minutes on 2 cores at ~25 s of audio per
# second; probes take ~7): 500 steps of 30 s batches = 4.2 h of audio, ~8 epochs of the 0.5 h demo
# corpus, with a cosine decay (Eden's step factor barely moves in 500 steps). On the demo ScaledAdam
# ends at a lower loss than AdamW at its best lr, 5e-4 (last 10 steps: 5.13 vs 5.29 nats on the speech
# tokens), and keeps more of what the probes read: its step is relative to each tensor's RMS, while
# AdamW moves every weight by ~lr, which rewrites the small-init conv and linear weights of the front
# end within tens of steps.
# At this budget the tiny preset also drops two of the paper's regularisers, each a measured ablation
# on the probe suite's validation splits (README, "What each lever did"): masked prediction (the
# student sees the whole input and predicts every frame's tokens; spoken-content mean 63.0 % without
# masking against 38.8 % with SPEAR's masking) and dropout (70.6 % against 67.4 %, and a cheaper
# step); a milestone checkpoint halfway feeds the demo report's trend panel.
# The others follow the paper: ~300 s of audio per GPU per step, Eden with icefall's warm-up (500
# steps from half the lr), masking and dropout.
_PAPER_OPTIMIZER = ["optim.name=scaled_adam", "optim.lr=0.045"]
_PAPER_SCHEDULE = ["schedule.kind=eden", "schedule.warmup_steps=500", "schedule.warmup_start=0.5"]
_PRESET_DEFAULTS: dict[str, list[str]] = {
    "tiny": ["data.max_seconds=30", "data.max_duration=10", "schedule.total_steps=500", "schedule.warmup_steps=25",
             *_PAPER_OPTIMIZER, "checkpoint.every_steps=100", "checkpoint.keep_every=250", "data.num_workers=1",
             "masking.enabled=false", "model.encoder.dropout=0", "model.subsampling.dropout=0"],
    "base": ["data.max_seconds=300", "schedule.total_steps=400000", *_PAPER_SCHEDULE, *_PAPER_OPTIMIZER],
    "large": ["data.max_seconds=300", "schedule.total_steps=400000", *_PAPER_SCHEDULE, *_PAPER_OPTIMIZER],
    "xlarge": ["data.max_seconds=300", "schedule.total_steps=500000", *_PAPER_SCHEDULE, *_PAPER_OPTIMIZER],
}
# The demo's longer run: the same tiny student and recipe for 3000 steps on a 4 h demo corpus
# (spear_fast.demo.run.DEMO_HOURS; ~48 min of pre-training on the slower 2-core VM, ~65 min from an
# empty directory with the data chain and the probes; the bar is 90), with milestones every 1000
# steps for the report's trend panel. Longer-run figures: README, "Longer runs".
_PRESET_DEFAULTS["tiny-long"] = [*_PRESET_DEFAULTS["tiny"], "schedule.total_steps=3000", "checkpoint.keep_every=1000"]
# A training preset that is not a student preset names the student it trains.
_PRESET_STUDENT = {"tiny-long": "tiny"}
TRAIN_PRESETS = tuple(_PRESET_DEFAULTS)


def train_config(name: str) -> TrainConfig:
    """The training config of preset `name` (ValueError listing the known names otherwise)."""
    if name not in _PRESET_DEFAULTS:
        raise UserError(f"unknown preset {name!r}; choose one of {list(TRAIN_PRESETS)}")
    student = preset(_PRESET_STUDENT.get(name, name))
    return apply_overrides(TrainConfig(model=student), _PRESET_DEFAULTS[name])


def train_config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Rebuild a TrainConfig from `config_to_dict` output (checkpoints)."""
    return config_from_dict(TrainConfig, data)
