"""The sizes of every part: GPU (the measured run, <= 8 minutes on one H100/H200) and DRY_RUN (the
same cases at tiny sizes on a CPU with the torch twins, so the script cannot rot; CI runs it).

GPU sizes follow the claims being measured: the fused CE at a large student's two heads over ~10
minutes of 50 Hz frames (F = 30,000, d = 1024, 24 x 256 outputs), MVQ at SPEAR's WavLM layout (D =
1024, N = 16, K = 256, 5 refine passes) on 20,000 frames (400 s of audio), token mixing on 64 clips
of 30 s, training steps on 300 s of audio (the base/large presets' batch). Edge sizes: every target
ignored (CE), an empty batch (search), nothing mixed with every token ignored (mixing), one frame, a
K that is not a power of two, D = 1280 (the xlarge student's width).
"""
from __future__ import annotations

from dataclasses import dataclass

from spear_fast.train.synthetic import TEST_OVERRIDES


@dataclass(frozen=True)
class CESize:
    label: str
    F: int  # frames
    d: int  # hidden width
    N: int  # codebooks
    K: int  # classes per codebook
    all_ignored: bool = False  # every target -100

    def as_dict(self) -> dict[str, int]:
        return {"F": self.F, "d": self.d, "N": self.N, "K": self.K}


@dataclass(frozen=True)
class SearchSize:
    label: str
    B: int  # frames
    N: int  # codebooks
    K: int  # centres per codebook
    D: int  # frame dimension


@dataclass(frozen=True)
class MixSize:
    label: str
    B: int  # clips
    seconds: float  # samples per clip / 16 kHz (clips are 1/2 to 1 of it)
    teachers: tuple[tuple[float, int], ...]  # (frame rate Hz, codebooks) per teacher
    prob: float  # mixing probability of the drawn plan
    ignore_all: bool = False  # every token -100


@dataclass(frozen=True)
class EncodeSize:
    D: int
    N: int
    K: int
    refine: int  # refine passes
    B: int  # frames
    reference_chunk: int  # frames per call of the reference (its memory grows with B)


