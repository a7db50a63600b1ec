"""Two shards behind one relay against one publisher behind one relay: aggregate publish rate,
the two / one ratio, the CPU split per process and the capacity arithmetic for a 16-core host
(see feedsvc.bench.scenarios.shards)."""

import sys

from feedsvc.bench.scenarios.shards import main

sys.exit(main())
