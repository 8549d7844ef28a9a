"""Part 3: MVQ encode (spear_fast.mvq.Quantizer.encode) against the reference, multi-quantization
0.1.1's Quantizer.encode, on the same device, weights and frames; and against the forward pass of
a WavLM-Large-shaped teacher (random weights, bf16 autocast, cut after layer 21, as the
tokenisation pipeline runs it) on the same amount of audio.

The reference keeps (B, groups, cut, D) tensors for all its frames at once, so it is called on
chunks of `reference_chunk` frames (its time is linear in the frames). The tokens are compared
index by index, and by the squared reconstruction error of each side's choice (float64): ours may
differ on float32 near-ties only, where either choice is right.
"fraction of the teacher" = (our encode seconds per frame) / (the teacher's seconds per frame).
"""
from __future__ import annotations

import time

import torch
from benchlib.measure import measure_peak_memory, synchronize
from gpucheck import peers
from gpucheck.context import Case, Context, Part, measure
from gpucheck.report import Row, format_bytes, format_seconds

from spear_fast.mvq import Quantizer
from spear_fast.sample_rate import SAMPLE_RATE
from spear_fast.teachers.hf_ssl import HFSSLTeacher

COLUMNS = ["workload", "contender", "time", "peak memory", "frames/s", "check"]


def _setup(ctx: Context):
    """(reference quantizer or None, ours on the device, frames (B, D) on the device), shared."""

    def build():
        size = ctx.profile.encode
        torch.manual_seed(ctx.seed)
        try:
            reference = peers.load(peers.MULTI_QUANTIZATION)(size.D, size.K, size.N)
            ours = Quantizer.from_multi_quantization(reference)
        except peers.PeerMissing:
            reference, ours = None, Quantizer(size.D, size.N, size.K)
        generator = torch.Generator().manual_seed(ctx.seed)
        frames = torch.randn(size.B, size.D, generator=generator).to(ctx.device)
        return reference, ours.to(ctx.device), frames

    return ctx.shared_value("mvq", build)


def _workload(ctx: Context) -> str:
    size = ctx.profile.encode
    return f"encode B={size.B} D={size.D} N={size.N} K={size.K} R={size.refine}"


def ours_case(ctx: Context) -> Case:
    def run(ctx: Context) -> Row:
        size = ctx.profile.encode
        _, ours, frames = _setup(ctx)
        ours.encode(frames[:256], size.refine)  # the Gram matrix (cached) and the kernels' compilation
        last = {}
        metrics = measure(ctx, lambda: last.update(tokens=ours.encode(frames, size.refine)))
        ctx.shared["mvq-ours-tokens"] = last["tokens"].long()
        metrics.update(frames=size.B, frames_per_s=size.B / metrics["median_s"])
        return Row("", "ok", cells={"time": format_seconds(metrics["median_s"]),
                                    "peak memory": format_bytes(metrics["peak_bytes"]),
                                    "frames/s": f"{metrics['frames_per_s']:,.0f}", "check": "-"}, metrics=metrics)

    return Case("mvq-encode-ours", {"workload": _workload(ctx), "contender": "spear_fast Quantizer.encode"}, run)