@dataclass(frozen=True)
class TeacherShape:
    """A WavLM of this shape with random weights (transformers.WavLMConfig fields)."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    conv_channels: int  # all 7 conv layers of the feature extractor
    layer: int  # output of this transformer layer (SPEAR: 21 of WavLM Large's 24)
    clips: int
    seconds: float


@dataclass(frozen=True)
class Timing:
    min_reps: int
    max_reps: int
    max_seconds: float  # per contender, after the warm-up


@dataclass(frozen=True)
class Profile:
    name: str
    total_s: float  # default --budget
    shares: dict[int, float]  # part -> share of the budget
    # part 1
    ce_sizes: tuple[CESize, ...]
    search_sizes: tuple[SearchSize, ...]
    mix_sizes: tuple[MixSize, ...]
    # part 2
    ce_peer: CESize
    search_peer: SearchSize
    mix_peer: tuple[MixSize, ...]
    timing: Timing
    compile_backend: str  # torch.compile backend of the compiled contenders
    # part 3
    encode: EncodeSize
    teacher: TeacherShape
    # part 4
    step_presets: tuple[str, ...]
    step_overrides: tuple[str, ...]  # student config --set items on top of each preset
    step_clips: int
    step_seconds: float
    run_preset: str
    run_steps: int
    run_warmup_steps: int  # compilations are allowed up to here
    run_corpus: tuple[int, float, float]  # synthetic clips, min seconds, max seconds
    run_overrides: tuple[str, ...]  # TrainConfig --set items on top of the preset


TEACHERS = ((50.0, 16), (25.0, 8))  # SPEAR's token layouts: WavLM 16 x 256 at 50 Hz, Dasheng 8 x 256 at 25 Hz
RUN_LOGGING = ("logging.progress=false", "logging.plot=false", "logging.tensorboard=false", "logging.log_every=50",
               "checkpoint.every_steps=1000000")

GPU = Profile(
    name="gpu",
    total_s=480.0,
    shares={1: 75.0, 2: 130.0, 3: 80.0, 4: 195.0},
    ce_sizes=(
        CESize("F=30000 d=1024 N=24 K=256", 30_000, 1024, 24, 256),
        CESize("every target ignored", 512, 1024, 24, 256, all_ignored=True),
        CESize("one frame", 1, 1024, 24, 256),
        CESize("K=200 (not a power of two)", 4099, 512, 3, 200),
        CESize("d=1280", 8000, 1280, 24, 256),
    ),
    search_sizes=(
        SearchSize("B=2000 N=16 K=256 D=1024", 2000, 16, 256, 1024),
        SearchSize("empty batch", 0, 16, 256, 1024),
        SearchSize("one frame", 1, 16, 256, 1024),
        SearchSize("K=200 (not a power of two)", 999, 8, 200, 1024),
        SearchSize("K=300 (two K tiles)", 513, 4, 300, 1024),
        SearchSize("D=1280", 2000, 16, 256, 1280),
    ),
    mix_sizes=(
        MixSize("64 x 30 s, every row mixed", 64, 30.0, TEACHERS, 1.0),
        MixSize("nothing mixed, every token ignored", 8, 2.0, TEACHERS, 0.0, ignore_all=True),
        MixSize("one frame", 4, 0.02, TEACHERS, 1.0),
        MixSize("N=3 and N=5 codebooks", 7, 1.37, ((50.0, 3), (25.0, 5)), 1.0),
    ),
    ce_peer=CESize("F=30000 d=1024 N=24 K=256", 30_000, 1024, 24, 256),
    search_peer=SearchSize("B=2000 N=16 K=256 D=1024", 2000, 16, 256, 1024),
    mix_peer=(MixSize("64 x 30 s, prob 0.1", 64, 30.0, TEACHERS, 0.1),
              MixSize("64 x 30 s, prob 1.0", 64, 30.0, TEACHERS, 1.0)),
    timing=Timing(min_reps=3, max_reps=20, max_seconds=1.5),
    compile_backend="inductor",
    encode=EncodeSize(D=1024, N=16, K=256, refine=5, B=20_000, reference_chunk=5000),
    teacher=TeacherShape(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                         conv_channels=512, layer=21, clips=40, seconds=10.0),
    step_presets=("large", "base"),
    step_overrides=(),
    step_clips=30,
    step_seconds=10.0,
    run_preset="base",
    run_steps=200,
    run_warmup_steps=20,
    run_corpus=(96, 6.0, 14.0),
    run_overrides=(*RUN_LOGGING, "data.num_workers=4"),
)

DRY_RUN = Profile(
    name="dry-run",
    total_s=600.0,  # ~15 s on 2 idle cores; generous, so a busy CI machine never cuts a part short
    shares=GPU.shares,
    ce_sizes=(
        CESize("F=64 d=32 N=3 K=16", 64, 32, 3, 16),
        CESize("every target ignored", 16, 32, 3, 16, all_ignored=True),
        CESize("one frame", 1, 32, 3, 16),
        CESize("K=20 (not a power of two)", 33, 16, 2, 20),
        CESize("d=1280", 8, 1280, 2, 16),
    ),
    search_sizes=(
        SearchSize("B=16 N=4 K=16 D=32", 16, 4, 16, 32),
        SearchSize("empty batch", 0, 4, 16, 32),
        SearchSize("one frame", 1, 4, 16, 32),
        SearchSize("K=20 (not a power of two)", 9, 2, 20, 16),
        SearchSize("K=300 (two K tiles)", 3, 2, 300, 8),
        SearchSize("D=1280", 4, 2, 16, 1280),
    ),
    mix_sizes=(
        MixSize("4 x 0.5 s, every row mixed", 4, 0.5, TEACHERS, 1.0),
        MixSize("nothing mixed, every token ignored", 3, 0.2, TEACHERS, 0.0, ignore_all=True),
        MixSize("one frame", 3, 0.02, TEACHERS, 1.0),
        MixSize("N=3 and N=5 codebooks", 5, 0.37, ((50.0, 3), (25.0, 5)), 1.0),
    ),
    ce_peer=CESize("F=256 d=32 N=3 K=16", 256, 32, 3, 16),
    search_peer=SearchSize("B=64 N=4 K=16 D=32", 64, 4, 16, 32),
    mix_peer=(MixSize("4 x 0.5 s, prob 1.0", 4, 0.5, TEACHERS, 1.0),),
    timing=Timing(min_reps=1, max_reps=1, max_seconds=0.0),
    compile_backend="eager",  # dynamo's graph capture without inductor's code generation (minutes on a CPU)
    encode=EncodeSize(D=64, N=4, K=16, refine=2, B=128, reference_chunk=64),
    teacher=TeacherShape(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         conv_channels=16, layer=2, clips=2, seconds=0.5),
    step_presets=("tiny",),
    step_overrides=("encoder.num_layers=2", "encoder.dim=64", "encoder.num_heads=2", "encoder.ffn_dim=128",
                    "subsampling.channels=16"),  # the tests' student: seconds, not minutes, on 2 cores
    step_clips=2,
    step_seconds=1.0,
    run_preset="tiny",
    run_steps=15,
    run_warmup_steps=5,
    run_corpus=(12, 0.6, 1.2),
    # the tests' 0.2 M-parameter student and batching (spear_fast.train.synthetic), compiled as on a GPU
    run_overrides=(*TEST_OVERRIDES, *RUN_LOGGING, "runtime.compile=on", "runtime.compile_backend=eager"),
)
