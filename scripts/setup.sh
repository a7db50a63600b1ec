#!/usr/bin/env bash
# Creates .venv (once) and installs feedsvc into it; run by run.sh and test.sh.
# Usage: scripts/setup.sh [extras]   e.g. "scripts/setup.sh test"
set -euo pipefail
PROJECT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$PROJECT_ROOT/.venv/bin/python" ]; then
    echo "setup: creating $PROJECT_ROOT/.venv with $($PYTHON --version)" >&2
    "$PYTHON" -m venv "$PROJECT_ROOT/.venv"
fi
# shellcheck disable=SC1091
. "$PROJECT_ROOT/.venv/bin/activate"
target="$PROJECT_ROOT"
if [ -n "${1:-}" ]; then target="${PROJECT_ROOT}[$1]"; fi
echo "setup: installing feedsvc${1:+[$1]} into .venv" >&2
python -m pip install --quiet --disable-pip-version-check -e "$target"
