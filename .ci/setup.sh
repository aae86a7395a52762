#!/usr/bin/env bash
# One-shot set-up on a fresh GPU-less machine: toolchain, then the package in editable mode.
# nvcc (when present) compiles every csrc/cuda/*.cu for sm_80 and sm_90a during the build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
find_links=()
[ -d /opt/wheels ] && find_links=(--find-links /opt/wheels)
# torch first, pinned, on its own: never let pip resolve a plain `torch` (GBs of CUDA wheels).
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') else 1)" 2>/dev/null; then
  "$PY" -m pip install -q "${find_links[@]}" torch==2.13.0
fi
"$PY" -m pip install -q "${find_links[@]}" -r requirements-dev.txt
"$PY" -m pip install -q --no-build-isolation --no-deps -e .
"$PY" -m pyimgcls info
