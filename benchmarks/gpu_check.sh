#!/usr/bin/env bash
# GPU check (see benchmarks/gpu_check.py): on a CUDA machine with torch, transformers (5.17+) and accelerate,
# from the repository root, nothing downloaded. `--dry-run` checks the script on the CPU with the tiny model.
#   benchmarks/gpu_check.sh [--dry-run] [--lengths 8k,32k,128k,256k] [--methods symphony,sinks,full]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
# run as a module from the root, so the tree's `symphony` package is imported without installing it
exec "$PY" -m benchmarks.gpu_check "$@"
