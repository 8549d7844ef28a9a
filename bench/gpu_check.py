"""One command that measures every GPU claim in minutes, the peers in the same run:

    python bench/gpu_check.py                 # on a CUDA machine: <= 8 minutes on one H100/H200
    python bench/gpu_check.py --dry-run       # on a CPU: tiny sizes and the torch twins (what CI runs)

It writes bench/results/<gpu>-<date>.json (every number, with the machine, versions, seed and
command) and the same as markdown tables beside it (<gpu>-<date>.md, ready for the README), and
prints the tables at the end. In order, so that a time-out still leaves the most important numbers:

  1. correctness: each op's kernel path (Triton on CUDA) against its torch twin and a float64 oracle,
     fp32 and bf16, at the measured sizes and at edge sizes (gpucheck/part1_correctness.py);
  2. the ops against plain PyTorch, torch.compile, Liger-Kernel and Cut Cross-Entropy: time and
     peak memory (gpucheck/part2_kernels.py);
  3. MVQ encode against multi-quantization 0.1.1 on the same device, and against a WavLM-Large-shaped
     teacher's forward pass (gpucheck/part3_mvq.py);
  4. the training step (bf16 + compile + flash attention + the fused loss) against plain eager for
     large and base: audio seconds per second, MFU, peak memory; and a 200-step base run whose loss
     must fall with no recompilation after warm-up (gpucheck/part4_training.py; the MFU formula and
     the peak FLOP/s per card are in its docstring).
Then the targets (gpucheck/targets.py). Each part has a share of the time budget (--budget, plus
what earlier parts left unused); a part that runs out records the case it was in and the cases it
did not reach as skipped, and the next part starts. A peer that is not installed is skipped with a
message saying what to install (all are in the `gpu` extra). The results files are rewritten after
every case, so a run that is killed still leaves every number measured before.

Exit status: 0 when every case passed, was measured or was skipped; 1 when a check failed or a case
raised; 2 on bad arguments (or no CUDA device without --dry-run).
"""
from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
# benchlib and gpucheck live beside this file; kernels and spear_fast in the checkout above it (so a
# checkout runs without being installed)
for folder in (BENCH.parent, BENCH):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

import torch  # noqa: E402
from gpucheck import part1_correctness, part2_kernels, part3_mvq, part4_training, peers  # noqa: E402
from gpucheck.budget import split_budget  # noqa: E402
from gpucheck.context import Context, run_part, say  # noqa: E402
from gpucheck.profile import DRY_RUN, GPU  # noqa: E402
from gpucheck.report import Report, free_stem, slug  # noqa: E402
from gpucheck.targets import evaluate  # noqa: E402

from spear_fast.machine import machine_name  # noqa: E402
from spear_fast.model.attention import flash_available, xformers_available  # noqa: E402

PARTS = {part.PART.number: part.PART for part in (part1_correctness, part2_kernels, part3_mvq, part4_training)}


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench/gpu_check.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(BENCH / "results"),
                        help="folder for <machine>-<date>.json and .md (default bench/results)")
    parser.add_argument("--dry-run", action="store_true",
                        help="tiny sizes on the CPU with the torch twins: checks the script, measures nothing real")
    parser.add_argument("--budget", type=float, default=None,
                        help=f"seconds for all parts (default {GPU.total_s:.0f}; dry run {DRY_RUN.total_s:.0f})")
    parser.add_argument("--parts", default="1,2,3,4", help="which parts to run, e.g. 1,3 (default all, in order)")
    parser.add_argument("--seed", type=int, default=None, help="seed of every random input (default: a fresh one)")
    return parser


def parse_parts(text: str) -> list[int]:
    try:
        numbers = sorted({int(item) for item in text.split(",") if item.strip()})
    except ValueError:
        raise ValueError(f"--parts {text!r}: expected part numbers separated by commas, e.g. 1,3") from None
    unknown = [n for n in numbers if n not in PARTS]
    if unknown or not numbers:
        raise ValueError(f"--parts {text!r}: parts are {sorted(PARTS)}")
    return numbers


def versions() -> dict[str, str]:
    def installed(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda": str(torch.version.cuda),
           "triton": installed("triton"), "flash-attn": installed("flash-attn") if flash_available() else "not installed",
           "xformers": installed("xformers") if xformers_available() else "not installed"}
    out.update(peers.versions())
    return out


def git_commit() -> str | None:
    try:
        result = subprocess.run(["git", "-C", str(BENCH), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def device_properties(device: torch.device) -> dict[str, object]:
    if device.type != "cuda":
        return {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    props = torch.cuda.get_device_properties(device)
    return {"name": props.name, "capability": f"{props.major}.{props.minor}", "multiprocessors": props.multi_processor_count,
            "memory_gib": round(props.total_memory / 2**30, 1), "driver_cuda": str(torch.version.cuda)}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_arg_parser().parse_args(argv)
    try:
        parts = parse_parts(args.parts)
        if args.budget is not None and args.budget <= 0:
            raise ValueError(f"--budget must be a positive number of seconds, got {args.budget}")
        if not args.dry_run and not torch.cuda.is_available():
            raise ValueError("no CUDA device: run this on a GPU machine, or add --dry-run to check the script on a CPU")
    except ValueError as error:
        print(f"gpu_check.py: error: {error}", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.dry_run else "cuda")
    profile = DRY_RUN if args.dry_run else GPU
    seed = args.seed if args.seed is not None else torch.seed() % 2**31
    budget = split_budget(args.budget or profile.total_s, {n: profile.shares[n] for n in parts})
    machine = machine_name(device)
    today = datetime.date.today().isoformat()
    out_dir = Path(args.out)
    stem = free_stem(out_dir, ("dry-run-" if args.dry_run else "") + f"{slug(machine)}-{today}")
    header = {
        "command": " ".join(["python bench/gpu_check.py", *argv]), "date": today,
        "started": datetime.datetime.now().isoformat(timespec="seconds"), "machine": machine,
        "device": device_properties(device), "dry_run": args.dry_run, "profile": profile.name, "seed": seed,
        "commit": git_commit(), "versions": versions(), "budget_s": {str(n): round(s, 1) for n, s in budget.items()},
    }
    report = Report(out_dir, stem, header)
    ctx = Context(device=device, dry_run=args.dry_run, profile=profile, seed=seed, report=report)
    say(f"gpu check on {machine} (seed {seed}); results in {report.json_path} and {report.md_path}")
    carry = 0.0
    for number in parts:
        allowed = budget[number] + carry
        elapsed = run_part(ctx, PARTS[number], allowed)
        carry = max(0.0, allowed - elapsed)
    report.set_targets(evaluate(report.rows(), profile.step_presets[0]))
    print()
    print(report.markdown())
    say(f"results: {report.json_path} and {report.md_path}")
    failed = [row.case for row in report.rows().values() if row.status in ("FAIL", "error")]
    if failed:
        say(f"{len(failed)} case(s) failed or raised: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
