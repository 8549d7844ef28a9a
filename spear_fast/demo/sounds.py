"""Real recorded sounds: Hydrogen drum-kit samples (single hits and random drum patterns) and
Sonic Pi samples (layered clips)."""
from __future__ import annotations

import functools
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import numpy as np

from spear_fast.errors import UserError

from .audio_util import SAMPLE_RATE, normalize_peak, place, read_16k

DRUMKIT_DIR = "usr/share/hydrogen/data/drumkits"
SONIC_PI_DIR = "usr/share/sonic-pi/samples"
# Drum type from the instrument name: first pattern that matches wins (order matters: "kick" before
# "drum", "rim" snare hits before "ride"...). Names that match none are "other" (not probed).
DRUM_TYPE_PATTERNS: tuple[tuple[str, str], ...] = (
    ("kick", r"kick|bass ?drum|bassdrum|\bbd\b"),
    ("snare", r"snare|rim"),
    ("hihat", r"hi-?hat|\bhh\b|\bhat\b|\bohh\b"),
    ("tom", r"\btom|floor tom|tomhi"),
    ("cymbal", r"crash|ride|cymbal|splash|china"),
    ("clap", r"clap"),
)
DRUM_TYPES: tuple[str, ...] = tuple(name for name, _ in DRUM_TYPE_PATTERNS)
MAX_HIT_SECONDS = 2.0  # drum hits longer than this are cut (long cymbal tails)


def drum_type(instrument_name: str) -> str:
    name = instrument_name.lower()
    for label, pattern in DRUM_TYPE_PATTERNS:
        if re.search(pattern, name):
            return label
    return "other"


@dataclass(frozen=True)
class DrumSample:
    kit: str
    instrument: str
    drum_type: str
    path: str  # absolute path of the sample file
    licence: str  # the kit's own <license> text


def drum_kits(hydrogen_root: str) -> dict[str, list[DrumSample]]:
    """Kit name -> its samples (all velocity layers), read from each kit's drumkit.xml."""
    base = os.path.join(hydrogen_root, DRUMKIT_DIR)
    if not os.path.isdir(base):
        raise UserError(f"{base}: Hydrogen drum kits not found")
    kits: dict[str, list[DrumSample]] = {}
    for kit in sorted(os.listdir(base)):
        xml_path = os.path.join(base, kit, "drumkit.xml")
        if not os.path.exists(xml_path):
            continue
        root = ET.parse(xml_path).getroot()
        ns = root.tag.split("}")[0] + "}" if root.tag.startswith("{") else ""
        licence = (root.findtext(f"{ns}license") or "").strip()
        samples = []
        for instrument in root.iter(f"{ns}instrument"):
            name = (instrument.findtext(f"{ns}name") or "").strip()
            for filename in sorted({e.text for e in instrument.iter(f"{ns}filename") if e.text}):
                path = os.path.join(base, kit, filename)
                # Hydrogen fills unused instrument slots with a silent "emptySample.flac"
                if os.path.exists(path) and not filename.startswith("emptySample"):
                    samples.append(DrumSample(kit, name, drum_type(name), path, licence))
        if samples:
            kits[kit] = samples
    return kits


@functools.lru_cache(maxsize=512)
def load_sample(path: str, max_seconds: float | None = None) -> np.ndarray:
    wave = read_16k(path)
    if max_seconds is not None:
        wave = wave[: int(max_seconds * SAMPLE_RATE)]
        fade = min(len(wave), SAMPLE_RATE // 20)  # 50 ms fade-out where a tail was cut
        wave = wave.copy()
        wave[len(wave) - fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
    return wave


def drum_hit(sample: DrumSample, rng: np.random.Generator) -> np.ndarray:
    """One hit, peak-normalised to a random level, with a short random lead-in of silence."""
    wave = normalize_peak(load_sample(sample.path, MAX_HIT_SECONDS), float(rng.uniform(0.4, 0.9)))
    lead = np.zeros(int(rng.uniform(0.0, 0.1) * SAMPLE_RATE), np.float32)
    return np.concatenate([lead, wave])


def drum_pattern(rng: np.random.Generator, samples: list[DrumSample], duration: float) -> np.ndarray:
    """A random 16th-note pattern (kick / snare / hi-hat / extra voice) looped over `duration`."""
    by_type: dict[str, list[DrumSample]] = {}
    for s in samples:
        by_type.setdefault(s.drum_type, []).append(s)
    voices = []  # (sample, hit probability per 16th step, base gain)
    for label, prob in (("kick", 0.3), ("snare", 0.2), ("hihat", 0.6), ("tom", 0.08), ("cymbal", 0.05),
                        ("clap", 0.1), ("other", 0.15)):
        if label in by_type:
            voices.append((by_type[label][int(rng.integers(0, len(by_type[label])))], prob))
    if not voices:
        raise ValueError("drum kit has no samples")
    step = 60.0 / float(rng.uniform(70, 170)) / 4
    steps = 16
    grid = [(s, rng.random(steps) < p, rng.uniform(0.3, 1.0, steps)) for s, p in voices]
    grid[0][1][0] = True  # the first voice (the kick when the kit has one) always plays on step 0
    canvas = np.zeros(int(duration * SAMPLE_RATE), np.float32)
    n_steps = int(duration / step)
    for i in range(n_steps):
        for sample, hits, gains in grid:
            if hits[i % steps]:
                place(canvas, load_sample(sample.path, MAX_HIT_SECONDS), int(i * step * SAMPLE_RATE),
                      float(gains[i % steps]))
    return normalize_peak(canvas, float(rng.uniform(0.5, 0.9)))


def sonic_pi_samples(sonic_pi_root: str) -> list[str]:
    base = os.path.join(sonic_pi_root, SONIC_PI_DIR)
    if not os.path.isdir(base):
        raise UserError(f"{base}: Sonic Pi samples not found")
    return sorted(os.path.join(base, f) for f in os.listdir(base) if f.endswith(".flac"))


def sonic_pi_clip(rng: np.random.Generator, paths: list[str], duration: float) -> tuple[np.ndarray, list[str]]:
    """1-4 random samples at random times and levels (loops are tiled to fill the clip)."""
    canvas = np.zeros(int(duration * SAMPLE_RATE), np.float32)
    picked = [paths[int(i)] for i in rng.integers(0, len(paths), int(rng.integers(1, 5)))]
    for path in picked:
        wave = normalize_peak(load_sample(path), float(rng.uniform(0.3, 0.9)))
        if os.path.basename(path).startswith("loop_") and len(wave) > 0:
            start = 0
            while start < len(canvas):
                place(canvas, wave, start)
                start += len(wave)
        else:
            repeats = int(rng.integers(1, 4))
            for start in rng.integers(0, max(1, len(canvas) - len(wave) // 2), repeats):
                place(canvas, wave, int(start), float(rng.uniform(0.5, 1.0)))
    return normalize_peak(canvas, float(rng.uniform(0.5, 0.9))), [os.path.basename(p) for p in picked]
