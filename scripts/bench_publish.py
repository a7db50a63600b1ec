"""Publish rate of feedsvc serve vs a raw pyzmq PUB (see feedsvc.bench.scenarios.publish)."""

import sys

# The star import keeps the names scripts/bench_mirror.py and scripts/bench_metrics.py import
# from this script until they import feedsvc.bench.scenarios.publish themselves.
from feedsvc.bench.scenarios.publish import *  # noqa: F403
from feedsvc.bench.scenarios.publish import main

if __name__ == "__main__":
    sys.exit(main())
