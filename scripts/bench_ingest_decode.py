"""What validating ingest frames costs per tick, beside orjson.loads (see
feedsvc.bench.scenarios.ingest_decode)."""

import sys

from feedsvc.bench.scenarios.ingest_decode import main

sys.exit(main())
