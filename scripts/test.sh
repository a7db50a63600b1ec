#!/usr/bin/env bash
# Sets up everything on a fresh machine and runs the whole test suite (lint included). The
# Kafka tests start a real broker through scripts/kafka.sh, which fetches its jars once.
# Extra arguments go to pytest, e.g. scripts/test.sh -k config
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
# shellcheck source=/dev/null
. .venv/bin/activate
echo "test: ruff" >&2
ruff check .
ruff format --check .
echo "test: pytest" >&2
python -m pytest "$@"
