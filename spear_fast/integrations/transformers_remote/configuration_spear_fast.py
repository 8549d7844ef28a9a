"""Configuration of a spear-fast student for transformers' AutoConfig (remote code, self-contained).

This file is copied verbatim beside model.safetensors by `spear export`; it imports transformers only,
so a user without spear-fast loads the folder with
    AutoModel.from_pretrained(folder, trust_remote_code=True)
config.json is the spear-fast export record itself: "student" holds the student configuration as
spear-fast writes it ({"name", "subsampling": {...}, "encoder": {...}}); "format" and "source" ride
along as plain attributes.
"""
from __future__ import annotations

import copy

from transformers import PretrainedConfig

# spear-fast's StudentConfig() defaults (the "base" shape); config.json always carries its own.
DEFAULT_STUDENT = {
    "name": "custom",
    "subsampling": {"channels": 256, "time_stride": 2, "dropout": 0.1},
    "encoder": {"num_layers": 12, "dim": 768, "num_heads": 12, "ffn_dim": 3072, "ffn_activation": "gelu",
                "norm": "layernorm", "dropout": 0.1, "attention_dropout": 0.0, "rope_base": 10000.0,
                "attention": "auto"},
}
INPUT_FRAME_RATE = 100.0  # fbank frames per second (10 ms shift)


class SpearFastConfig(PretrainedConfig):
    model_type = "spear_fast"

    def __init__(self, student: dict | None = None, min_samples: int = 80, **kwargs):
        student = copy.deepcopy(student if student is not None else DEFAULT_STUDENT)
        for section in ("subsampling", "encoder"):
            if not isinstance(student.get(section), dict):
                raise ValueError(f"SpearFastConfig: student[{section!r}] must be a mapping, got "
                                 f"{student.get(section)!r}")
        encoder, subsampling = student["encoder"], student["subsampling"]
        if subsampling.get("time_stride") not in (2, 4):
            raise ValueError(f"SpearFastConfig: subsampling.time_stride must be 2 or 4, got "
                             f"{subsampling.get('time_stride')!r}")
        if encoder["dim"] % encoder["num_heads"] or (encoder["dim"] // encoder["num_heads"]) % 2:
            raise ValueError(f"SpearFastConfig: encoder.dim {encoder['dim']} must split into num_heads "
                             f"{encoder['num_heads']} heads of even size (rotary)")
        self.student = student
        self.min_samples = int(min_samples)  # shortest clip (samples) that gives one output frame
        self.hidden_size = int(encoder["dim"])
        self.num_hidden_layers = int(encoder["num_layers"])
        kwargs.pop("frame_rate", None)  # derived below; config.json records it for readers
        self.frame_rate = INPUT_FRAME_RATE / subsampling["time_stride"]  # output frames per second
        super().__init__(**kwargs)
