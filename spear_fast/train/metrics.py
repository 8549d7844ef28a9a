"""Training metrics: analytic FLOPs and MFU, the JSON-lines log and optional TensorBoard (the loss plot
is drawn by spear_fast.plot).

FLOPs of one training step (forward + backward = 3x the forward's multiply-adds x 2):
    linear layers   6 * (encoder + head matmul params) * frames        (frames at the student rate)
    attention       12 * num_layers * d * sum_b T_b^2                   (QK^T and AV, fwd + bwd)
    conv front end  6 * sum_conv C_in * C_out * 9 * (output positions)  (per clip, from its length)
MFU = FLOPs / step time / peak dense bf16 FLOP/s of the card (PEAK_BF16_FLOPS, by device name).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from spear_fast.lengths import Lengths, host_lengths
from spear_fast.model.config import FBANK_DIM, StudentConfig

# Dense bf16/fp16 tensor-core peak (no sparsity), FLOP/s, from the vendors' datasheets.
PEAK_BF16_FLOPS: dict[str, float] = {
    "H200": 989e12,
    "H100 SXM": 989e12,
    "H100 80GB HBM3": 989e12,
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H100": 989e12,
    "A100": 312e12,
}


def peak_flops(device: torch.device) -> float | None:
    """The card's dense bf16 peak, or None (CPU, unknown card)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_FLOPS.items():  # most specific names first
        if key in name:
            return value
    return None


def step_flops(config: StudentConfig, feat_lengths: Lengths, head_outputs: int) -> float:
    """Analytic training FLOPs of one pass over clips with fbank lengths `feat_lengths` (module docstring).
    head_outputs: total logits per student frame over all heads (sum of g N K)."""
    enc, sub = config.encoder, config.subsampling
    lengths = host_lengths(feat_lengths)
    d, layers = enc.dim, enc.num_layers
    ffn_mats = 3 if enc.ffn_activation == "swiglu" else 2
    per_layer = 4 * d * d + ffn_mats * d * enc.ffn_dim  # qkv (3 d^2) + out (d^2) + FFN
    conv_ch = [(1, sub.channels // 8), (sub.channels // 8, sub.channels), (sub.channels, sub.channels)]
    total = 0.0
    for n in lengths:
        t1 = n  # conv1 output frames (100 Hz), 128 bins
        t2 = (t1 + 1) // 2  # conv2: 64 bins
        t3 = (t2 + 1) // 2 if sub.time_stride == 4 else t2  # conv3: 32 bins
        positions = [t1 * FBANK_DIM, t2 * FBANK_DIM // 2, t3 * FBANK_DIM // 4]
        conv = sum(cin * cout * 9 * pos for (cin, cout), pos in zip(conv_ch, positions))
        frames = t3
        matmul = (layers * per_layer + sub.channels * (FBANK_DIM // 4) * d + head_outputs * d) * frames
        total += 6.0 * (conv + matmul) + 12.0 * layers * d * frames * frames
    return total


class RunLog:
    """log.jsonl (+ TensorBoard when importable) of one run; rank 0 only."""

    def __init__(self, run_dir: Path, *, tensorboard: bool, resume_step: int | None):
        self.path = Path(run_dir) / "log.jsonl"
        if resume_step is not None and self.path.exists():
            # drop records past the checkpoint we resume from (written after it, before a crash)
            keep = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            tmp = self.path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(line + "\n" for line in keep))
            os.replace(tmp, self.path)
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        self.stream = open(self.path, "a")  # noqa: SIM115 (open for the whole run; closed by close())
        self.writer = None
        self.tensorboard_note = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))
            except (ImportError, ModuleNotFoundError) as error:
                self.tensorboard_note = f"TensorBoard logging off ({error}); pip install tensorboard to enable"

    def write(self, record: dict[str, Any]) -> None:
        self.stream.write(json.dumps(record) + "\n")
        self.stream.flush()
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(key, value, record["step"])

    def close(self) -> None:
        self.stream.close()
        if self.writer is not None:
            self.writer.close()
