"""`python -m feedsvc.bench.loadtest --role=...`: the hidden worker roles the orchestrator runs."""

import sys

from feedsvc.bench.loadtest.worker import main

sys.exit(main())
