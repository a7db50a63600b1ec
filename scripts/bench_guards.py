"""What the hostile-input guards cost per tick, this tree against another (see
feedsvc.bench.scenarios.guards)."""

import sys

from feedsvc.bench.scenarios.guards import main

sys.exit(main())
