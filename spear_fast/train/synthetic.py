"""A synthetic pre-training corpus with LEARNABLE tokens, for tests, benchmarks and CPU timing.

Each clip is white noise whose amplitude is constant over 40 ms segments and follows a random walk
over `levels` loudness levels (6 dB apart). The tokens of both "teachers" are a fixed function of the
segment's level, so they are predictable from the fbank (loss can fall well below ln 256):
    speech teacher, 50 Hz: token[f, n] = (level * (2 n + 1) + 7 n) % 256 for frame f in the segment
    audio teacher,  25 Hz: token[f, n] = (level * (n + 3) + 11 n) % 256
Clips alternate between the speech and audio domains; the audio store only holds the audio clips
(as a real audio teacher's store would), the speech store holds every clip.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from spear_fast.data.manifest import ManifestEntry, write_manifest
from spear_fast.data.token_store import (
    TokenStoreMeta,
    TokenStoreWriter,
    finalize_token_store,
)
from spear_fast.sample_rate import SAMPLE_RATE

SEGMENT = 640  # samples per level segment: 40 ms = 2 frames at 50 Hz = 1 frame at 25 Hz


@dataclass
class SyntheticCorpus:
    manifest: Path
    token_dirs: dict[str, Path]


def write_synthetic_corpus(out_dir: str | Path, *, num_clips: int = 16, min_seconds: float = 0.6,
                           max_seconds: float = 1.2, seed: int = 0, speech_codebooks: int = 4,
                           audio_codebooks: int = 2, levels: int = 8) -> SyntheticCorpus:
    out_dir = Path(out_dir)
    (out_dir / "audio").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    entries = []
    speech_tokens, audio_tokens = {}, {}
    for i in range(num_clips):
        segments = int(rng.integers(int(min_seconds * 25), int(max_seconds * 25) + 1))  # 25 segments per second
        steps = rng.integers(-1, 2, size=segments)  # random walk of the level
        level = np.clip(int(rng.integers(0, levels)) + np.cumsum(steps), 0, levels - 1)  # (S,)
        amplitude = 0.5 * 10.0 ** (-6.0 * (levels - 1 - level) / 20.0)  # (S,) 6 dB per level
        wave = rng.standard_normal(segments * SEGMENT) * np.repeat(amplitude, SEGMENT) / 3.0
        wave = np.clip(wave, -1.0, 1.0).astype(np.float32)
        utt_id = f"clip{i:04d}"
        path = out_dir / "audio" / f"{utt_id}.wav"
        sf.write(path, wave, SAMPLE_RATE, subtype="FLOAT")
        domain = "audio" if i % 2 else "speech"
        entries.append(ManifestEntry(id=utt_id, path=str(path), duration=wave.size / SAMPLE_RATE, sample_rate=SAMPLE_RATE,
                                     domain=domain))
        n = np.arange(speech_codebooks)
        per_segment = (level[:, None] * (2 * n + 1) + 7 * n) % 256  # (S, N_s)
        speech_tokens[utt_id] = np.repeat(per_segment, 2, axis=0)  # (2 S, N_s) at 50 Hz
        if domain == "audio":
            n = np.arange(audio_codebooks)
            audio_tokens[utt_id] = (level[:, None] * (n + 3) + 11 * n) % 256  # (S, N_a) at 25 Hz
    manifest = out_dir / "manifest.jsonl"
    write_manifest(manifest, entries)
    dirs = {}
    for name, tokens, rate, count in (("speech", speech_tokens, 50.0, speech_codebooks),
                                      ("audio", audio_tokens, 25.0, audio_codebooks)):
        directory = out_dir / f"tokens_{name}"
        meta = TokenStoreMeta(teacher=f"synthetic-{name}", layer=None, frame_rate=rate, num_codebooks=count,
                              quantizer_hash=f"synthetic-{seed}")
        with TokenStoreWriter(directory, meta) as writer:
            for utt_id, array in tokens.items():
                writer.add(utt_id, array)
        finalize_token_store(directory)
        dirs[name] = directory
    return SyntheticCorpus(manifest=manifest, token_dirs=dirs)


# A student small enough for 2-CPU tests (~0.2 M parameters) and the batching that suits the corpus,
# trained with the paper's objective (masked prediction, dropout), which the tiny preset turns off.
TEST_OVERRIDES = [
    "masking.enabled=true", "model.encoder.dropout=0.1", "model.subsampling.dropout=0.1",
    "model.encoder.num_layers=2", "model.encoder.dim=64", "model.encoder.num_heads=2", "model.encoder.ffn_dim=128",
    "model.subsampling.channels=16", "data.max_seconds=3", "data.max_duration=1.5", "data.num_buckets=2",
    "data.num_workers=0", "schedule.warmup_steps=2", "schedule.total_steps=1000",
    "logging.progress=false", "logging.plot=false", "logging.tensorboard=false",
]


def train_argv(corpus: SyntheticCorpus, out: str | Path, *extra: str, overrides: list[str] | None = None) -> list[str]:
    """train.py arguments for a synthetic corpus and the test-sized student; `overrides` are --set items
    applied after TEST_OVERRIDES, `extra` raw flags."""
    argv = ["--manifest", str(corpus.manifest), "--out", str(out)]
    for name, directory in corpus.token_dirs.items():
        argv += ["--tokens", f"{name}={directory}"]
    for item in TEST_OVERRIDES + list(overrides or []):
        argv += ["--set", item]
    return argv + list(extra)


def fresh_seed() -> int:
    """A new random seed per call (tests: never a constant), or $SPEAR_TEST_SEED to reproduce a run."""
    import os

    import torch

    return int(os.environ.get("SPEAR_TEST_SEED", torch.seed() % (2**31)))
