"""What validating ingest frames costs, per tick, beside orjson.loads of the same frames.

`IngestDecoder.decode` runs in the service's one hot loop for every frame a feed handler pushes,
so its cost per tick caps the ingest rate. The baseline, measured in the same run on the same
frames, is orjson.loads alone: the part no validator can avoid. Shapes: a batch of 1,000 ticks
and single-tick frames, each with only the required fields and with the optional ones
(venue, ts_src), 50 symbols.

Usage: .venv/bin/python scripts/bench_ingest_decode.py [--repeats N] [--seconds S]
Prints one line per shape: us/tick for loads and for decode, and their ratio (medians).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import orjson

from feedsvc.server.ingest import IngestDecoder

SYMBOLS = 50
BATCH_TICKS = 1_000


def _ticks(count: int, optional: bool) -> list[dict[str, object]]:
    ticks: list[dict[str, object]] = []
    for index in range(count):
        tick: dict[str, object] = {
            "sym": f"SYM{index % SYMBOLS:04d}",
            "bid": 100.0 + index * 0.01,
            "ask": 100.02 + index * 0.01,
            "bid_size": 100 + index % 7,
            "ask_size": 200,
        }
        if optional:
            tick.update(venue="XNAS", ts_src=1_795_000_000_000_000_000 + index, last=100.01)
        ticks.append(tick)
    return ticks


def _us_per_tick(run: Callable[[], object], ticks_per_call: int, seconds: float) -> float:
    calls, started = 0, time.perf_counter()
    deadline = started + seconds
    while (now := time.perf_counter()) < deadline:
        for _ in range(20):
            run()
        calls += 20
    return (now - started) / (calls * ticks_per_call) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="alternating rounds (median)")
    parser.add_argument("--seconds", type=float, default=0.5, help="per measurement")
    args = parser.parse_args()
    decoder = IngestDecoder(max_message_bytes=16 * 1024 * 1024)
    print(f"{'shape':<28} {'loads us/tick':>14} {'decode us/tick':>15} {'decode/loads':>13}")
    for optional in (False, True):
        for batch in (True, False):
            ticks = _ticks(BATCH_TICKS if batch else SYMBOLS, optional)
            frames = [orjson.dumps(ticks)] if batch else [orjson.dumps(tick) for tick in ticks]
            per_call = len(ticks)
            assert sum(len(decoder.decode(frame)) for frame in frames) == per_call, "rejected"

            def loads_all(frames: list[bytes] = frames) -> None:
                for frame in frames:
                    orjson.loads(frame)

            def decode_all(frames: list[bytes] = frames) -> None:
                for frame in frames:
                    decoder.decode(frame)

            loads_us, decode_us = [], []
            for _ in range(args.repeats):
                loads_us.append(_us_per_tick(loads_all, per_call, args.seconds))
                decode_us.append(_us_per_tick(decode_all, per_call, args.seconds))
            shape = (
                f"{'batch of 1,000' if batch else 'one tick per frame'}"
                f"{', optional fields' if optional else ''}"
            )
            loads_median, decode_median = statistics.median(loads_us), statistics.median(decode_us)
            print(
                f"{shape:<28} {loads_median:>14.2f} {decode_median:>15.2f} "
                f"{decode_median / loads_median:>12.1f}x",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
