"""Part 4: the training step, and a short real training run.

Step: the trainer's path (bf16 autocast, torch.compile'd blocks, the "auto" attention backend:
flash-attn when installed, else xformers, else SDPA; the fused loss) against plain eager (SDPA, the
unfused loss), same weights and batch (benchlib.train_step), for each preset: audio seconds per
second, MFU and peak memory.

MFU = model FLOPs of the step / step time / the card's dense bf16 peak. The FLOPs are
spear_fast.train.metrics.step_flops: 6 x (encoder + head matmul parameters) x frames, plus
12 x layers x d x sum_b T_b^2 for attention, plus 6 x the conv front end's multiply-adds (forward +
backward = 3 x the forward's 2 x multiply-adds); the same count for both contenders. Peaks
(spear_fast.train.metrics.PEAK_BF16_FLOPS, dense, no sparsity, vendors' datasheets): H100 SXM and
H200 989 TFLOP/s, H100 NVL 835, H100 PCIe 756, A100 312. Other cards (and CPUs): MFU omitted.

Run: `Trainer` (spear_fast.train.loop, ScaledAdam, the preset's schedule and data loader) on a
synthetic corpus with learnable tokens (spear_fast.train.synthetic; 16 and 8 codebooks), for
`run_steps` steps. Passes when the loss falls (mean of the last tenth of the steps below the first
tenth's) and torch.compile compiles nothing after the first `run_warmup_steps` steps.
"""
from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import torch
from benchlib.train_step import make_step
from gpucheck.budget import PartTimeout
from gpucheck.context import Case, Context, Part, measure
from gpucheck.report import Row, format_bytes, format_seconds

from spear_fast.config import apply_overrides, check
from spear_fast.data.manifest import read_manifest
from spear_fast.train.config import train_config
from spear_fast.train.data import open_token_stores, validate_corpus
from spear_fast.train.loop import Trainer
from spear_fast.plot import read_log
from spear_fast.train.metrics import peak_flops, step_flops
from spear_fast.train.synthetic import write_synthetic_corpus

COLUMNS = ["workload", "contender", "time", "audio s/s", "MFU", "peak memory", "check"]
CONTENDERS = {"spear": "trainer's path (compile, fused loss; bf16 on CUDA)",
              "plain": "plain eager (SDPA, unfused loss)"}


