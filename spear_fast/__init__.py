"""spear-fast: SPEAR pre-training (one encoder for speech and general audio, distilled from two
frozen teachers' MVQ tokens by masked prediction)."""

__version__ = "0.1.0"
