#!/usr/bin/env bash
# Searches the property tests of the entry points that take outside input at random, with many
# more examples than CI's derandomized run (hypothesis profile "fuzz", tests/conftest.py).
# Extra arguments go to pytest, e.g. scripts/fuzz.sh -x   or   scripts/fuzz.sh -k sync
# A failure prints the minimal example and a @reproduce_failure blob; Hypothesis also keeps it
# in .hypothesis/ so the next fuzz run tries it first. Add --hypothesis-show-statistics to see
# what the search reached (the events each property records).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "fuzz: random search of the ingest, sync, recovery, relay request, subscription and config property tests" \
    "(hypothesis profile 'fuzz', up to 50x CI's examples); expect 10 to 20 minutes on 2 cores" >&2
scripts/setup.sh test
# shellcheck source=/dev/null
. .venv/bin/activate
# --timeout=0: one property runs for minutes under this profile, far past the suite's per-test
# timeout (pyproject.toml), which is there for hung sockets, not for long searches.
FEEDSVC_HYPOTHESIS_PROFILE=fuzz python -m pytest \
    tests/unit/test_fuzz_end_to_end.py tests/unit/test_fuzz_entry_points.py \
    tests/unit/test_fuzz_recovery.py tests/unit/test_relay_requests.py \
    --timeout=0 "$@"
