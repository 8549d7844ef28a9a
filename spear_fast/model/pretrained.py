"""A pre-trained student for downstream use: `SpearModel.from_pretrained(dir)`.

An exported model directory (written by `spear export CKPT OUT_DIR`, spear_fast/model/export.py) holds
    config.json         {"format": ..., "student": config_to_dict(StudentConfig), "source": {...}} plus
                        the keys transformers reads (model_type, auto_map, ...)
    model.safetensors   the student's state dict (no pickle anywhere)
    configuration_spear_fast.py, modeling_spear_fast.py   self-contained remote code: the folder also
                        loads with transformers' AutoModel.from_pretrained(dir, trust_remote_code=True)
                        (spear_fast/integrations/transformers_export.py)

    model = SpearModel.from_pretrained("exported/")      # eval mode, on the CPU
    out = model.extract(waves, lengths)                    # StudentOutput: hidden, lengths, layers
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from spear_fast.audio.fbank import FRAME_SHIFT
from spear_fast.config import config_from_dict, config_to_dict
from spear_fast.errors import UserError
from spear_fast.model.config import StudentConfig
from spear_fast.model.student import SpearStudent, StudentOutput

EXPORT_FORMAT = "spear-fast student v1"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FBANK_MIN_SAMPLES = FRAME_SHIFT // 2  # shortest wave with one fbank frame (round(L / 160) >= 1): one output frame


class SpearModel(SpearStudent):
    """The student plus loading and waveform-level feature extraction."""

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: str | torch.device = "cpu") -> SpearModel:
        from safetensors.torch import load_file

        directory = Path(directory)
        config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        for path in (config_path, weights_path):
            if not path.is_file():
                raise UserError(f"{path}: not found (expected an exported SPEAR model directory)")
        record = json.loads(config_path.read_text())
        if record.get("format") != EXPORT_FORMAT:
            raise UserError(f"{config_path}: format {record.get('format')!r}, expected {EXPORT_FORMAT!r}")
        config = config_from_dict(StudentConfig, record["student"])
        model = cls(config)
        state = load_file(str(weights_path), device="cpu")
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise UserError(f"{weights_path}: weights do not match the config (missing {missing[:5]}, "
                            f"unexpected {unexpected[:5]})")
        return model.to(device).eval()

    @torch.no_grad()
    def extract(self, waves: torch.Tensor, lengths: torch.Tensor | None = None) -> StudentOutput:
        """waves (B, L) float 16 kHz in [-1, 1] (or one (L,) wave), lengths (B,) samples -> StudentOutput
        with every layer. No masking, no dropout (call .eval(), as from_pretrained does)."""
        from spear_fast.audio import fbank

        if waves.dim() == 1:
            if lengths is not None:
                raise ValueError("extract: lengths must be None for a single 1-D wave")
            waves = waves[None]
        if waves.dim() != 2:
            raise ValueError(f"extract: waves must be (B, L) or (L,), got {tuple(waves.shape)}")
        device = next(self.parameters()).device
        waves = waves.to(device, torch.float32)
        if lengths is not None:
            lengths = lengths.to(device)
        feats, feat_lengths = fbank(waves, lengths)  # (B, T, 128), (B,)
        if int(feat_lengths.min()) < 1:
            raise ValueError(f"extract: every wave needs >= 80 samples (one fbank frame), got lengths "
                             f"{(lengths if lengths is not None else torch.tensor([waves.shape[1]])).tolist()}")
        return self(feats, feat_lengths)


def save_pretrained(student_state: dict[str, torch.Tensor], config: StudentConfig, directory: str | os.PathLike,
                    source: dict | None = None) -> Path:
    """Write config.json + model.safetensors + the transformers remote-code files (each atomically)
    into `directory`."""
    from safetensors.torch import save_file

    from spear_fast.integrations.transformers_export import transformers_fields, write_remote_code

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in student_state.items()}
    tmp = directory / f".{WEIGHTS_NAME}.tmp"
    # "format": "pt" is what transformers requires of a safetensors checkpoint's metadata
    save_file(state, str(tmp), metadata={"format": "pt", "spear_fast_format": EXPORT_FORMAT})
    os.replace(tmp, directory / WEIGHTS_NAME)
    write_remote_code(directory)
    record = {"format": EXPORT_FORMAT, "student": config_to_dict(config), "frame_rate": config.frame_rate,
              "source": source or {}, **transformers_fields(min_samples=FBANK_MIN_SAMPLES)}
    tmp = directory / f".{CONFIG_NAME}.tmp"
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, directory / CONFIG_NAME)
    return directory
