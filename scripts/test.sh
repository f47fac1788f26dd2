#!/usr/bin/env bash
# The test suite, every tier: unit tests (no model), stage tests (tiny in-process model), one CLI smoke run
# (tests/conftest.py says which test is in which tier; a plain `pytest` runs the unit tier only).
# First the formatter and the linter (ruff, settings in pyproject.toml): a file they would change fails the run.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh tests/unit -x`, or `-m unit` for one tier.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/venv.sh"
cd "$ROOT"
LINTED=(src tests benchmarks scripts)
ruff format --check --output-format concise "${LINTED[@]}" || { echo "test.sh: fix the formatting with: ruff format ${LINTED[*]}" >&2; exit 1; }
ruff check --output-format concise "${LINTED[@]}" || { echo "test.sh: lint errors above (ruff check --fix fixes those marked [*])" >&2; exit 1; }
exec python -m pytest -m "unit or stage or smoke" "$@"
