"""Gap recovery's cost: hot-path ns per tick for the window, a fast subscriber's p99 and rate
with and without a client recovering flat out, recovery latency (see
feedsvc.bench.scenarios.recovery)."""

import sys

from feedsvc.bench.scenarios.recovery import main

sys.exit(main())
