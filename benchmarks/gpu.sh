#!/usr/bin/env bash
# The layer, training and streaming benchmarks on a CUDA device, one call, under 5 minutes,
# then the reset path's tests on the device. Run from anywhere:
#     bash benchmarks/gpu.sh            # writes the gpu section of BENCHMARKS.md
#     bash benchmarks/gpu.sh --quick    # a smoke run
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3
"$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA device")'
timeout 280 env PYTHONPATH="$PWD/src:$PWD/benchmarks" "$PYTHON" benchmarks/gpu.py "$@"
timeout 120 env PYTHONPATH="$PWD/src" "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_layers_cuda.py
