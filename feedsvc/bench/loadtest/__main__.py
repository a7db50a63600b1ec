"""`python -m feedsvc.bench.loadtest --role=...`: the hidden worker roles the orchestrator runs."""

import sys

from feedsvc.bench.loadtest.roles import main

sys.exit(main())
