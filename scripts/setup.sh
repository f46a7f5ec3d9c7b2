#!/usr/bin/env bash
# Set up a fresh machine for gunitune: a virtualenv with the package and its dev
# tools, and the PostgreSQL server binaries and PgBouncer the tests and the demo
# start on loopback (their Debian services are not used).
# Idempotent: re-running only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

have_postgres() {
    compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null
}

if ! have_postgres; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: PostgreSQL server binaries are missing: run 'sudo apt-get install -y postgresql'" >&2
        exit 1
    fi
    echo "setup: installing PostgreSQL server binaries (apt-get install -y postgresql)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq postgresql >/dev/null
fi

if ! command -v pgbouncer >/dev/null && [ ! -x /usr/sbin/pgbouncer ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: pgbouncer is missing: run 'sudo apt-get install -y pgbouncer'" >&2
        exit 1
    fi
    echo "setup: installing PgBouncer (apt-get install -y pgbouncer)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq pgbouncer >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e ".[dev]"
echo "setup: ready ($("$VENV/bin/python" -c 'import gunitune; print("gunitune", gunitune.__version__)'))"
