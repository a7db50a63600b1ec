"""What one unauthenticated peer can do to `feedsvc serve` (see feedsvc.bench.scenarios.attacks)."""

import sys

from feedsvc.bench.scenarios.attacks import main

sys.exit(main())
