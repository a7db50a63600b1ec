"""Publish rate of feedsvc serve vs a raw pyzmq PUB (see feedsvc.bench.scenarios.publish)."""

import sys

from feedsvc.bench.scenarios.publish import main

sys.exit(main())
