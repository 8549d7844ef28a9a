"""Comparing our MVQ tokens with the reference's (multi_quantization 0.1.1) on the same weights.

Both encoders run the same search in float32, but compute the squared errors differently (we use
GEMMs and Gram look-ups, the reference explicit difference vectors). Where two candidates' float64
errors differ by ~1e-7 relative, float32 rounding decides which one wins, and either answer is
right. A test on a few hundred indexes would fail on one such near-tie, so a differing frame counts
as agreeing when its float64 error is within NEAR_TIE of the reference's. A frame where our error
is clearly worse is a real disagreement, and real disagreements are held to the acceptance bound."""
import torch

# Float32 sums of ~1e3 terms carry ~1e-7 relative rounding; 1e-5 leaves room without hiding
# a wrong choice (those cost percents, not parts per million).
NEAR_TIE = 1e-5
# The acceptance bound on per-(frame, codebook) index agreement.
MIN_AGREEMENT = 0.995


def assert_tokens_agree(x: torch.Tensor, ref, tokens: torch.Tensor, expected: torch.Tensor) -> None:
    """x (B, D) frames; ref a reference Quantizer; tokens, expected (B, N) ours and the reference's."""
    tokens, expected = tokens.long(), expected.long()
    with torch.no_grad():
        x64 = x.double()
        err_ours = (ref.decode(tokens).double() - x64).square().sum(-1)  # (B,)
        err_ref = (ref.decode(expected).double() - x64).square().sum(-1)  # (B,)
    differs = tokens != expected  # (B, N)
    clearly_worse = err_ours > err_ref * (1 + NEAR_TIE)  # (B,)
    real = differs & clearly_worse[:, None]  # (B, N)
    agreement = 1.0 - real.double().mean().item()
    raw = 1.0 - differs.double().mean().item()
    assert agreement >= MIN_AGREEMENT, (
        f"index agreement {agreement:.4f} beyond float32 near-ties (raw {raw:.4f}); "
        f"frames clearly worse than the reference: {clearly_worse.nonzero().flatten().tolist()[:10]}"
    )
    total_ours, total_ref = err_ours.sum().item(), err_ref.sum().item()
    assert total_ours <= total_ref * (1 + 1e-3), f"squared error ours {total_ours:.6g} vs reference {total_ref:.6g}"
