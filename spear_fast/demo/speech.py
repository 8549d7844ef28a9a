"""Speech audio: espeak-ng and flite synthesis of random dictionary sentences, and real human
speech from the hedgewars-data voice packs."""
from __future__ import annotations

import functools
import os
import re
import subprocess
import zlib

import numpy as np

from spear_fast.errors import UserError

from .audio_util import SAMPLE_RATE, decode_wav_bytes, normalize_peak, read_16k

# flite's built-in voices; awb_time is a limited-domain voice (it only says times) and is left out.
FLITE_VOICES: tuple[str, ...] = ("kal", "kal16", "awb", "rms", "slt")
# Mean F0 ranges (Hz) drawn for flite voices: slt is a female voice, the others are male.
FLITE_F0_RANGE: dict[str, tuple[float, float]] = {"slt": (150.0, 210.0), "default": (90.0, 140.0)}
# espeak-ng voices of the voice-ID probe: English accents x variants, plus a few other languages
# (each reads English words with its own phonology, i.e. an accent).
ESPEAK_PROBE_VOICES: tuple[str, ...] = (
    "en-us+m3", "en-us+f2", "en+m1", "en+f4", "en-gb-scotland+m7", "en-029+f3",
    "en-gb-x-rp+Andy", "en-us+Annie", "de+m4", "fr-fr+f1", "es+m2", "hi+f5",
)
HEDGEWARS_VOICE_DIR = "usr/share/games/hedgewars/Data/Sounds/voices"
WORD_LIST = "usr/share/dict/american-english"
# Word pools by a stable hash of the word: pre-training text and the probe splits never share words,
# so a probe's test phrases are unseen both by the probe head and by pre-training.
WORD_POOLS: tuple[tuple[str, int], ...] = (("pretrain", 70), ("probe_train", 85), ("probe_valid", 90),
                                           ("probe_test", 100))
# Hedgewars phrases (file stems, shared across packs) by stable hash: probe valid/test phrases are
# also kept out of the pre-training clips.
PHRASE_SPLITS: tuple[tuple[str, int], ...] = (("train", 60), ("valid", 75), ("test", 100))


def stable_bucket(text: str) -> int:
    return zlib.crc32(text.encode("utf-8")) % 100


def pool_of(text: str, pools: tuple[tuple[str, int], ...]) -> str:
    bucket = stable_bucket(text)
    return next(name for name, upper in pools if bucket < upper)


def load_word_pools(wamerican_root: str) -> dict[str, list[str]]:
    """Plain lower-case words of 3..12 letters from wamerican, split into disjoint pools."""
    path = os.path.join(wamerican_root, WORD_LIST)
    with open(path, encoding="utf-8", errors="replace") as f:
        words = sorted({w.strip() for w in f if re.fullmatch(r"[a-z]{3,12}", w.strip())})
    if len(words) < 1000:
        raise ValueError(f"{path}: expected a dictionary word list, found {len(words)} usable words")
    pools: dict[str, list[str]] = {name: [] for name, _ in WORD_POOLS}
    for word in words:
        pools[pool_of(word, WORD_POOLS)].append(word)
    return pools


def sentence(rng: np.random.Generator, words: list[str], num_words: int) -> str:
    picked = [words[int(i)] for i in rng.integers(0, len(words), num_words)]
    return " ".join(picked)


@functools.lru_cache(maxsize=1)
def espeak_voices() -> tuple[list[str], list[str]]:
    """(voice file names, variants) known to the installed espeak-ng, sorted for determinism."""
    langs = subprocess.run(["espeak-ng", "--voices"], capture_output=True, text=True, check=True)
    variants = subprocess.run(["espeak-ng", "--voices=variant"], capture_output=True, text=True,
                              check=True)
    # Voice file names (e.g. "en-US", "chr"): some language codes in the listing do not resolve
    # (espeak-ng 1.51: "chr-US-Qaaa-x-west"), the file names all do.
    languages = sorted({line.split()[4].split("/")[-1] for line in langs.stdout.splitlines()[1:]
                        if len(line.split()) >= 5})
    names = sorted({token[3:] for line in variants.stdout.splitlines() for token in line.split()
                    if token.startswith("!v/")})
    return languages, names


