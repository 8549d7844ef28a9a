"""s3prl upstream for a spear-fast student (s3prl 0.4.18's UpstreamExpert contract).

    expert = UpstreamExpert("exported/large")            # an export directory or a training checkpoint
    out = expert([wav1, wav2])                           # 1-D float 16 kHz tensors
    out["hidden_states"]      num_layers + 1 x (B, T, d): the front end's output (the Transformer's
                              input), then every Transformer layer (the last after the final norm),
                              as s3prl orders them; frames past a clip's end are zero
    out["last_hidden_state"]  the last of them
    expert.get_downsample_rates(key)   320 (50 Hz) or 640 (25 Hz) samples per frame, for every key

Register it with s3prl through spear_fast/integrations/s3prl_hubconf.py. Like any s3prl upstream it
is an nn.Module: s3prl's runner decides train/eval mode and whether gradients flow (-f fine-tunes).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from spear_fast.audio.fbank import FRAME_SHIFT
from spear_fast.integrations.waveforms import mono_clips
from spear_fast.model.pretrained import FBANK_MIN_SAMPLES


def load_student(ckpt: str) -> nn.Module:
    """The student of an export directory or a training checkpoint file, in eval mode."""
    from spear_fast.eval.upstreams import student_from_checkpoint
    from spear_fast.model.pretrained import SpearModel

    path = Path(str(ckpt)).expanduser()
    if path.is_dir():
        return SpearModel.from_pretrained(path)
    if path.is_file():
        return student_from_checkpoint(path).eval()
    raise ValueError(f"spear-fast s3prl upstream: ckpt {str(ckpt)!r} is neither an export directory "
                     f"(config.json + model.safetensors) nor a training checkpoint file")


class UpstreamExpert(nn.Module):
    def __init__(self, ckpt: str, model_config: str | None = None, refresh: bool = False, **kwargs):
        """ckpt: a `spear export` directory or a training checkpoint (.pt). model_config must stay None
        (the student's configuration lives in the checkpoint); refresh is s3prl's download switch,
        meaningless for local files."""
        super().__init__()
        if model_config is not None:
            raise ValueError(f"spear-fast s3prl upstream: model_config={model_config!r} is not used; the "
                             f"configuration is read from ckpt {ckpt!r}")
        if kwargs:
            raise ValueError(f"spear-fast s3prl upstream: unknown options {sorted(kwargs)}")
        self.name = "[spear-fast UpstreamExpert]"
        self.model = load_student(ckpt)
        self.downsample_rate = FRAME_SHIFT * self.model.config.subsampling.time_stride  # samples per frame
        self.eval()

    def get_downsample_rates(self, key: str) -> int:
        return self.downsample_rate  # every hidden state runs at the output frame rate

    def forward(self, wavs: list[torch.Tensor], sample_rate: int | None = None
                ) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """wavs: 1-D float 16 kHz clips (s3prl passes no rate; a given sample_rate is checked)."""
        from spear_fast.audio import fbank

        clips = mono_clips("spear-fast s3prl upstream", wavs, min_samples=FBANK_MIN_SAMPLES, sample_rate=sample_rate)
        device = next(self.model.parameters()).device
        lengths = torch.tensor([clip.shape[0] for clip in clips], device=device)  # (B,)
        waves = pad_sequence([clip.to(device) for clip in clips], batch_first=True)  # (B, L)
        feats, feat_lengths = fbank(waves, lengths)  # (B, T, 128), (B,)
        out = self.model(feats, feat_lengths)
        hidden_states = [out.embedding, *out.layers]  # each (B, T', d), zero past out.lengths
        return {"hidden_states": hidden_states, "last_hidden_state": hidden_states[-1]}
