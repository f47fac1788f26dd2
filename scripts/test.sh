#!/usr/bin/env bash
# The test suite: unit tests (no model), stage tests (tiny in-process model), one CLI smoke run.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh tests/unit -x`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/venv.sh"
cd "$ROOT"
exec python -m pytest "$@"
