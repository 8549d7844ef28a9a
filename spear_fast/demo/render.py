"""Worker side of the demo-corpus build: render one job (a list of clip specs) and write its clips.

A job is the unit of work and of resumption: it renders only when one of its clips is missing, and
then writes only the missing clips (batch renders are recomputed whole, so a re-rendered clip is
bit-identical to the first build). Every clip's randomness comes from its own seed."""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field

import numpy as np
import soundfile as sf

from . import music, sounds, speech
from .audio_util import MIN_RMS, SAMPLE_RATE, check_clip, normalize_peak, read_16k, write_clip

MAX_SPEECH_SECONDS = 10.0  # synthetic sentences longer than this are cut (clips are 2-10 s)
BATCH_KINDS = ("music", "instrument", "note")


@dataclass
class ClipSpec:
    id: str
    relpath: str  # relative to the directory of the manifest the clip belongs to
    manifest: str  # "train.jsonl" or "probes/<task>/<split>.jsonl" (relative to the corpus root)
    domain: str  # "speech" | "audio"
    seed: tuple[int, ...]
    params: dict  # what the renderer needs
    meta: dict  # what the manifest records
    label: str | None = None


@dataclass
class Job:
    kind: str
    clips: list[ClipSpec]
    shared: dict = field(default_factory=dict)  # e.g. {"soundfont": path}


def clip_path(out_dir: str, clip: ClipSpec) -> str:
    return os.path.join(out_dir, os.path.dirname(clip.manifest), clip.relpath)


def _drum_samples(items: list[dict]) -> list[sounds.DrumSample]:
    return [sounds.DrumSample(**item) for item in items]


def render_single(kind: str, clip: ClipSpec) -> np.ndarray:
    rng = np.random.default_rng(list(clip.seed))
    p = clip.params
    if kind == "espeak":
        wave = speech.render_espeak(p["text"], p["voice"], p["rate"], p["pitch"])
        wave = wave[: int(MAX_SPEECH_SECONDS * SAMPLE_RATE)]
    elif kind == "flite":
        wave = speech.render_flite(p["text"], p["voice"], p["stretch"], p["f0_mean"])
        wave = wave[: int(MAX_SPEECH_SECONDS * SAMPLE_RATE)]
    elif kind == "hedgewars_sequence":
        wave = speech.hedgewars_sequence(rng, p["root"], p["pack"], p["stems"], p["duration"])
    elif kind == "hedgewars_utterance":
        wave = speech.hedgewars_utterance(p["root"], p["pack"], p["stem"])
    elif kind == "drum_pattern":
        wave = sounds.drum_pattern(rng, _drum_samples(p["samples"]), p["duration"])
    elif kind == "drum_hit":
        wave = sounds.drum_hit(_drum_samples([p["sample"]])[0], rng)
    elif kind == "sonic_pi":
        wave, _ = sounds.sonic_pi_clip(rng, p["paths"], p["duration"])
    elif kind == "recording":  # a real recording as it is (resampled to 16 kHz)
        wave = read_16k(p["path"])
    else:
        raise ValueError(f"unknown clip kind {kind!r}")
    return normalize_peak(wave, p["peak"]) if "peak" in p else wave


def note_clip(kind: str, clip: ClipSpec) -> music.NoteClip:
    rng = np.random.default_rng(list(clip.seed))
    p = clip.params
    if kind == "music":
        return music.random_music(rng, p["duration"], p["programs"])
    if kind == "instrument":
        return music.instrument_phrase(rng, p["duration"], p["program"])
    if kind == "note":
        return music.single_note(p["duration"], p["program"], p["pitch"], p["velocity"])
    raise ValueError(f"unknown batch kind {kind!r}")


def render_batch(job: Job) -> list[np.ndarray]:
    clips = [note_clip(job.kind, c) for c in job.clips]
    with tempfile.TemporaryDirectory() as workdir:
        waves = music.render_batch(clips, job.shared["soundfont"], workdir)
    out = []
    for clip, wave in zip(job.clips, waves):
        if not np.any(np.abs(wave) > MIN_RMS):  # silent render: keep it silent so check_clip rejects it
            wave = np.zeros_like(wave)
        if clip.params.get("drums"):  # a mixture: the music plus a drum pattern
            rng = np.random.default_rng([*clip.seed, 1])
            drums = sounds.drum_pattern(rng, _drum_samples(clip.params["drums"]), clip.params["duration"])
            drums = np.pad(drums, (0, max(0, len(wave) - len(drums))))[: len(wave)]
            wave = normalize_peak(wave, 0.7) + float(rng.uniform(0.3, 0.8)) * drums
        out.append(normalize_peak(wave, clip.params["peak"]))
    return out


def run_job(job: Job, out_dir: str) -> list[dict]:
    """Render the job's missing clips; returns one record per clip (status kept|written|failed)."""
    missing = [c for c in job.clips if not os.path.exists(clip_path(out_dir, c))]
    records: list[dict] = []
    batch: dict[str, np.ndarray] = {}
    batch_error = None
    if missing and job.kind in BATCH_KINDS:
        try:
            batch = dict(zip((c.id for c in job.clips), render_batch(job)))
        except Exception as exc:  # one bad batch is reported, never fatal for the corpus
            batch_error = f"{type(exc).__name__}: {exc}"
    for clip in job.clips:
        path = clip_path(out_dir, clip)
        record = {"id": clip.id, "manifest": clip.manifest, "kind": job.kind}
        try:
            if os.path.exists(path):
                info = sf.info(path)
                record.update(status="kept", frames=info.frames, sample_rate=info.samplerate)
            else:
                if batch_error is not None:
                    raise RuntimeError(batch_error)
                wave = batch[clip.id] if job.kind in BATCH_KINDS else render_single(job.kind, clip)
                check_clip(wave, f"{job.kind} clip {clip.id}")
                write_clip(path, wave)
                record.update(status="written", frames=len(wave), sample_rate=SAMPLE_RATE)
        except Exception as exc:
            record.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        records.append(record)
    return records
