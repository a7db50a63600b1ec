"""Publish rate with the metrics server on vs off (see feedsvc.bench.scenarios.metrics)."""

import sys

from feedsvc.bench.scenarios.metrics import main

sys.exit(main())