def teacher_case(ctx: Context) -> Case:
    shape = ctx.profile.teacher

    def run(ctx: Context) -> Row:
        wavlm_model = peers.load(peers.TRANSFORMERS)
        from transformers import WavLMConfig

        config = WavLMConfig(hidden_size=shape.hidden_size, num_hidden_layers=shape.num_hidden_layers,
                             num_attention_heads=shape.num_attention_heads, intermediate_size=shape.intermediate_size,
                             conv_dim=(shape.conv_channels,) * 7, feat_extract_norm="layer",
                             do_stable_layer_norm=True, conv_bias=True)
        torch.manual_seed(ctx.seed)
        with torch.device(ctx.device):
            model = wavlm_model(config)
        teacher = HFSSLTeacher(model, name="wavlm-large-shape", layer=shape.layer, do_normalize=True,
                               device=ctx.device, autocast_dtype=torch.bfloat16)
        samples = int(shape.seconds * SAMPLE_RATE)
        generator = torch.Generator().manual_seed(ctx.seed)
        waves = (0.1 * torch.randn(shape.clips, samples, generator=generator)).to(ctx.device)
        lengths = torch.full((shape.clips,), samples)
        last = {}
        metrics = measure(ctx, lambda: last.update(out=teacher(waves, lengths)))
        frames = int(last["out"].frame_lengths.sum())
        per_frame = metrics["median_s"] / frames
        metrics.update(frames=frames, frames_per_s=frames / metrics["median_s"], audio_seconds=shape.clips * shape.seconds,
                       layer=shape.layer, hidden_size=shape.hidden_size, layers=shape.num_hidden_layers)
        check = "-"
        ours = ctx.report.rows().get("mvq-encode-ours")
        if ours is not None and ours.status == "ok":
            fraction = (ours.metrics["median_s"] / ours.metrics["frames"]) / per_frame
            metrics["encode_fraction_of_teacher"] = fraction
            check = f"our encode = {fraction * 100:.1f} % of this"
        return Row("", "ok", cells={"time": format_seconds(metrics["median_s"]),
                                    "peak memory": format_bytes(metrics["peak_bytes"]),
                                    "frames/s": f"{metrics['frames_per_s']:,.0f}", "check": check}, metrics=metrics)

    label = (f"WavLM-shaped teacher, {shape.num_hidden_layers} x {shape.hidden_size}, layer {shape.layer}, "
             f"{shape.clips} x {shape.seconds:g} s")
    return Case("mvq-teacher-forward", {"workload": label, "contender": "transformers WavLMModel, bf16 autocast"}, run)


def reference_case(ctx: Context) -> Case:
    def run(ctx: Context) -> Row:
        size = ctx.profile.encode
        reference, _, frames = _setup(ctx)
        if reference is None:
            peers.load(peers.MULTI_QUANTIZATION)  # raises PeerMissing with the reason
        reference = reference.to(ctx.device)

        def encode_all() -> torch.Tensor:
            with torch.no_grad():
                return torch.cat([reference.encode(frames[start:start + size.reference_chunk], size.refine,
                                                   as_bytes=False)
                                  for start in range(0, size.B, size.reference_chunk)])

        with torch.no_grad():
            reference.encode(frames[:256], size.refine, as_bytes=False)  # warm-up
        out = {}
        began = time.perf_counter()
        peak = measure_peak_memory(lambda: out.update(tokens=encode_all()), ctx.device)  # one call: minutes on a CPU
        synchronize(ctx.device)
        seconds = time.perf_counter() - began
        expected = out["tokens"].long()
        metrics = {"median_s": seconds, "peak_bytes": peak, "reps": 1, "frames": size.B,
                   "frames_per_s": size.B / seconds, "reference_chunk": size.reference_chunk}
        check = "ours not measured"
        ours_tokens = ctx.shared.get("mvq-ours-tokens")
        if ours_tokens is not None:
            with torch.no_grad():
                x = frames.double()
                err_ours = (reference.decode(ours_tokens).double() - x).square().sum().item()
                err_ref = (reference.decode(expected).double() - x).square().sum().item()
            agreement = (ours_tokens == expected).double().mean().item()
            ours = ctx.report.rows()["mvq-encode-ours"]
            speedup = seconds / ours.metrics["median_s"]
            metrics.update(index_agreement=agreement, squared_error_ours_over_reference=err_ours / err_ref,
                           ours_speedup=speedup)
            check = (f"ours {speedup:.1f}x faster; {agreement * 100:.3f} % same indexes; "
                     f"squared error ours / reference {err_ours / err_ref:.6f}")
        return Row("", "ok", cells={"time": format_seconds(seconds), "peak memory": format_bytes(peak),
                                    "frames/s": f"{metrics['frames_per_s']:,.0f}", "check": check}, metrics=metrics)

    return Case("mvq-encode-reference",
                {"workload": _workload(ctx), "contender": f"multi-quantization Quantizer.encode "
                                                          f"(chunks of {ctx.profile.encode.reference_chunk})"}, run)


def cases(ctx: Context) -> list[Case]:
    return [ours_case(ctx), teacher_case(ctx), reference_case(ctx)]


PART = Part(3, "MVQ encode against multi-quantization 0.1.1 and a teacher's forward pass", COLUMNS, cases)
