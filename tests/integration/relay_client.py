"""A trading client for the relay tests, run as its own process (inside a network namespace):
`feedsvc.client.Subscriber` with sync and recovery through the given endpoints, reading until
a deadline. Every 0.2 s it writes one JSON status line to --out (flushed), so a test watches it
live while it restarts the tiers around it; the last line has "final": true.

A tick counts as out of order when its seq is not the last one of its (symbol, epoch) plus 1;
the first tick of a (symbol, epoch) is the start (the snapshot's, or a new epoch's).
"recovering" is true while the client holds ticks of some symbol for a recovery under way.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import BinaryIO

import orjson

from feedsvc.client import Subscriber


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--sync", default=None)
    parser.add_argument("--recover", default=None)
    parser.add_argument("--symbol", action="append", default=[])
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    last_seq: dict[tuple[str, int], int] = {}
    out_of_order = 0
    delivered_by_epoch: dict[int, int] = {}
    dead_events = 0
    last_tick_at: float | None = None

    def on_dead() -> None:
        nonlocal dead_events
        dead_events += 1

    deadline = time.monotonic() + args.duration
    with (
        args.out.open("wb") as out,
        Subscriber(
            args.endpoint,
            symbols=args.symbol,
            sync_endpoint=args.sync,
            recovery_endpoint=args.recover,
            heartbeat_timeout_s=1.0,
            on_dead=on_dead,
        ) as subscriber,
    ):
        status_at = 0.0
        while (now := time.monotonic()) < deadline:
            tick = subscriber.recv(timeout=0.05)
            if tick is not None:
                key = (tick["sym"], tick["epoch"])
                previous = last_seq.get(key)
                if previous is not None and tick["seq"] != previous + 1:
                    out_of_order += 1
                last_seq[key] = tick["seq"]
                delivered_by_epoch[tick["epoch"]] = delivered_by_epoch.get(tick["epoch"], 0) + 1
                last_tick_at = now
            if now >= status_at or time.monotonic() >= deadline:
                status_at = now + 0.2
                _write(out, subscriber, out_of_order, delivered_by_epoch, dead_events, last_tick_at)
        _write(
            out, subscriber, out_of_order, delivered_by_epoch, dead_events, last_tick_at, final=True
        )
    return 0


def _write(
    out: BinaryIO,
    subscriber: Subscriber,
    out_of_order: int,
    delivered_by_epoch: dict[int, int],
    dead_events: int,
    last_tick_at: float | None,
    final: bool = False,
) -> None:
    status = {
        "at": time.monotonic(),
        "out_of_order": out_of_order,
        "delivered_by_epoch": {str(epoch): count for epoch, count in delivered_by_epoch.items()},
        "dead_events": dead_events,
        "last_tick_at": last_tick_at,
        # A recovery under way: its ticks can only come from the upstream that has them now.
        "recovering": subscriber.recovering,
        "epoch_by_shard": subscriber.tracker.epoch_by_shard,
        "silent_shards": subscriber.silent_shards(),
        "stats": dataclasses.asdict(subscriber.stats),
        "final": final,
    }
    out.write(orjson.dumps(status) + b"\n")
    out.flush()


if __name__ == "__main__":
    raise SystemExit(main())
