#!/usr/bin/env bash
# The main job: the whole pipeline on the embedded default (SmolLM2-135M-Instruct, examples/quickstart.yaml).
# Extra arguments are passed to `personatune run`, e.g. `bash scripts/main.sh --until 2`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/venv.sh"
cd "$ROOT"
exec personatune run examples/quickstart.yaml "$@"
