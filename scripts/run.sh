#!/usr/bin/env bash
# Sets up everything on a fresh machine, starts the local Kafka broker and runs the service with
# config.yaml's defaults (Kafka mirror on). Ctrl-C or SIGTERM stops the service, then the broker.
# Extra arguments go to `feedsvc serve`, e.g. scripts/run.sh --set synthetic.rate=20000
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# shellcheck source=/dev/null
. .venv/bin/activate
scripts/kafka.sh start
trap 'scripts/kafka.sh stop' EXIT
# Forward SIGTERM to the service so it flushes to Kafka before the broker goes.
feedsvc serve --config config.yaml "$@" &
service_pid=$!
trap 'kill -TERM "$service_pid" 2>/dev/null || true' TERM INT
status=0
wait "$service_pid" || status=$?
# A trapped signal interrupts the first wait; wait again for the service's own exit.
if kill -0 "$service_pid" 2>/dev/null; then wait "$service_pid" || status=$?; fi
exit "$status"
