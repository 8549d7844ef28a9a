"""The offline demo corpus: speech and audio clips synthesised or taken from Debian packages, with
labelled probe sets. Entry point: `spear prepare-demo` (build_corpus)."""
from .corpus import build_corpus
from .plan import DemoConfig

__all__ = ["DemoConfig", "build_corpus"]
