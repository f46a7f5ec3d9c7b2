#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run every check: ruff, mypy --strict, the unit tests
# and the integration tests against a real PostgreSQL and real Gunicorn processes,
# then the integration tests again with the apps on psycopg 3 (PG_DRIVER=psycopg).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV=${VENV:-.venv}
echo "== ruff"; "$VENV/bin/ruff" check .
echo "== mypy --strict gunitune"; "$VENV/bin/mypy"
echo "== pytest (apps on psycopg2)"; "$VENV/bin/python" -m pytest "$@"
echo "== pytest integration (apps on psycopg 3)"
PG_DRIVER=psycopg "$VENV/bin/python" -m pytest tests/integration "$@"
