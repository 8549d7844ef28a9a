"""Frozen teachers: (waves (B, L) 16 kHz, lengths (B,)) -> TeacherOutput(frames (B, T, D),
frame_lengths (B,), frame_rate). Build one from a spec string with `load_teacher` (see spec.py)."""
from .base import SAMPLE_RATE, Teacher, TeacherOutput, check_waves
from .spec import KINDS, TeacherSpec, load_teacher

__all__ = ["KINDS", "SAMPLE_RATE", "Teacher", "TeacherOutput", "TeacherSpec", "check_waves", "load_teacher"]
