"""A subscriber at 1% of the feed: fast subscribers' latency, publisher RSS, tick age, gaps (see
feedsvc.bench.scenarios.slow_subscriber)."""

import sys

from feedsvc.bench.scenarios.slow_subscriber import main

sys.exit(main())
