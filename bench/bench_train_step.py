"""One full pre-training step (fbank -> masks -> student -> heads -> loss -> backward -> AdamW), in
seconds of audio per second, and its peak memory.

Contenders (`benchlib.train_step`), same weights and batch, in the same run:
  spear   the trainer's path: fused loss, bf16 autocast + torch.compile'd blocks + flash/xformers when
          available on CUDA; fp32 eager on CPU
  plain   the same student in plain eager PyTorch with SDPA attention and the unfused loss
Batch: CPU: tiny, 2 clips x 4 s (keeps the CPU run under a minute); GPU: tiny and base, 16 clips x 10 s
(160 s of audio).
"""
from __future__ import annotations

import pytest
from benchlib.train_step import make_step


@pytest.mark.parametrize("preset_name", ["tiny", "base"])
@pytest.mark.parametrize("contender", ["spear", "plain"])
def test_train_step(benchmark, device, peak_memory, machine, contender, preset_name):
    if preset_name == "base" and device.type != "cuda":
        pytest.skip("base is benchmarked on CUDA only (a CPU step takes minutes; CPU runs tiny)")
    setup = make_step(contender, preset_name, device)
    step, audio_seconds = setup.step, setup.audio_seconds
    step()  # warm-up (compilation on CUDA)
    if device.type == "cuda":
        step()
    memory = peak_memory(step)
    benchmark.group = f"train_step {preset_name}"
    benchmark.extra_info.update({"peak_memory_bytes": memory, "machine": machine, "preset": preset_name,
                                 "audio_seconds_per_step": audio_seconds})
    benchmark.pedantic(step, rounds=5 if device.type == "cuda" else 2, iterations=1)
    benchmark.extra_info["audio_seconds_per_second"] = audio_seconds / benchmark.stats.stats.mean
