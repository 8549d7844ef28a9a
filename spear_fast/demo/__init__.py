"""The embedded demo: the offline corpus (speech and audio clips synthesised or taken from Debian
packages, with labelled probe sets; `spear prepare-demo`, build_corpus) and the end-to-end run of
`python train.py` without data flags (run.py: corpus -> data chain -> training -> report)."""
from .corpus import build_corpus
from .plan import DemoConfig

__all__ = ["DemoConfig", "build_corpus"]
