"""Audio input: file loading (any libsndfile format, mono, resampled) and the 128-bin log-mel fbank."""
from spear_fast.sample_rate import SAMPLE_RATE

from .fbank import FBANK_DIM, FRAME_SHIFT, PAD_VALUE, fbank, num_frames
from .io import MIN_SAMPLES, AudioError, AudioInfo, audio_info, load_audio
from .resample import resample

__all__ = [
    "FBANK_DIM",
    "FRAME_SHIFT",
    "MIN_SAMPLES",
    "PAD_VALUE",
    "SAMPLE_RATE",
    "AudioError",
    "AudioInfo",
    "audio_info",
    "fbank",
    "load_audio",
    "num_frames",
    "resample",
]
