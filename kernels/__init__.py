"""spear-fast kernels: drop-in Triton ops with pure-PyTorch twins.

Importable on its own (depends on torch, and on triton only when it is installed):

    from kernels import linear_multi_target_ce, mvq_search, token_mix

CUDA tensors run the Triton kernels; CPU tensors run the torch twins (the CPU implementation and
the test oracle). Nothing here imports spear_fast.
"""
from kernels._backend import HAS_TRITON

__all__ = ["HAS_TRITON"]
