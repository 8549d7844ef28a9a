"""What a measurement ran on, in words: the GPU's name, or the CPU model and its core count."""
from __future__ import annotations

import os
import platform

import torch


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_name(device: torch.device | str = "cpu") -> str:
    """e.g. "NVIDIA H100 80GB HBM3" or "CPU AMD EPYC 7B13 x2 (torch threads 2)"."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {cpu_model()} x{os.cpu_count()} (torch threads {torch.get_num_threads()})"
