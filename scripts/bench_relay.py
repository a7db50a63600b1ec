"""The relay tier's cost: the hop's added latency (direct vs through relays), publisher and relay
CPU per tick, and the highest gap-free rate through a relay against raw pyzmq (see
feedsvc.bench.scenarios.relay)."""

import sys

from feedsvc.bench.scenarios.relay import main

sys.exit(main())
