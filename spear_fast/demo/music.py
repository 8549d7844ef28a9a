"""Instrument audio from General MIDI soundfonts: a tiny MIDI writer, random note sequences, and
batch rendering with the `fluidsynth` program (one process renders many clips, which are then cut
apart, so the 141 MB soundfont is loaded once per batch instead of once per clip)."""
from __future__ import annotations

import os
import struct
import subprocess
import tempfile
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from spear_fast.errors import UserError

from .audio_util import SAMPLE_RATE, to_mono

# The 16 General MIDI program families (8 programs each, programs 0..127 in order).
GM_FAMILIES: tuple[str, ...] = (
    "piano", "chromatic_percussion", "organ", "guitar", "bass", "strings", "ensemble", "brass",
    "reed", "pipe", "synth_lead", "synth_pad", "synth_effects", "ethnic", "percussive",
    "sound_effects",
)
# Families whose notes have a clear pitch (used for the pitch-class probe and for melodies).
PITCHED_FAMILIES: tuple[str, ...] = GM_FAMILIES[:12] + ("ethnic",)
PITCH_CLASSES: tuple[str, ...] = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")

TICKS_PER_SECOND = 960  # 480 ticks per quarter note at the default 120 bpm (500000 us per beat)
CLIP_GAP_SECONDS = 0.5  # silence between clips in one render; All-Sound-Off ends every clip first
BLOCK_SAMPLES = 64  # fluidsynth applies events at 64-sample block boundaries: align clip starts to it
RENDER_GAIN = 0.6  # fluidsynth master gain; the default (0.2) renders single notes very quietly


# Low instruments (contrabass, tuba, baritone sax) and the bass family play in LOW_RANGE; the rest in
# MID_RANGE. Within these MIDI note ranges every pitched program sounds in both FluidR3_GM and
# TimGM6mb (checked by rendering every program x pitch; e.g. FluidR3's contrabass is silent >= 58).
LOW_PROGRAMS = frozenset({43, 58, 67})
LOW_RANGE = (28, 55)
MID_RANGE = (48, 77)


def note_range(program: int) -> tuple[int, int]:
    """Inclusive MIDI note range used for `program`."""
    return LOW_RANGE if family_of(program) == "bass" or program in LOW_PROGRAMS else MID_RANGE


