"""The optional packages the check measures against: each is imported when the case needs it, and a
package that is missing (or fails to import) skips its cases with a message saying what to install.

    liger-kernel         LinkedIn's Liger-Kernel: fused linear cross-entropy (one codebook per call)
    cut-cross-entropy    Apple's Cut Cross-Entropy: linear cross-entropy without the logits
    multi-quantization   the MVQ reference encoder (0.1.1), the one SPEAR's recipe used
    transformers         WavLM, for the teacher-shaped forward
All are in the project's `gpu` extra (transformers in `teachers`); none of them pins torch, so
they install beside the CUDA torch already on the machine.
"""
from __future__ import annotations

import importlib
import importlib.metadata
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PeerSpec:
    distribution: str  # the name pip knows
    module: str  # what to import
    attribute: str  # the entry point used, inside `module`
    requirement: str  # what to pip install


LIGER = PeerSpec("liger-kernel", "liger_kernel.transformers.functional", "liger_fused_linear_cross_entropy",
                 "liger-kernel")
CCE = PeerSpec("cut-cross-entropy", "cut_cross_entropy", "linear_cross_entropy", "cut-cross-entropy")
MULTI_QUANTIZATION = PeerSpec("multi-quantization", "multi_quantization.quantization", "Quantizer",
                              "multi-quantization==0.1.1")
TRANSFORMERS = PeerSpec("transformers", "transformers", "WavLMModel", "transformers>=5")
PEERS = (LIGER, CCE, MULTI_QUANTIZATION, TRANSFORMERS)


class PeerMissing(Exception):
    """A peer package cannot be used here; the message says why and what to install."""


def version_of(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def load(spec: PeerSpec) -> Any:
    """The peer's entry point (`spec.attribute` of `spec.module`), or PeerMissing with the reason."""
    try:
        module = importlib.import_module(spec.module)
    except Exception as error:  # an installed package can also fail to import (a torch mismatch)
        installed = version_of(spec.distribution)
        what = f"{spec.distribution} {installed} fails to import" if installed else f"{spec.distribution} is not installed"
        raise PeerMissing(f"{what} ({type(error).__name__}: {error}); pip install '{spec.requirement}'") from None
    if not hasattr(module, spec.attribute):
        raise PeerMissing(f"{spec.distribution} {version_of(spec.distribution)} has no {spec.module}.{spec.attribute}; "
                          f"pip install '{spec.requirement}'")
    return getattr(module, spec.attribute)


def versions() -> dict[str, str]:
    """Installed versions of the peers (absent ones as "not installed")."""
    return {spec.distribution: version_of(spec.distribution) or "not installed" for spec in PEERS}
