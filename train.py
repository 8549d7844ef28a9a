"""SPEAR pre-training entry point: `python train.py --preset {tiny,tiny-long,base,large,xlarge}` (torchrun-ready).

With --manifest/--tokens it trains on that data (spear_fast/train/main.py, the loop in
spear_fast/train/loop.py); without them it runs the embedded demo end to end (spear_fast/demo/run.py).
"""
import sys

from spear_fast.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
