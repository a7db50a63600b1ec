"""The Kafka mirror's cost to the publish rate and its survival of a broker outage, against a
real broker (see feedsvc.bench.scenarios.mirror)."""

import sys

from feedsvc.bench.scenarios.mirror import main

sys.exit(main())
