"""Test-wide set-up. Without a CUDA device the Triton kernels run under the interpreter, which
must be switched on before triton is first imported: that happens here, before any test module."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


@pytest.fixture
def seed() -> int:
    """A fresh seed per test run (printed on failure via the test id's -p output), never a constant
    that could hide a wrong result; reproducible when SPEAR_TEST_SEED is set."""
    value = int(os.environ.get("SPEAR_TEST_SEED", torch.seed() % (2**31)))
    torch.manual_seed(value)
    return value
