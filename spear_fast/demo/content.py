"""Spoken-content probes (the SUPERB keyword-spotting analogue): isolated spoken words and letters.

What a speech teacher knows and the spectrum does not is WHAT is said, whoever says it. So both
tasks hold whole voices out: the probe head is trained on some synthetic voices and tested on others
it never heard (another accent, another voice variant, another synthesis engine), and on real
recorded speakers. A voice is an espeak-ng accent + variant (e.g. "en-us-nyc+m3") or a flite voice.

Voices by split (none shared between splits; the valid and test voices are also kept out of the
pre-training corpus, so the student never heard them either):
  train  espeak-ng accents en-us, en-gb, en-gb-x-rp, en-029, en-gb-x-gbclan x the train variants;
         flite kal, kal16
  valid  espeak-ng en-gb-scotland x the valid variants; flite rms
  test   espeak-ng en-us-nyc, en-gb-x-gbcwmd x the test variants; flite awb, slt; and the real
         speakers below
espeak-ng variants are split by a stable hash of their name (VARIANT_SPLITS).

Real speakers (test side only): the Asterisk telephony prompt sets in Debian, recorded by voice
actors at 8 kHz (telephone band; resampled to 16 kHz like any input). Allison (US English) says the
digits, the NATO/ICAO spelling alphabet and the letters; the Spanish (Allison, Mexican Spanish
set), Canadian French (June), Russian and Italian (Menardi, its ICAO set) prompt sets say the ICAO
alphabet words with their own accent.
"""
from __future__ import annotations

import os
import zlib

DIGIT_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# ICAO spelling alphabet, its official spellings as labels (the SPOKEN_TEXT below is what the
# synthesisers read: their letter-to-sound rules mispronounce "alfa", "juliett" and "xray").
NATO_WORDS: tuple[str, ...] = (
    "alfa", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliett", "kilo",
    "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango", "uniform", "victor",
    "whiskey", "xray", "yankee", "zulu")
SPOKEN_TEXT: dict[str, str] = {"alfa": "alpha", "juliett": "juliet", "xray": "x-ray"}
LETTERS: tuple[str, ...] = tuple("abcdefghijklmnopqrstuvwxyz")

# The content tasks: name -> (classes, what the task.json says).
TASKS: dict[str, tuple[tuple[str, ...], str]] = {
    "spoken_word": (DIGIT_WORDS + NATO_WORDS,
                    "isolated spoken word: the ten digits and the 26 ICAO alphabet words; train/valid/test "
                    "voices are disjoint (held-out espeak-ng accents and variants, held-out flite voices), "
                    "and test adds real telephone-band recordings of five Asterisk prompt speakers"),
    "spoken_letter": (LETTERS,
                      "isolated spoken letter name (a-z, ISOLET-style); train/valid/test voices are "
                      "disjoint, and test adds a real telephone-band recording of each letter (Asterisk, "
                      "US English)"),
}

ESPEAK_ACCENTS: dict[str, tuple[str, ...]] = {
    "train": ("en-us", "en-gb", "en-gb-x-rp", "en-029", "en-gb-x-gbclan"),
    "valid": ("en-gb-scotland",),
    "test": ("en-us-nyc", "en-gb-x-gbcwmd"),
}
FLITE_SPLITS: dict[str, tuple[str, ...]] = {"train": ("kal", "kal16"), "valid": ("rms",), "test": ("awb", "slt")}
# espeak-ng variants by a stable hash of the name: train < 60 <= valid < 75 <= test.
VARIANT_SPLITS: tuple[tuple[str, int], ...] = (("train", 60), ("valid", 75), ("test", 100))
# Variants (espeak-ng's file names) left out: unvoiced or deliberately distorted speech, a speed-test
# voice, and "Mr" (the file "Mr serious", whose space the variant listing splits).
EXCLUDED_VARIANTS = frozenset({"whisper", "whisperf", "croak", "Demonic", "fast", "Mr"})
# Synthetic voices per split and task: (train, valid, test). A voice says every class once.
VOICES_PER_SPLIT: dict[str, tuple[int, int, int]] = {"spoken_word": (16, 5, 8), "spoken_letter": (16, 5, 11)}
TINY_VOICES_PER_SPLIT = (2, 1, 1)

# Real recordings: Debian package -> (speaker, sounds directory in the package, {label: file stem}).
ASTERISK_ROOT = "usr/share/asterisk/sounds"


def _icao_files(directory: str) -> dict[str, str]:
    return {word: f"{directory}/{word[0]}_p" for word in NATO_WORDS}


RECORDINGS: dict[str, dict[str, tuple[str, str, dict[str, str]]]] = {
    "spoken_word": {
        "asterisk-core-sounds-en-wav": ("asterisk:en_US_f_Allison", "en_US_f_Allison", {
            **{word: f"digits/{i}" for i, word in enumerate(DIGIT_WORDS)}, **_icao_files("phonetic")}),
        "asterisk-core-sounds-es-wav": ("asterisk:es_MX_f_Allison", "es_MX_f_Allison", _icao_files("phonetic")),
        "asterisk-core-sounds-fr-wav": ("asterisk:fr_CA_f_June", "fr_CA_f_June", _icao_files("phonetic")),
        "asterisk-core-sounds-ru-wav": ("asterisk:ru_RU_f_IvrvoiceRU", "ru_RU_f_IvrvoiceRU", _icao_files("phonetic")),
        "asterisk-prompt-it-menardi-wav": ("asterisk:it_IT_f_Menardi", "it_IT_f_Menardi", _icao_files("phonetic/ICAO")),
    },
    "spoken_letter": {
        "asterisk-core-sounds-en-wav": ("asterisk:en_US_f_Allison", "en_US_f_Allison",
                                        {letter: f"letters/{letter}" for letter in LETTERS}),
    },
}


def recording_path(package_root: str, speaker_dir: str, stem: str) -> str:
    return os.path.join(package_root, ASTERISK_ROOT, speaker_dir, f"{stem}.wav")


def spoken_text(label: str) -> str:
    """What a synthesiser is given to say class `label`."""
    return SPOKEN_TEXT.get(label, label)


def variant_split(variant: str) -> str:
    bucket = zlib.crc32(variant.encode("utf-8")) % 100
    return next(name for name, upper in VARIANT_SPLITS if bucket < upper)


def held_out_voices(variants: list[str]) -> tuple[set[str], set[str], set[str]]:
    """(espeak-ng accents, espeak-ng variants, flite voices) of the valid and test splits: the
    pre-training corpus leaves them out."""
    accents = set(ESPEAK_ACCENTS["valid"]) | set(ESPEAK_ACCENTS["test"])
    held = {v for v in variants if variant_split(v) != "train"}
    return accents, held, set(FLITE_SPLITS["valid"]) | set(FLITE_SPLITS["test"])


def probe_words() -> frozenset[str]:
    """Every word the content probes say (kept out of the pre-training text)."""
    words = set(DIGIT_WORDS) | set(NATO_WORDS)
    for text in SPOKEN_TEXT.values():
        words.update(text.replace("-", " ").split())
    return frozenset(words)
