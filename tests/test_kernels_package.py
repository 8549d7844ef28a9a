"""The kernels package stands alone: no spear_fast import, and it works without triton."""
import subprocess
import sys
import textwrap

import pytest


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)


def test_kernels_does_not_import_spear_fast():
    result = run_python(
        """
        import sys
        import kernels
        leaked = sorted(name for name in sys.modules if name.split(".")[0] == "spear_fast")
        assert not leaked, leaked
        print(sorted(kernels.__all__))
        """
    )
    assert result.returncode == 0, result.stderr


def test_kernels_work_without_triton():
    # sys.modules["triton"] = None makes `import triton` raise ImportError, as on a box without it.
    result = run_python(
        """
        import sys
        sys.modules["triton"] = None
        import torch
        import kernels
        assert kernels.HAS_TRITON is False
        for name in kernels.__all__:
            getattr(kernels, name)
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")


def test_aot_compile_rejects_oversized_shared_memory(monkeypatch):
    pytest.importorskip("triton")
    import triton
    import triton.language as tl

    from kernels import _aot

    @triton.jit
    def square_tile(a_ptr, c_ptr, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        a = tl.load(a_ptr + offs[:, None] * BLOCK + offs[None, :])
        tl.store(c_ptr + offs[:, None] * BLOCK + offs[None, :], tl.dot(a, a))

    signature = {"a_ptr": "*fp16", "c_ptr": "*fp32", "BLOCK": "constexpr"}
    info = _aot.compile_for_gpu(square_tile, signature, {"BLOCK": 32}, capability=80)
    assert 0 < info.shared_bytes <= _aot.SHARED_MEMORY_LIMIT[80]  # the dot stages its operands in shared memory
    monkeypatch.setitem(_aot.SHARED_MEMORY_LIMIT, 90, info.shared_bytes - 1)
    with pytest.raises(ValueError, match="shared memory"):
        _aot.compile_for_gpu(square_tile, signature, {"BLOCK": 32}, capability=90)
