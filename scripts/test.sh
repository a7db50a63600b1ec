#!/usr/bin/env bash
# Sets up everything on a fresh machine and runs the whole test suite (lint included). The
# Kafka tests start a real broker through scripts/kafka.sh, which fetches its jars once.
# Extra arguments go to pytest, e.g. scripts/test.sh -k config
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
# Tools the tests run for real, from Debian: promtool checks the Prometheus exposition
# (package prometheus); kcat reads the Kafka mirror as a client that is not ours.
install_debian_package() {
    local sudo_if_needed=""
    if [ "$(id -u)" != 0 ]; then sudo_if_needed="sudo"; fi
    echo "test: installing Debian package $1" >&2
    $sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$1" >&2 \
        || { $sudo_if_needed apt-get update -q >&2 \
            && $sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$1" >&2; }
}
command -v promtool >/dev/null 2>&1 || install_debian_package prometheus
command -v kcat >/dev/null 2>&1 || install_debian_package kcat
# shellcheck source=/dev/null
. .venv/bin/activate
echo "test: ruff" >&2
ruff check .
ruff format --check .
echo "test: pytest" >&2
python -m pytest "$@"