@functools.lru_cache(maxsize=1)
def espeak_voice_names() -> frozenset[str]:
    """Every name `espeak-ng -v` resolves: languages, voice file names and their aliases."""
    listing = subprocess.run(["espeak-ng", "--voices"], capture_output=True, text=True, check=True).stdout
    names = set()
    for line in listing.splitlines()[1:]:
        tokens = line.split()
        if len(tokens) < 5:
            continue
        names.add(tokens[1].lower())
        names.update(t.split("/")[-1].lower() for t in tokens if "/" in t)
        names.update(alias.lower() for alias in re.findall(r"\((\S+) \d+\)", line))
    return frozenset(names)


def check_espeak_voice(voice: str) -> None:
    """espeak-ng silently falls back to its default voice for unknown names: refuse them instead."""
    language, _, variant = voice.partition("+")
    if language.lower() not in espeak_voice_names() or (variant and variant not in espeak_voices()[1]):
        raise ValueError(f"unknown espeak-ng voice {voice!r} (language {language!r}, variant {variant!r})")


def render_espeak(text: str, voice: str, rate: int, pitch: int) -> np.ndarray:
    check_espeak_voice(voice)
    result = subprocess.run(["espeak-ng", "-v", voice, "-s", str(rate), "-p", str(pitch), "--stdout",
                             text], capture_output=True)
    if result.returncode != 0:
        raise RuntimeError(f"espeak-ng -v {voice} failed: {result.stderr.decode()[-300:]}")
    return decode_wav_bytes(result.stdout, f"espeak-ng -v {voice}")


@functools.lru_cache(maxsize=1)
def flite_voices() -> list[str]:
    listing = subprocess.run(["flite", "-lv"], capture_output=True, text=True, check=True).stdout
    return listing.split(":", 1)[-1].split()


def render_flite(text: str, voice: str, stretch: float, f0_mean: float) -> np.ndarray:
    if voice not in flite_voices():  # flite silently falls back to its default voice
        raise ValueError(f"unknown flite voice {voice!r}; installed: {flite_voices()}")
    command = ["flite", "-voice", voice, "--setf", f"duration_stretch={stretch:.3f}",
               "--setf", f"int_f0_target_mean={f0_mean:.1f}", "-t", text, "-o", "/dev/stdout"]
    result = subprocess.run(command, capture_output=True)
    if result.returncode != 0:
        raise RuntimeError(f"flite -voice {voice} failed: {result.stderr.decode()[-300:]}")
    return decode_wav_bytes(result.stdout, f"flite -voice {voice}")


def hedgewars_packs(hedgewars_root: str) -> dict[str, list[str]]:
    """Voice pack name -> sorted phrase stems (each pack is one speaker)."""
    base = os.path.join(hedgewars_root, HEDGEWARS_VOICE_DIR)
    if not os.path.isdir(base):
        raise UserError(f"{base}: hedgewars voice packs not found")
    packs = {}
    for name in sorted(os.listdir(base)):
        stems = sorted(f[:-4] for f in os.listdir(os.path.join(base, name)) if f.endswith(".ogg"))
        if stems:
            packs[name] = stems
    return packs


def hedgewars_path(hedgewars_root: str, pack: str, stem: str) -> str:
    return os.path.join(hedgewars_root, HEDGEWARS_VOICE_DIR, pack, f"{stem}.ogg")


def hedgewars_utterance(hedgewars_root: str, pack: str, stem: str) -> np.ndarray:
    return read_16k(hedgewars_path(hedgewars_root, pack, stem))


def hedgewars_sequence(rng: np.random.Generator, hedgewars_root: str, pack: str, stems: list[str],
                       duration: float) -> np.ndarray:
    """Several utterances of one speaker with short pauses, up to `duration` seconds."""
    target = int(duration * SAMPLE_RATE)
    pieces, total = [], 0
    while total < target:
        stem = stems[int(rng.integers(0, len(stems)))]
        wave = normalize_peak(hedgewars_utterance(hedgewars_root, pack, stem), float(rng.uniform(0.4, 0.9)))
        pause = np.zeros(int(rng.uniform(0.1, 0.6) * SAMPLE_RATE), np.float32)
        pieces += [wave, pause]
        total += len(wave) + len(pause)
    return np.concatenate(pieces)[:target]
