#!/usr/bin/env bash
# GPU check (one short script): the shipped generate and edit workflows at 512 px, fp16, with the host's default
# flags (newer cores turn on dynamic VRAM management on NVIDIA GPUs) and with --disable-dynamic-vram where the host
# has it; prints time, peak VRAM and whether the images of both runs match. Needs an NVIDIA GPU and nvidia-smi.
#   bash scripts/gpu_check.sh [HOST=0.8.0] [--models /path/to/ComfyUI/models] [--steps 50] [--loops 2]
# Without --models, random-weight stand-ins are made (cached in .cache/models). CPU machines: add --cpu --size 64
# --steps 4 to check the script itself (no GPU figures).
set -euo pipefail
cd "$(dirname "$0")/.."
HOST=${HOST:-0.8.0} bash scripts/setup_env.sh
venv=.venv; [ "${HOST:-0.8.0}" = 0.3.75 ] || venv=.venv-${HOST:-0.8.0}
exec "$venv/bin/python" scripts/gpu_check.py "$@"
