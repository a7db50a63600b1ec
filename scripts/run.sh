#!/usr/bin/env bash
# Sets up everything on a fresh machine and runs the service with config.yaml's defaults.
# Extra arguments go to `feedsvc serve`, e.g. scripts/run.sh --set synthetic.rate=20000
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
exec feedsvc serve --config config.yaml "$@"
