#!/usr/bin/env bash
# Set up (scripts/setup.sh), then run the demo: 1500 concurrent slow requests
# (pg_sleep 0.5 s, pool 4 + 6) while a health check and a fast query probe 4 times
# a second, against the hand-tuned fix and gunitune side by side (about a minute
# on 2 cores), and print the report (also written to results/<time>/, with a picture).
#
# Any flags replace the preset, e.g. the seed's storms at full size (long):
#   bash scripts/demo.sh --scenario io,cpu --io-seconds 5 --cpu-loop 100000000
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV=${VENV:-.venv}
if [ "$#" -eq 0 ]; then
    set -- --demo
fi
exec "$VENV/bin/python" -m benchmarks.storm "$@"
