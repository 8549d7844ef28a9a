"""The one sample rate of spear-fast: every teacher, the fbank, the student and the harness adapters
take 16 kHz mono audio. A module of its own, importable without torch (the demo corpus renderers use
numpy only)."""

SAMPLE_RATE = 16000  # Hz
