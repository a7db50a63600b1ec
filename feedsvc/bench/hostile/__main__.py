"""`python -m feedsvc.bench.hostile NAME`: one attack in this process, its result as JSON."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from feedsvc.bench.hostile.attacks import ATTACKS, run_attack
from feedsvc.bench.hostile.peer import Endpoints


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m feedsvc.bench.hostile",
        description="Run one hostile peer against feedsvc serve; prints its result as JSON.",
    )
    parser.add_argument("attack", choices=sorted(ATTACKS))
    parser.add_argument("--endpoints", required=True, help="JSON object of Endpoints fields")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds, at most")
    parser.add_argument("--parameters", default="{}", help="JSON object of the attack's sizes")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run one attack; stdout gets {"ready": true} once started, then the result, one JSON line
    each. SIGTERM ends the attack early (it still closes its sockets and reports)."""
    args = _parse_args(argv)
    endpoints = Endpoints(**json.loads(args.endpoints))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda _signum, _frame: stop.set())
    print(json.dumps({"ready": True}), flush=True)
    result = run_attack(
        args.attack, endpoints, duration_s=args.duration, stop=stop, **json.loads(args.parameters)
    )
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
