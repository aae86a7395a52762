#!/usr/bin/env bash
# One-shot set-up on a stock machine: toolchain, then the package in editable mode, then
# `pyimgcls info`. Safe to re-run: the native build lives in build/ and recompiles only what changed,
# and pip runs only for what tools/setup_state.py finds missing or changed.
#
# Interpreter: $PYTHON, else the caller's `python` (the one the README's commands run next), else
# python3. When it refuses installs (PEP 668 "externally-managed-environment", or no pip), all goes
# into .venv instead, and the last line says how to activate it. The interpreter used is written to
# build/python for .ci/run.
# torch==2.13.0, on its own and first (kept when already installed): the CPU wheel of a local
# find-links folder (/opt/wheels, $PIP_FIND_LINKS, pip's config) when there is one; else
# $PYIMGCLS_TORCH_INDEX_URL when set; else, on a machine without a GPU, PyTorch's CPU index (never the
# GBs of CUDA wheels); else PyPI's default (CUDA) build.
# The native module (setup.py: PYIMGCLS_CUDA=auto|0|1, see there) compiles in the background while
# pip installs the rest; pip runs with --no-compile (Python writes the .pyc files on first import).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
say() { echo "setup.sh: $*"; }

# --- interpreter ---------------------------------------------------------------------------------
PY=${PYTHON:-$(command -v python || command -v python3 || true)}
[ -n "$PY" ] || { say "no python or python3 on PATH (or set PYTHON)" >&2; exit 1; }
accepts_installs() {  # a venv, or a Python with pip and without the EXTERNALLY-MANAGED marker
  "$1" -c 'import os, sys, sysconfig, pip
venv = sys.prefix != sys.base_prefix
marker = os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")
sys.exit(0 if venv or not os.path.exists(marker) else 1)' 2>/dev/null
}
venv_note=
if ! accepts_installs "$PY"; then
  if ! [ -x .venv/bin/python ]; then
    say "$PY refuses installs (PEP 668 or no pip): creating .venv"
    "$PY" -m venv .venv || { say "'$PY -m venv .venv' failed (Debian/Ubuntu: apt install python3-venv)" >&2; exit 1; }
  fi
  venv_note="installed into .venv ($PY refuses installs): run 'source .venv/bin/activate' to use python and pyimgcls"
  PY=.venv/bin/python
fi
PY=$("$PY" -c 'import sys; print(sys.executable)')
mkdir -p build
echo "$PY" > build/python
pip=("$PY" -m pip install -q --no-compile)
links=()
[ -d /opt/wheels ] && links=(--find-links /opt/wheels)

# --- build requirements, then the native module in the background ---------------------------------
mapfile -t build_reqs < <(grep -E '^(pybind11|setuptools|wheel)([<>=!~ ]|$)' requirements-dev.txt)
state() { "$PY" tools/setup_state.py "$@"; }  # what a re-run may skip (no pip resolver: ~0.3 s)
state requirements requirements-dev.txt "${build_reqs[@]%%[<>=!~ ]*}" || "${pip[@]}" "${links[@]}" "${build_reqs[@]}"
say "building pyimgcls._C in the background (log: build/build.log)"
"$PY" setup.py -q build_ext --inplace > build/build.log 2>&1 &  # --inplace: a re-run that skips pip still updates pyimgcls/_C
build_pid=$!
trap 'kill $build_pid 2>/dev/null || true' EXIT

# --- torch, on its own: never let pip resolve a plain `torch` from PyPI on a GPU-less machine --------
torch_ok() {
  "$PY" -c 'import importlib.metadata as m, sys; sys.exit(m.version("torch").split("+")[0] != "2.13.0")' 2>/dev/null
}
cpu_wheel_dir() {  # a local find-links folder holding torch 2.13.0+cpu for this Python
  local tag d
  tag=$("$PY" -c 'import sys; print("cp%d%d" % sys.version_info[:2])')
  for d in /opt/wheels ${PIP_FIND_LINKS:-} \
           $("$PY" -m pip config list 2>/dev/null | sed -n "s/^[^.]*\.find-links='\(.*\)'$/\1/p"); do
    d=${d#file://}
    if compgen -G "$d/torch-2.13.0+cpu-$tag-*.whl" > /dev/null; then echo "$d"; return 0; fi
  done
  return 1
}
if ! torch_ok; then
  if dir=$(cpu_wheel_dir); then
    say "torch 2.13.0+cpu from $dir"
    "${pip[@]}" --find-links "$dir" torch==2.13.0+cpu
  elif [ -n "${PYIMGCLS_TORCH_INDEX_URL:-}" ]; then
    say "torch 2.13.0 from $PYIMGCLS_TORCH_INDEX_URL"
    "${pip[@]}" --index-url "$PYIMGCLS_TORCH_INDEX_URL" torch==2.13.0
  elif nvidia-smi -L > /dev/null 2>&1 || compgen -G '/dev/nvidia[0-9]*' > /dev/null; then
    say "torch 2.13.0 from PyPI (GPU machine: its CUDA build)"
    "${pip[@]}" torch==2.13.0
  else
    say "torch 2.13.0 from PyTorch's CPU index (no GPU here)"
    "${pip[@]}" --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
  fi
fi
state requirements requirements-dev.txt || "${pip[@]}" "${links[@]}" -r requirements-dev.txt

# --- the package, editable: the build above left nothing to compile ------------------------------
if ! wait $build_pid; then
  tail -n 40 build/build.log >&2
  say "building pyimgcls._C failed (full log: build/build.log)" >&2
  exit 1
fi
trap - EXIT
grep '^pyimgcls build' build/build.log || true
if ! state editable build/editable.stamp; then
  "${pip[@]}" --no-build-isolation --no-deps -e .
  state stamp build/editable.stamp
fi
if command -v pyenv > /dev/null && [[ $PY == "$(pyenv root)"/* ]]; then pyenv rehash 2>/dev/null || true; fi
"$PY" -m pyimgcls info
say "done in $((SECONDS - start)) s"
if [ -n "$venv_note" ]; then
  say "$venv_note"
else
  scripts=$("$PY" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
  command -v pyimgcls > /dev/null || say "pyimgcls was installed into $scripts, which is not on PATH"
fi
