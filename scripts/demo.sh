#!/usr/bin/env bash
# Set up (scripts/setup.sh), then run the demo under the seed's storm of 3000
# concurrent requests against stock Gunicorn settings, the hand-tuned fix and
# gunitune, side by side, and print the report (also written to results/<time>/).
#
# Durations are scaled so the whole run takes minutes on 2 cores; the seed's full
# size is: bash scripts/demo.sh --io-seconds 5 --cpu-loop 100000000
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV=${VENV:-.venv}
if [ "$#" -eq 0 ]; then
    set -- --requests 3000 --io-seconds 1 --cpu-loop 5000000
fi
exec "$VENV/bin/python" -m benchmarks.storm "$@"
