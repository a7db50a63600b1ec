"""What CurveZMQ costs to the publish rate (see feedsvc.bench.scenarios.curve)."""

import sys

from feedsvc.bench.scenarios.curve import main

sys.exit(main())
