"""Ahead-of-time compilation of a Triton kernel for a GPU target, on a machine without a GPU.

The interpreter (TRITON_INTERPRET=1) never compiles, so it cannot see what only the GPU compiler
rejects: tl.dot shape/dtype rules, shared-memory or register overflow. `compile_for_gpu` runs the
real compiler (ptxas ships inside the triton wheel) for sm_80 / sm_90a and returns the metadata,
so a test can check every config a launcher may pick against the card's shared-memory limit.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

# Opt-in shared memory per thread block, bytes: A100 (sm_80) 163 KiB, H100 (sm_90) 227 KiB.
SHARED_MEMORY_LIMIT: dict[int, int] = {80: 166_912, 90: 232_448}


@dataclass(frozen=True)
class CompiledInfo:
    capability: int
    shared_bytes: int
    num_warps: int
    num_stages: int
    registers: int | None  # only known after loading on a device; None here


def compile_for_gpu(
    kernel: Any,
    signature: Mapping[str, str],
    constexprs: Mapping[str, Any],
    *,
    capability: int,
    num_warps: int = 4,
    num_stages: int = 3,
) -> CompiledInfo:
    """Compile `kernel` (a @triton.jit function) for CUDA compute capability `capability`.

    signature: every argument name -> Triton type string ("*fp32", "*bf16", "i32", "fp32",
    "constexpr"); constexprs: the values of the constexpr arguments. Raises whatever the
    compiler raises (e.g. on an illegal tl.dot shape); raises ValueError when the kernel needs
    more shared memory than the card has.
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from triton.runtime.jit import JITFunction

    # Unwrap @triton.autotune / @triton.heuristics / the interpreter's wrapper down to the plain
    # Python function, then re-wrap it as a compilable JITFunction (under TRITON_INTERPRET=1
    # @triton.jit gives an InterpretedFunction, which the compiler cannot take).
    python_fn = kernel
    while hasattr(python_fn, "fn"):
        python_fn = python_fn.fn
    unwrapped = JITFunction(python_fn)
    source = ASTSource(fn=unwrapped, signature=dict(signature), constexprs=dict(constexprs))
    compiled = triton.compile(
        source,
        target=GPUTarget("cuda", capability, 32),
        options={"num_warps": num_warps, "num_stages": num_stages},
    )
    shared = int(compiled.metadata.shared)
    limit = SHARED_MEMORY_LIMIT.get(capability)
    if limit is not None and shared > limit:
        raise ValueError(
            f"{unwrapped.__name__} needs {shared} bytes of shared memory on sm_{capability}, "
            f"over the card's {limit} (constexprs={dict(constexprs)}, num_warps={num_warps}, "
            f"num_stages={num_stages})"
        )
    return CompiledInfo(capability, shared, num_warps, num_stages, None)


@dataclass(frozen=True)
class CompileJob:
    """One kernel configuration to compile: `kernel` names a @triton.jit function of the module."""

    kernel: str
    signature: Mapping[str, str]
    constexprs: Mapping[str, Any]
    num_warps: int = 4
    num_stages: int = 3


# Runs in a fresh interpreter: reads (module, capability, jobs) as JSON on stdin, prints the shared
# memory of each compiled job as JSON on the last line of stdout.
_COMPILE_SCRIPT = """
import importlib, json, sys
from kernels._aot import compile_for_gpu
request = json.load(sys.stdin)
module = importlib.import_module(request["module"])
shared = [
    compile_for_gpu(getattr(module, job["kernel"]), job["signature"], job["constexprs"],
                    capability=request["capability"], num_warps=job["num_warps"],
                    num_stages=job["num_stages"]).shared_bytes
    for job in request["jobs"]
]
print(json.dumps(shared))
"""


def compile_jobs_for_gpu(
    module: str, jobs: list[CompileJob], capabilities: tuple[int, ...] = (80, 90), timeout: float = 900.0
) -> dict[int, list[int]]:
    """Compile every job of `module` for every capability; returns capability -> shared bytes per job.

    Each capability compiles in its own fresh Python process WITHOUT TRITON_INTERPRET, side by side
    (the compiler is single-threaded): under the interpreter, @triton.jit library functions (tl.sum,
    tl.zeros, tl.argmin, ...) run as interpreted code and leave triton.language patched, so the real
    compiler fails in that process after its first kernel. Raises RuntimeError with the compiler's
    message when a job does not compile (or needs more shared memory than the card has).
    """
    import dataclasses
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]  # the directory holding the `kernels` package
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    payload = [dataclasses.asdict(job) for job in jobs]
    processes = {
        capability: subprocess.Popen(
            [sys.executable, "-c", _COMPILE_SCRIPT], cwd=root, env=env, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        for capability in capabilities
    }
    results: dict[int, list[int]] = {}
    for capability, process in processes.items():
        request = json.dumps({"module": module, "capability": capability, "jobs": payload})
        out, err = process.communicate(request, timeout=timeout)
        if process.returncode != 0:
            raise RuntimeError(f"{module}: compiling for sm_{capability} failed:\n{err[-4000:]}")
        results[capability] = json.loads(out.strip().splitlines()[-1])
    return results
