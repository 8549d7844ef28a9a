"""spear-fast kernels: drop-in Triton ops with pure-PyTorch twins.

Importable on its own (depends on torch, and on triton only when it is installed):

    from kernels import linear_multi_target_ce, mvq_search, token_mix

CUDA tensors run the Triton kernels; CPU tensors run the torch twins (`*_torch`: the CPU
implementation, same arguments and results). The tests check both against float64 oracles of their
own. Nothing here imports spear_fast.

- mvq_search: multi-codebook nearest-centre search / MVQ swap-error table (op 1)
- linear_multi_target_ce: head linear layer fused with masked multi-target cross-entropy (op 2)
- token_mix: waveform mixing at an SNR + per-(frame, codebook) target swap (op 3)
"""
from kernels._backend import HAS_TRITON
from kernels._targets import IGNORE_INDEX
from kernels.linear_multi_target_ce import linear_multi_target_ce, linear_multi_target_ce_torch
from kernels.mvq_search import MVQSearchResult, mvq_search, mvq_search_torch
from kernels.token_mix import TokenMixPlan, TokenMixResult, draw_token_mix_plan, token_mix, token_mix_torch

__all__ = [
    "HAS_TRITON",
    "IGNORE_INDEX",
    "MVQSearchResult",
    "TokenMixPlan",
    "TokenMixResult",
    "draw_token_mix_plan",
    "linear_multi_target_ce",
    "linear_multi_target_ce_torch",
    "mvq_search",
    "mvq_search_torch",
    "token_mix",
    "token_mix_torch",
]
