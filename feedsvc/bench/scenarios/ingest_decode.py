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
import time
from collections.abc import Callable
from typing import Final

import orjson

from feedsvc.bench.report import median, ratio
from feedsvc.server.ingest import IngestDecoder

SYMBOLS: Final = 50
BATCH_TICKS: Final = 1_000
HEADER: Final = f"{'shape':<28} {'loads us/tick':>14} {'decode us/tick':>15} {'decode/loads':>13}"


def make_ticks(count: int, optional: bool) -> list[dict[str, object]]:
    """`count` valid ticks over SYMBOLS symbols; with `optional`, venue, ts_src and last too."""
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


def shape_frames(batch: bool, optional: bool) -> tuple[str, list[bytes], int]:
    """A shape's name, its frames (one batch, or one frame per tick) and the ticks they hold."""
    ticks = make_ticks(BATCH_TICKS if batch else SYMBOLS, optional)
    frames = [orjson.dumps(ticks)] if batch else [orjson.dumps(tick) for tick in ticks]
    name = (
        f"{'batch of 1,000' if batch else 'one tick per frame'}"
        f"{', optional fields' if optional else ''}"
    )
    return name, frames, len(ticks)


def result_line(shape: str, loads_us: float, decode_us: float) -> str:
    """One row under HEADER: both medians and decode's cost as a multiple of loads'."""
    multiple = ratio(decode_us, loads_us)
    multiple_text = "-" if multiple is None else f"{multiple:.1f}x"
    return f"{shape:<28} {loads_us:>14.2f} {decode_us:>15.2f} {multiple_text:>13}"


def us_per_tick(run: Callable[[], object], ticks_per_call: int, seconds: float) -> float:
    """Microseconds per tick of calling `run` (which handles `ticks_per_call`) for `seconds`."""
    calls, started = 0, time.perf_counter()
    deadline = started + seconds
    while (now := time.perf_counter()) < deadline:
        for _ in range(20):
            run()
        calls += 20
    return (now - started) / (calls * ticks_per_call) * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench_ingest_decode.py", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--repeats", type=int, default=5, help="alternating rounds (median)")
    parser.add_argument("--seconds", type=float, default=0.5, help="per measurement")
    args = parser.parse_args(argv)
    decoder = IngestDecoder(max_message_bytes=16 * 1024 * 1024)
    print(HEADER)
    for optional in (False, True):
        for batch in (True, False):
            shape, frames, per_call = shape_frames(batch, optional)
            decoded = sum(len(decoder.decode(frame)) for frame in frames)
            if decoded != per_call:
                raise RuntimeError(f"{shape}: decoded {decoded} of {per_call} ticks")

            def loads_all(frames: list[bytes] = frames) -> None:
                for frame in frames:
                    orjson.loads(frame)

            def decode_all(frames: list[bytes] = frames) -> None:
                for frame in frames:
                    decoder.decode(frame)

            loads_us, decode_us = [], []
            for _ in range(args.repeats):
                loads_us.append(us_per_tick(loads_all, per_call, args.seconds))
                decode_us.append(us_per_tick(decode_all, per_call, args.seconds))
            print(result_line(shape, median(loads_us) or 0.0, median(decode_us) or 0.0), flush=True)
    return 0
