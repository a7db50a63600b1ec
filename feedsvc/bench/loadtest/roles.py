"""The hidden worker roles of `feedsvc loadtest`, each a process of its own (no GIL shared with the
publisher): a `feedsvc.client.Subscriber`, the raw pyzmq baseline publisher and a raw SUB.

The orchestrator runs them as ``python -m feedsvc.bench.loadtest --role=...``. A subscriber
prints ``ready`` on stdout at its first tick and, after SIGTERM, one JSON line of what it saw;
the raw publisher writes a summary file shaped like `feedsvc serve --summary-file`'s.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import orjson
import zmq

from feedsvc.bench.latency import LatencyRecorder
from feedsvc.bench.sequence import SequenceGaps
from feedsvc.client import Subscriber
from feedsvc.curve import CurveClientKeys, create_key_pair, load_key_pair
from feedsvc.curve import connect as curve_connect
from feedsvc.server.pacing import BurstSchedule, RatePacer
from feedsvc.server.synthetic import synthetic_symbols

# With --rate 0 the slow subscribers read at the fraction of this assumed rate.
UNPACED_RATE_ESTIMATE: Final = 100_000
RAW_FRAME_BYTES: Final = 100
RAW_HWM: Final = 10_000
READY_LINE: Final = b"ready"
# With --curve: the throwaway keys in the curve folder (see make_curve_keys).
SERVER_KEY_NAME: Final = "server"
CLIENT_KEY_NAME: Final = "client"
# Raw frames carry no epoch: the baseline publisher never restarts within a run.
RAW_EPOCH: Final = 0


class SubscriberLog:
    """What a subscriber role saw: latency per receive second, per-symbol seq spans and gaps
    (`SequenceGaps`), and the publisher's ts of its first and last tick. A slow role's
    `pace` sleeps so that it reads at `read_interval_s` per tick."""

    def __init__(self, read_interval_s: float = 0.0, source_latency: bool = False) -> None:
        self.latencies = LatencyRecorder()
        # From the feed handler's ts_src (--source ingest): the whole path, not only the hop.
        self.source_latencies = LatencyRecorder() if source_latency else None
        self.sequence = SequenceGaps()
        self.received = 0
        self.first_ts: int | None = None
        self.last_ts: int | None = None
        self.read_interval_s = read_interval_s
        self._next_read = time.monotonic()

    def observe(
        self, received_ns: int, symbol: str, epoch: int, seq: int, ts: int, ts_src: int = 0
    ) -> None:
        """One tick, received at `received_ns` (Unix ns), stamped `ts` by the publisher (and
        `ts_src` by the feed handler, recorded when the log keeps source latencies)."""
        self.latencies.record(received_ns, ts)
        if self.source_latencies is not None:
            self.source_latencies.record(received_ns, ts_src)
        self.sequence.observe(symbol, epoch, seq)
        if self.first_ts is None:
            self.first_ts = ts
        self.last_ts = ts
        self.received += 1

    def pace(self) -> None:
        if self.read_interval_s:
            self._next_read += self.read_interval_s
            pause = self._next_read - time.monotonic()
            if pause > 0:
                time.sleep(pause)

    def span_figures(self) -> dict[str, Any]:
        """Ticks published for the symbols seen between the first and last seq seen of each,
        over how long (publisher ts), and the last seq per symbol (for `behind_at_stop`)."""
        published = self.sequence.published_in_span
        span_s = None
        if self.first_ts is not None and self.last_ts is not None:
            span_s = (self.last_ts - self.first_ts) / 1e9
        return {
            "published_in_span": published,
            "symbols_seen": self.sequence.symbols,
            "span_s": span_s,
            "publish_rate": published / span_s if span_s else None,
            "last_seq_by_symbol": self.sequence.last_seq,
        }

    def sequence_result(self) -> dict[str, Any]:
        """The result with the gaps this log counted itself (a raw SUB has no client's)."""
        sequence = self.sequence
        return self.result(sequence.missed, sequence.gaps, sequence.backwards)

    def result(self, missed: int, gaps: int, duplicates: int) -> dict[str, Any]:
        """The role's JSON result for the orchestrator (`analysis.summarize` reads it)."""
        return {
            "received": self.received,
            "missed": missed,
            "gaps": gaps,
            "duplicates": duplicates,
            **self.span_figures(),
            "latency_by_second": self.latencies.dump(),
            **(
                {"source_latency_by_second": self.source_latencies.dump()}
                if self.source_latencies is not None
                else {}
            ),
        }


@contextmanager
def stop_on_sigterm() -> Iterator[Callable[[], bool]]:
    stop = False

    def request_stop(_signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    previous = signal.signal(signal.SIGTERM, request_stop)
    try:
        yield lambda: stop
    finally:
        signal.signal(signal.SIGTERM, previous)


def read_interval_s(args: argparse.Namespace) -> float:
    """Seconds between two reads: 0 (as fast as it can) unless it is a slow role."""
    if not args.slow_role:
        return 0.0
    rate = args.rate if args.rate > 0 else UNPACED_RATE_ESTIMATE
    return 1.0 / (rate * args.slow_fraction)


def announce_ready() -> None:
    sys.stdout.buffer.write(READY_LINE + b"\n")
    sys.stdout.flush()


def print_result(result: dict[str, Any]) -> None:
    sys.stdout.buffer.write(orjson.dumps(result) + b"\n")
    sys.stdout.flush()


@contextmanager
def plain_subscriber(endpoint: str, keys: CurveClientKeys | None = None) -> Iterator[zmq.Socket]:
    """A plain pyzmq SUB to everything on `endpoint` (RCVHWM RAW_HWM), closed with its own
    context afterwards: the raw subscriber roles' socket."""
    context = zmq.Context()
    socket = context.socket(zmq.SUB)
    socket.setsockopt(zmq.RCVHWM, RAW_HWM)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.SUBSCRIBE, b"")
    try:
        curve_connect(socket, endpoint, keys)
        yield socket
    finally:
        socket.close(linger=0)
        context.term()


def make_curve_keys(directory: Path) -> None:
    """A server pair and one client pair, the client's public key alone in authorized/."""
    create_key_pair(directory, SERVER_KEY_NAME)
    client_public, _ = create_key_pair(directory, CLIENT_KEY_NAME)
    (directory / "authorized").mkdir()
    shutil.copy(client_public, directory / "authorized")


def client_keys(curve_dir: Path | None) -> CurveClientKeys | None:
    if curve_dir is None:
        return None
    return CurveClientKeys.from_files(
        curve_dir / f"{SERVER_KEY_NAME}.key", curve_dir / f"{CLIENT_KEY_NAME}.key_secret"
    )


def run_feedsvc_subscriber(args: argparse.Namespace) -> int:
    """Hidden role: a `Subscriber` to every synthetic symbol; prints one JSON result on stdout."""
    log = SubscriberLog(read_interval_s(args))
    observe, pace, now_ns = log.observe, log.pace, time.time_ns
    with (
        stop_on_sigterm() as stopped,
        Subscriber(
            args.endpoint,
            symbols=synthetic_symbols(args.symbols),
            curve=client_keys(args.curve_dir),
        ) as subscriber,
    ):
        while not stopped():
            tick = subscriber.recv(timeout=0.2)
            if tick is None:
                continue
            if not log.received:
                announce_ready()
            observe(now_ns(), tick["sym"], tick["epoch"], tick["seq"], tick["ts"])
            pace()
        # Gaps are the client's own figures: what a user of feedsvc.client would be told.
        stats = subscriber.stats
        result = log.result(stats.missed, stats.gaps, stats.duplicates)
    print_result(result)
    return 0


def raw_frame_prefixes(symbol_count: int) -> list[bytes]:
    """The baseline's pre-encoded topics (``b"SYM "``), one per synthetic symbol."""
    return [symbol.encode() + b" " for symbol in synthetic_symbols(symbol_count)]


def run_raw_publisher(args: argparse.Namespace) -> int:
    """Hidden role: the baseline PUB, paced like the synthetic feed (bursts included); runs
    until SIGTERM."""
    prefixes = raw_frame_prefixes(args.symbols)
    # Fixed widths: seq 10 digits, ts 19 digits, then padding to RAW_FRAME_BYTES.
    padding = [b" " + b"." * (RAW_FRAME_BYTES - len(p) - 31) for p in prefixes]
    seq_by_index = [0] * len(prefixes)
    context = zmq.Context(io_threads=1)
    socket = context.socket(zmq.PUB)
    socket.setsockopt(zmq.SNDHWM, RAW_HWM)
    socket.setsockopt(zmq.LINGER, 0)
    if args.curve_dir is not None:
        # Curve without an allow-list check: the encryption is the cost being compared.
        public, secret = load_key_pair(args.curve_dir / f"{SERVER_KEY_NAME}.key_secret")
        socket.curve_publickey, socket.curve_secretkey = public, secret
        socket.curve_server = True
    socket.bind(args.endpoint)
    send, now_ns, monotonic = socket.send, time.time_ns, time.monotonic
    bursts = (
        BurstSchedule(args.burst_rate, args.burst_every, args.burst_duration)
        if args.burst_rate
        else None
    )
    start = monotonic()
    pacer = RatePacer(args.rate, start, bursts=bursts, unix_offset_s=time.time() - start)
    index, count, sent = 0, len(prefixes), 0
    try:
        with stop_on_sigterm() as stopped:
            while not stopped():
                due = pacer.due(monotonic())
                for _ in range(due):
                    seq = seq_by_index[index] + 1
                    seq_by_index[index] = seq
                    send(b"%s%010d %019d%s" % (prefixes[index], seq, now_ns(), padding[index]))
                    index = index + 1 if index + 1 < count else 0
                sent += due
                if not due:
                    time.sleep(min(0.001, pacer.seconds_until_next(monotonic())))
    finally:
        socket.close(linger=0)
        context.term()
    # The same shape as `feedsvc serve --summary-file`, so both runs are read the same way.
    summary = {"published": sent, "mirror": {"enabled": False}}
    args.summary_file.write_bytes(orjson.dumps(summary))
    return 0


def run_raw_subscriber(args: argparse.Namespace) -> int:
    """Hidden role: a raw SUB to everything; gaps counted from the embedded per-symbol seq."""
    log = SubscriberLog(read_interval_s(args))
    observe, pace, now_ns = log.observe, log.pace, time.time_ns
    with (
        plain_subscriber(args.endpoint, client_keys(args.curve_dir)) as socket,
        stop_on_sigterm() as stopped,
    ):
        while not stopped():
            if not socket.poll(200):
                continue
            topic, seq_text, ts_text, _ = socket.recv().split(b" ", 3)
            if not log.received:
                announce_ready()
            observe(now_ns(), topic.decode(), RAW_EPOCH, int(seq_text), int(ts_text))
            pace()
    print_result(log.sequence_result())
    return 0
