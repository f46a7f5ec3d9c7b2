#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run every check: ruff, mypy --strict, the unit tests
# and the integration tests against a real PostgreSQL and real Gunicorn processes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV=${VENV:-.venv}
echo "== ruff"; "$VENV/bin/ruff" check .
echo "== mypy --strict gunitune"; "$VENV/bin/mypy"
echo "== pytest"; "$VENV/bin/python" -m pytest "$@"