def family_of(program: int) -> str:
    if not 0 <= program < 128:
        raise ValueError(f"MIDI program must be in [0, 128), got {program}")
    return GM_FAMILIES[program // 8]


def programs_of(family: str) -> list[int]:
    if family not in GM_FAMILIES:
        raise ValueError(f"unknown GM family {family!r}; known: {GM_FAMILIES}")
    start = GM_FAMILIES.index(family) * 8
    return list(range(start, start + 8))


@dataclass(frozen=True)
class Note:
    start: float  # seconds from the clip start
    duration: float  # seconds
    pitch: int  # MIDI note number
    velocity: int  # 1..127
    channel: int  # 0..15, never 9 (the GM drum channel)


@dataclass(frozen=True)
class NoteClip:
    """One clip to render: programs per channel and notes, `duration` seconds long."""

    duration: float
    programs: dict[int, int]  # channel -> GM program
    notes: tuple[Note, ...]


def _varlen(value: int) -> bytes:
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    return bytes(reversed(out))


def midi_bytes(events: list[tuple[int, int, bytes]]) -> bytes:
    """A format-0 MIDI file from (tick, order, message) events (order breaks ties at one tick)."""
    track = bytearray()
    now = 0
    for tick, _, message in sorted(events, key=lambda e: (e[0], e[1])):
        track += _varlen(tick - now) + message
        now = tick
    track += b"\x00\xff\x2f\x00"  # end of track
    header = b"MThd" + struct.pack(">IHHH", 6, 0, 1, TICKS_PER_SECOND // 2)
    return header + b"MTrk" + struct.pack(">I", len(track)) + bytes(track)


def clip_starts(clips: list[NoteClip]) -> list[int]:
    """Start sample of each clip inside one batch render (block-aligned, gap after each clip)."""
    starts, position = [], BLOCK_SAMPLES * 4
    for clip in clips:
        starts.append(position)
        length = int(round((clip.duration + CLIP_GAP_SECONDS) * SAMPLE_RATE))
        position += -(-length // BLOCK_SAMPLES) * BLOCK_SAMPLES
    return starts


def batch_events(clips: list[NoteClip]) -> list[tuple[int, int, bytes]]:
    def tick(sample: float) -> int:
        return int(round(sample / SAMPLE_RATE * TICKS_PER_SECOND))

    events: list[tuple[int, int, bytes]] = []
    for clip, start in zip(clips, clip_starts(clips)):
        t0 = tick(start)
        for channel, program in sorted(clip.programs.items()):
            if channel == 9 or not 0 <= channel < 16:
                raise ValueError(f"channel must be in [0, 16) and not 9, got {channel}")
            events.append((t0, 0, bytes([0xC0 | channel, program])))
            events.append((t0, 0, bytes([0xB0 | channel, 7, 110])))  # channel volume
        end_tick = tick(start + clip.duration * SAMPLE_RATE)
        for note in clip.notes:
            on = tick(start + note.start * SAMPLE_RATE)
            off = min(tick(start + (note.start + note.duration) * SAMPLE_RATE), end_tick)
            if off <= on:
                continue
            events.append((on, 2, bytes([0x90 | note.channel, note.pitch, note.velocity])))
            events.append((off, 1, bytes([0x80 | note.channel, note.pitch, 0])))
        for channel in sorted(clip.programs):
            events.append((end_tick, 3, bytes([0xB0 | channel, 120, 0])))  # All Sound Off
    return events


def render_batch(clips: list[NoteClip], soundfont: str, workdir: str) -> list[np.ndarray]:
    """Render clips with fluidsynth at 16 kHz; returns one float32 mono wave per clip."""
    if not clips:
        return []
    if not os.path.isfile(soundfont):  # fluidsynth would silently fall back to a default soundfont
        raise UserError(f"soundfont not found: {soundfont}")
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        midi_path, wav_path = os.path.join(tmp, "batch.mid"), os.path.join(tmp, "batch.wav")
        with open(midi_path, "wb") as f:
            f.write(midi_bytes(batch_events(clips)))
        command = ["fluidsynth", "-n", "-i", "-q", "-R", "0", "-C", "0", "-g", str(RENDER_GAIN),
                   "-r", str(SAMPLE_RATE), "-T", "wav", "-F", wav_path, soundfont, midi_path]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0 or not os.path.exists(wav_path):
            raise RuntimeError(f"fluidsynth failed ({result.returncode}): {result.stderr[-500:]}")
        wave, sr = sf.read(wav_path, dtype="float32", always_2d=True)
    if sr != SAMPLE_RATE:
        raise RuntimeError(f"fluidsynth wrote {sr} Hz, expected {SAMPLE_RATE}")
    wave = to_mono(wave)
    out = []
    for clip, start in zip(clips, clip_starts(clips)):
        length = int(round(clip.duration * SAMPLE_RATE))
        piece = wave[start:start + length]
        out.append(np.pad(piece, (0, length - len(piece))).astype(np.float32))
    return out


def random_music(rng: np.random.Generator, duration: float, programs: list[int]) -> NoteClip:
    """A melody over chords (and a bass line when 3 programs are given) in a random key and tempo."""
    key = int(rng.integers(0, 12))
    scale = np.array([0, 2, 4, 5, 7, 9, 11] if rng.random() < 0.6 else [0, 2, 3, 5, 7, 8, 10])
    beat = 60.0 / float(rng.uniform(70, 160))
    notes: list[Note] = []
    channels = [c for c in range(16) if c != 9][: len(programs)]
    # channel 0: melody, stepwise random walk on the scale
    degree, t = int(rng.integers(0, 7)), 0.0
    base = 12 * int(rng.integers(5, 7)) + key
    while t < duration:
        length = beat * float(rng.choice([0.5, 0.5, 1.0, 1.0, 1.5, 2.0]))
        degree = int(np.clip(degree + rng.integers(-2, 3), -3, 10))
        pitch = base + 12 * (degree // 7) + int(scale[degree % 7])
        if rng.random() > 0.1:  # 10% rests
            notes.append(Note(t, length * 0.95, int(pitch), int(rng.integers(60, 120)), channels[0]))
        t += length
    if len(channels) > 1:  # channel 1: triads, one per bar
        t = 0.0
        while t < duration:
            root = int(rng.integers(0, 7))
            chord_base = 12 * int(rng.integers(4, 6)) + key
            for step in (0, 2, 4):
                d = root + step
                notes.append(Note(t, beat * 4 * 0.98, chord_base + 12 * (d // 7) + int(scale[d % 7]),
                                  int(rng.integers(45, 90)), channels[1]))
            t += beat * 4
    if len(channels) > 2:  # channel 2: bass on the beat
        t = 0.0
        while t < duration:
            d = int(rng.integers(0, 7))
            notes.append(Note(t, beat * 0.9, 36 + key + int(scale[d]), int(rng.integers(70, 110)),
                              channels[2]))
            t += beat
    ranges = {c: note_range(p) for c, p in zip(channels, programs)}
    notes = [Note(n.start, n.duration, fold_into(n.pitch, *ranges[n.channel]), n.velocity, n.channel)
             for n in notes]
    return NoteClip(duration, {c: p for c, p in zip(channels, programs)}, tuple(notes))


def fold_into(pitch: int, low: int, high: int) -> int:
    """Move `pitch` by octaves into [low, high] (keeps the pitch class; high - low >= 11)."""
    while pitch > high:
        pitch -= 12
    while pitch < low:
        pitch += 12
    return pitch


def instrument_phrase(rng: np.random.Generator, duration: float, program: int) -> NoteClip:
    """A short phrase of single notes or a chord on one program (instrument-family probe)."""
    low, high = note_range(program)
    notes, t = [], 0.0
    if rng.random() < 0.3:  # one held chord
        root = int(rng.integers(low, high - 6))
        notes = [Note(0.0, duration * 0.8, root + s, int(rng.integers(70, 115)), 0) for s in (0, 4, 7)]
    else:
        while t < duration * 0.85:
            length = float(rng.uniform(0.2, 0.8))
            notes.append(Note(t, length, int(rng.integers(low, high + 1)), int(rng.integers(70, 120)), 0))
            t += length
    return NoteClip(duration, {0: program}, tuple(notes))


def single_note(duration: float, program: int, pitch: int, velocity: int) -> NoteClip:
    """One held note (pitch-class probe)."""
    return NoteClip(duration, {0: program}, (Note(0.0, duration * 0.85, pitch, velocity, 0),))
