"""SPEAR pre-training entry point: `python train.py --preset {tiny,base,large,xlarge}` (torchrun-ready).

See spear_fast/train/main.py for the flags and spear_fast/train/loop.py for the loop.
"""
import sys

from spear_fast.train.main import main

if __name__ == "__main__":
    sys.exit(main())