def frames_compiled() -> int | None:
    """Frames torch.compile has compiled in this process so far (recompilations included), or None
    where this torch does not count them (torch._dynamo.utils.counters is not a public API)."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return None
    return int(counters["frames"]["ok"])


def mfu_or_reason(ctx: Context, flops: float, seconds: float) -> tuple[float | None, str | None]:
    peak = peak_flops(ctx.device)
    if peak is None:
        where = torch.cuda.get_device_name(ctx.device) if ctx.on_gpu else "a CPU"
        return None, f"MFU omitted: no dense bf16 peak known for {where} (spear_fast.train.metrics.PEAK_BF16_FLOPS)"
    return flops / seconds / peak, None


def step_case(ctx: Context, preset: str, contender: str) -> Case:
    profile = ctx.profile

    def run(ctx: Context) -> Row:
        torch._dynamo.reset()  # each compiled step starts from an empty cache, as a training process does
        setup = make_step(contender, preset, ctx.device, clips=profile.step_clips, seconds=profile.step_seconds,
                          compile_blocks=True, compile_backend=profile.compile_backend,
                          overrides=profile.step_overrides)
        last = {}
        metrics = measure(ctx, lambda: last.update(loss=setup.step().detach()))
        flops = step_flops(setup.config, setup.feat_lengths, setup.head_outputs)
        mfu, why_not = mfu_or_reason(ctx, flops, metrics["median_s"])
        finite = bool(torch.isfinite(last["loss"]))
        metrics.update(preset=preset, audio_seconds=setup.audio_seconds, flops=flops, mfu=mfu,
                       audio_per_second=setup.audio_seconds / metrics["median_s"], attention=setup.attention,
                       compile_backend=setup.compile_backend, loss=float(last["loss"]), clips=profile.step_clips,
                       step_overrides=list(profile.step_overrides))
        check = f"attention {setup.attention}; " + ("loss finite" if finite else "loss not finite")
        if contender == "plain":
            spear = ctx.report.rows().get(f"step-{preset}-spear")
            if spear is not None and spear.status == "ok":
                speedup = metrics["median_s"] / spear.metrics["median_s"]
                metrics["spear_speedup"] = speedup
                check += f"; trainer's step {speedup:.2f}x this speed"
        return Row("", "ok" if finite else "FAIL",
                   cells={"time": format_seconds(metrics["median_s"]), "audio s/s": f"{metrics['audio_per_second']:,.0f}",
                          "MFU": f"{mfu * 100:.1f} %" if mfu is not None else "n/a",
                          "peak memory": format_bytes(metrics["peak_bytes"]), "check": check},
                   metrics=metrics, reason=why_not)

    shrunk = " (student shrunk: see the JSON's step_overrides)" if profile.step_overrides else ""
    label = f"{preset} step{shrunk}, {profile.step_clips} x {profile.step_seconds:g} s clips"
    return Case(f"step-{preset}-{contender}", {"workload": label, "contender": CONTENDERS[contender]}, run)


def excused_compiles(compiles: list[int | None], batch_clips: list[int], warmup: int) -> int:
    """Compilations after warm-up that the first batch of a single clip brings. torch.compile's dynamic
    shapes specialise a size of 1 apart from larger ones, so a bucket's one-clip tail batch compiles each
    block once more, at whatever step it first comes; that happens once per run, not a recompile storm."""
    counts = [0 if c is None else c for c in compiles]
    for step, clips in enumerate(batch_clips):
        if clips == 1:
            return counts[step] - counts[step - 1] if step >= warmup and step > 0 else 0
    return 0


def summarise(records: list[dict], compiles: list[int | None], steps: int, warmup: int,
              batch_clips: list[int] | None = None) -> Row:
    """The run's row from its log records, the compile count after each step and the clips in each
    step's batch."""
    losses = [r["loss"] for r in records]
    tenth = max(1, len(losses) // 10)
    first = statistics.fmean(losses[:tenth]) if losses else float("nan")
    last = statistics.fmean(losses[-tenth:]) if losses else float("nan")
    falls = len(losses) >= 2 * tenth and last < first
    counted = len(compiles) > warmup and compiles[-1] is not None and compiles[warmup - 1] is not None
    excused = excused_compiles(compiles, batch_clips or [], warmup) if counted else 0
    after = compiles[-1] - compiles[warmup - 1] - excused if counted else None
    settled = records[warmup:] or records
    audio = statistics.median(r["audio_per_second"] for r in settled) if settled else None
    mfus = [r["mfu"] for r in settled if r.get("mfu") is not None]
    mfu = statistics.median(mfus) if mfus else None
    ok = len(records) == steps and falls and after == 0
    metrics = {"steps": len(records), "steps_planned": steps, "loss_first_tenth": first, "loss_last_tenth": last,
               "loss_falls": falls, "compiles_after_step": compiles, "warmup_steps": warmup,
               "compiles_after_warmup": after,
               "compiles_for_a_one_clip_batch": excused, "audio_per_second_median": audio, "mfu_median": mfu,
               "step_time_median_s": statistics.median(r["step_time"] for r in settled) if settled else None}
    why = []
    if len(records) != steps:
        why.append(f"{len(records)} of {steps} steps")
    if not falls:
        why.append("the loss did not fall")
    if after is None:
        why.append("compilations not counted (too few steps, or this torch does not count them)")
    elif after:
        why.append(f"{after} compilation(s) after step {warmup}")
    check = (f"loss {first:.3f} -> {last:.3f}; {after if after is not None else '?'} compilations after step {warmup}"
             + (f" (+{excused} for the first one-clip batch)" if excused else ""))
    return Row("", "pass" if ok else "FAIL",
               cells={"time": format_seconds(metrics["step_time_median_s"]),
                      "audio s/s": f"{audio:,.0f}" if audio is not None else "n/a",
                      "MFU": f"{mfu * 100:.1f} %" if mfu is not None else "n/a", "peak memory": "-", "check": check},
               metrics=metrics, reason="; ".join(why) or None)


def run_case(ctx: Context) -> Case:
    profile = ctx.profile

    def run(ctx: Context) -> Row:
        torch._dynamo.reset()
        clips, shortest, longest = profile.run_corpus
        with tempfile.TemporaryDirectory(prefix="spear-gpu-check-") as tmp:
            corpus = write_synthetic_corpus(Path(tmp) / "corpus", num_clips=clips, min_seconds=shortest,
                                            max_seconds=longest, seed=ctx.seed, speech_codebooks=16, audio_codebooks=8)
            config = apply_overrides(train_config(profile.run_preset), list(profile.run_overrides))
            stores = open_token_stores(corpus.token_dirs, config)
            entries, skipped = validate_corpus(read_manifest(corpus.manifest), stores, config)
            check(config)
            run_dir = Path(tmp) / "run"
            trainer = Trainer(config, entries, stores, run_dir, max_steps=profile.run_steps, skipped=skipped)
            compiles: list[int | None] = []
            batch_clips: list[int] = []
            train_step = trainer.train_step

            def counted_step(micro_batches):
                record = train_step(micro_batches)
                compiles.append(frames_compiled())
                batch_clips.append(min(len(b.ids) for b in micro_batches))
                return record

            trainer.train_step = counted_step
            try:
                trainer.fit()
            except PartTimeout as timeout:
                timeout.row = summarise(read_log(run_dir / "log.jsonl"), compiles, profile.run_steps,
                                        profile.run_warmup_steps, batch_clips)
                raise
            return summarise(read_log(run_dir / "log.jsonl"), compiles, profile.run_steps, profile.run_warmup_steps,
                             batch_clips)

    label = f"{profile.run_preset}, {profile.run_steps} steps, synthetic corpus"
    return Case(f"run-{profile.run_preset}-{profile.run_steps}", {"workload": label, "contender": "Trainer.fit"}, run)


def cases(ctx: Context) -> list[Case]:
    steps = [step_case(ctx, preset, contender) for preset in ctx.profile.step_presets for contender in CONTENDERS]
    return steps + [run_case(ctx)]


PART = Part(4, "Training step against plain eager, and a short training run", COLUMNS, cases)
