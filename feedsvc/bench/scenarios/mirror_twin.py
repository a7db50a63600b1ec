"""The mirror's load without serve's hand-off: a control for bench_mirror's hot-path ratio.

On two cores a mirror-ON run differs from an OFF run in two ways: serve's own work for the
side path (collecting frames, handing batches to the mirror process, supervising it), and a
machine shared with a busy mirror process and broker (cache, scheduler, the cores' sharing).
Only the first is the design's cost to the hot path. This process adds the second alone: it
runs the same `MirrorHandoff` and mirror process on the same broker, fed at the same rate with
frames `Publisher` encoded before the window, cycled (no encoding per tick here). An OFF run of
serve beside it ("off-twin") carries the machine's share of the mirror's load; ``off-twin / on``
is then what the hot path itself pays for Kafka.

Run as ``python -m feedsvc.bench.scenarios.mirror_twin --bootstrap H:P --topic T --rate R``;
prints ``ready`` once the mirror process reports, runs until SIGTERM, then closes the epoch.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from typing import Final

import zmq

from feedsvc.config import load_config
from feedsvc.server.mirror.handoff import MirrorHandoff
from feedsvc.server.publisher import Publisher
from feedsvc.server.synthetic import SyntheticFeed

READY_LINE: Final = b"ready\n"
PASS_S: Final = 0.001
STATS_INTERVAL_S: Final = 0.5
CLOSE_TIMEOUT_S: Final = 60.0
# Frames made before the window: one second's worth at the rate, cycled.
MIN_FRAMES: Final = 1_000


def encoded_frames(count: int, symbols: int, epoch: int) -> list[bytes]:
    """`count` frames as serve's Publisher encodes them (the synthetic feed's ticks)."""
    frames: list[bytes] = []
    publisher = Publisher(lambda _frame: None, epoch, symbols, mirror_append=frames.append)
    feed = SyntheticFeed(symbols, 0)
    while len(frames) < count:
        publisher.publish(feed.generate(min(1_000, count - len(frames))))
    return frames


def run(options: argparse.Namespace) -> int:
    config = load_config(
        None,
        [
            "kafka.enabled=true",
            f"kafka.bootstrap={options.bootstrap}",
            f"kafka.topic={options.topic}",
            f"kafka.partitions={options.partitions}",
            f"kafka.transactional_id=bench-twin-{options.topic}",
            *options.set,
        ],
    )
    epoch = time.time_ns()
    frames = encoded_frames(max(MIN_FRAMES, int(options.rate)), options.symbols, epoch)
    stop = False

    def request_stop(_signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, request_stop)
    context = zmq.Context()
    mirror = MirrorHandoff(context, config.kafka, config.log, epoch)
    mirror.start()
    sys.stdout.buffer.write(READY_LINE)
    sys.stdout.flush()
    monotonic, append, count = time.monotonic, mirror.append, len(frames)
    started = next_stats = monotonic()
    sent = 0
    try:
        while not stop:
            now = monotonic()
            due = int((now - started) * options.rate) - sent
            for index in range(sent, sent + due):
                append(frames[index % count])
            sent += max(due, 0)
            mirror.flush_if_due(now)
            if now >= next_stats:
                mirror.receive_stats()
                next_stats = now + STATS_INTERVAL_S
            time.sleep(PASS_S)
    finally:
        stats = mirror.close(CLOSE_TIMEOUT_S)
        context.destroy(linger=0)
    print(f"twin: handed off {stats.handed_off}, committed {stats.delivered}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--symbols", type=int, default=50)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
