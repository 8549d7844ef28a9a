"""The SPEAR student: configuration presets, Conv2d subsampling, attention backends, the encoder."""
from spear_fast.model.attention import AttentionBackendUnavailable, resolve_backend
from spear_fast.model.config import (
                                     PRESETS,
                                     EncoderConfig,
                                     StudentConfig,
                                     SubsamplingConfig,
                                     base,
                                     large,
                                     param_count,
                                     preset,
                                     tiny,
                                     xlarge,
)
from spear_fast.model.pretrained import SpearModel
from spear_fast.model.student import SpearStudent, StudentOutput
from spear_fast.model.subsampling import subsampled_lengths

__all__ = [
    "PRESETS", "AttentionBackendUnavailable", "EncoderConfig", "SpearModel", "SpearStudent", "StudentConfig", "StudentOutput",
    "SubsamplingConfig", "base", "large", "param_count", "preset", "resolve_backend", "subsampled_lengths", "tiny",
    "xlarge",
]
