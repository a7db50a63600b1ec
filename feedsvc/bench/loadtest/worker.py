"""The entry of every hidden worker role: ``python -m feedsvc.bench.loadtest --role=...``, run by
the orchestrator (`run`) with the options of the run it belongs to."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Final

from feedsvc.bench.loadtest.ingest_roles import INGEST_ROLES
from feedsvc.bench.loadtest.roles import (
    run_feedsvc_subscriber,
    run_raw_publisher,
    run_raw_subscriber,
)

ROLES: Final[dict[str, Callable[[argparse.Namespace], int]]] = {
    "feedsvc-subscriber": run_feedsvc_subscriber,
    "raw-subscriber": run_raw_subscriber,
    "raw-publisher": run_raw_publisher,
    **INGEST_ROLES,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="feedsvc loadtest worker (internal)")
    parser.add_argument("--role", choices=tuple(ROLES), required=True)
    parser.add_argument("--endpoint", required=True, help="the ticks endpoint (PUB side)")
    parser.add_argument("--ingest-endpoint", default=None, help="relay: the PULL it binds")
    parser.add_argument("--rate", type=float, default=0.0)
    parser.add_argument("--symbols", type=int, default=50)
    parser.add_argument("--batch", type=int, default=1, help="feed handler: ticks per frame")
    parser.add_argument("--slow-fraction", type=float, default=0.01)
    parser.add_argument("--slow-role", action="store_true")
    parser.add_argument("--burst-rate", type=float, default=0.0)
    parser.add_argument("--burst-every", type=float, default=60.0)
    parser.add_argument("--burst-duration", type=float, default=5.0)
    parser.add_argument("--curve-dir", type=Path, default=None)
    parser.add_argument("--summary-file", type=Path, default=None)
    args = parser.parse_args(argv)
    return ROLES[args.role](args)
