#!/usr/bin/env bash
# The embedded default, from a fresh machine: set up, then `python train.py --preset tiny`, which
# builds the demo corpus and both demo teachers' tokens (first run only) and pre-trains the tiny
# student on 2 CPU cores. Extra arguments go to train.py (e.g. --max-steps 200).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh demo
python train.py --preset tiny "$@"
