"""A subscriber reading at 1% of the feed rate, against a real `feedsvc serve` over ipc.

One run, shared by the tests of this module (a few seconds): the service publishes 5,000 ticks/s
with a small SNDHWM, and three feedsvc.client subscribers read at once, each in its own thread:

- slow, normal mode (small RCVHWM): reads 1% of the feed for a few seconds, then catches up. It
  only learns what the publisher dropped when a later tick of the same symbol arrives, which is
  why it catches up before its gaps are checked;
- slow, conflating: reads 1% of the feed for the same few seconds;
- fast: reads everything all along.

The scripts/bench_slow_subscriber.py benchmark measures the same contract at scale (60 s, tcp
too, publisher memory and latency ratios); these tests check the properties a client relies on.
"""

from __future__ import annotations

import itertools
import math
import shutil
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import zmq

from feedsvc.client import Gap, Subscriber
from feedsvc.protocol.ticks import Tick
from tests.conftest import ServeProcess, serve_settings, wait_for_first_message

RATE = 5_000
SYMBOLS = 10
# Small queues on both ends, so the slow subscriber's backlog is small and the publisher drops
# early; the fast subscriber keeps the client's default RCVHWM. SNDHWM still holds the burst a
# CPU-starved publisher sends to catch up (0.1 s of ticks), or the fast subscriber would lose
# ticks too (seen with 100 on a loaded machine).
SNDHWM = 1_000
SLOW_RCVHWM = 100
SLOW_READS_PER_S = RATE / 100
SLOW_S = 4.0
# The normal-mode subscriber has caught up when every symbol delivered a tick this fresh.
CAUGHT_UP_AGE_MS = 50.0
CATCH_UP_TIMEOUT_S = 10.0
# Upper bound of every other wait; generous because other test runs share the two cores.
WAIT_S = 15.0
AGE_P99_LIMIT_MS = 100.0
# Conflating must beat the same slow reader without conflation by far, not by noise.
AGE_RATIO_LIMIT = 0.25
# The fast subscriber must keep pace with the feed while the slow ones lag: at least this share
# of the feed rate, and ticks no older than this at p99 (loose, for a loaded 2-core CI machine).
FAST_MIN_RATE_FRACTION = 0.5
FAST_AGE_P99_LIMIT_MS = 250.0


@dataclass
class Reading:
    """What one subscriber thread read: per symbol the seqs in order, the ages, the events."""

    seqs_by_symbol: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    # (monotonic receive time, tick age in ms) for every tick read in the slow phase (fast: all).
    ages: list[tuple[float, float]] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)
    slow_started_at: float = math.nan
    slow_ended_at: float = math.nan
    caught_up: bool = False
    missed: int = 0
    gaps_reported: int = 0
    error: Exception | None = None

    def record(self, tick: Tick, received_ns: int) -> float:
        """Keep the tick's seq; returns its age in ms."""
        self.seqs_by_symbol[tick["sym"]].append(tick["seq"])
        return (received_ns - tick["ts"]) / 1e6


def p99(values: list[float]) -> float:
    """Nearest-rank 99th percentile."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(0.99 * len(ordered))) - 1]


def _first_tick(subscriber: Subscriber, reading: Reading) -> None:
    tick = subscriber.recv(timeout=WAIT_S)
    assert tick is not None, "no tick from feedsvc serve"
    reading.record(tick, time.time_ns())


def _read_slowly(subscriber: Subscriber, reading: Reading) -> None:
    """One recv() per 1 / SLOW_READS_PER_S seconds (sleeping in between) for SLOW_S seconds."""
    interval_s = 1.0 / SLOW_READS_PER_S
    reading.slow_started_at = next_read_at = time.monotonic()
    end_at = reading.slow_started_at + SLOW_S
    while (now := time.monotonic()) < end_at:
        if now < next_read_at:
            time.sleep(next_read_at - now)
            continue
        next_read_at += interval_s
        tick = subscriber.recv(timeout=1.0)
        if tick is not None:
            reading.ages.append((time.monotonic(), reading.record(tick, time.time_ns())))
    reading.slow_ended_at = time.monotonic()


def slow_normal(endpoint: str, reading: Reading) -> None:
    with Subscriber(endpoint, rcvhwm=SLOW_RCVHWM, on_gap=reading.gaps.append) as subscriber:
        _first_tick(subscriber, reading)
        _read_slowly(subscriber, reading)
        # Drops become visible only now, when reading on reaches a later tick of the same
        # symbol: so read until every symbol has delivered a fresh tick.
        fresh_symbols: set[str] = set()
        deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
        while time.monotonic() < deadline and fresh_symbols != reading.seqs_by_symbol.keys():
            tick = subscriber.recv(timeout=1.0)
            if tick is not None and reading.record(tick, time.time_ns()) < CAUGHT_UP_AGE_MS:
                fresh_symbols.add(tick["sym"])
        reading.caught_up = fresh_symbols == reading.seqs_by_symbol.keys()
    reading.missed, reading.gaps_reported = subscriber.stats.missed, subscriber.stats.gaps


def slow_conflating(endpoint: str, reading: Reading) -> None:
    with Subscriber(endpoint, conflate=True) as subscriber:
        _first_tick(subscriber, reading)
        _read_slowly(subscriber, reading)


def fast(endpoint: str, reading: Reading, stop: threading.Event) -> None:
    with Subscriber(endpoint) as subscriber:
        _first_tick(subscriber, reading)
        while not stop.is_set():
            tick = subscriber.recv(timeout=0.2)
            if tick is not None:
                reading.ages.append((time.monotonic(), reading.record(tick, time.time_ns())))
    reading.missed, reading.gaps_reported = subscriber.stats.missed, subscriber.stats.gaps


def _start(reading: Reading, work: Callable[[], None]) -> threading.Thread:
    """Run `work` in a daemon thread; its exception is kept in reading.error for the fixture,
    which fails with the service's log."""

    def guarded() -> None:
        try:
            work()
        except Exception as error:
            reading.error = error

    thread = threading.Thread(target=guarded, daemon=True)
    thread.start()
    return thread


@dataclass
class Run:
    normal: Reading
    conflating: Reading
    fast: Reading


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """The one run of feedsvc serve and the three subscribers; the service is killed after."""
    # ipc paths are limited to ~107 bytes and pytest's tmp paths can be long: use a short base.
    ipc_dir = Path(tempfile.mkdtemp(prefix="fs-"))
    endpoint = f"ipc://{ipc_dir}/ticks"
    settings = serve_settings(
        [endpoint],
        f"synthetic.rate={RATE}",
        f"synthetic.symbols={SYMBOLS}",
        f"publisher.sndhwm={SNDHWM}",
    )
    # What the `serve` fixture starts, but once per module: that fixture is per test.
    process = ServeProcess(
        [part for setting in settings for part in ("--set", setting)],
        tmp_path_factory.mktemp("slow") / "serve.log",
    )
    context = zmq.Context()
    try:
        probe = context.socket(zmq.SUB)
        probe.setsockopt(zmq.LINGER, 0)
        probe.setsockopt(zmq.SUBSCRIBE, b"")
        probe.connect(endpoint)
        wait_for_first_message(probe, process)
        probe.close()

        readings = Run(Reading(), Reading(), Reading())
        stop_fast = threading.Event()
        fast_thread = _start(readings.fast, lambda: fast(endpoint, readings.fast, stop_fast))
        slow_threads = [
            _start(readings.normal, lambda: slow_normal(endpoint, readings.normal)),
            _start(readings.conflating, lambda: slow_conflating(endpoint, readings.conflating)),
        ]
        for thread in slow_threads:
            thread.join(timeout=WAIT_S + SLOW_S + CATCH_UP_TIMEOUT_S + WAIT_S)
        stop_fast.set()
        fast_thread.join(timeout=WAIT_S)
        for name, reading in vars(readings).items():
            if reading.error is not None:
                pytest.fail(f"{name} subscriber failed: {reading.error!r}\n{process.log}")
        assert not any(thread.is_alive() for thread in [fast_thread, *slow_threads]), (
            "a subscriber thread did not finish in time"
        )
        yield readings
    finally:
        context.destroy(linger=0)
        process.close()
        shutil.rmtree(ipc_dir, ignore_errors=True)


def test_slow_subscriber_in_normal_mode_reports_every_missed_tick_as_a_gap(run: Run) -> None:
    reading = run.normal
    assert reading.caught_up, f"the slow subscriber did not catch up in {CATCH_UP_TIMEOUT_S} s"
    spans = received = 0
    jumps = set()
    for symbol, seqs in reading.seqs_by_symbol.items():
        assert seqs == sorted(set(seqs)), f"{symbol}: seqs not strictly increasing"
        spans += seqs[-1] - seqs[0] + 1
        received += len(seqs)
        jumps.update(
            (symbol, before + 1, after)
            for before, after in itertools.pairwise(seqs)
            if after != before + 1
        )
    missed = spans - received
    # Reading 1% of the feed, it must have lost most of it: the publisher dropped, not queued.
    assert missed > spans / 2, f"it lost only {missed} of the {spans} ticks in its seq spans"
    assert reading.gaps, f"no gap reported, yet {missed} ticks were not received"
    assert reading.gaps_reported == len(reading.gaps)
    assert reading.missed == missed, f"stats.missed {reading.missed}, from the seqs {missed}"
    reported = {(gap.symbol, gap.expected_seq, gap.received_seq) for gap in reading.gaps}
    assert reported == jumps, (
        f"{len(jumps - reported)} seq jumps not reported as gaps, "
        f"{len(reported - jumps)} reported gaps that are no seq jump"
    )
    assert sum(gap.missed for gap in reading.gaps) == reading.missed


def test_conflating_slow_subscriber_gets_fresh_ticks(run: Run) -> None:
    conflating = [age for _, age in run.conflating.ages]
    normal = [age for _, age in run.normal.ages]
    # Both read on the same schedule; a loaded machine may skip a few reads, not half of them.
    assert len(conflating) >= SLOW_READS_PER_S * SLOW_S / 2
    assert len(normal) >= SLOW_READS_PER_S * SLOW_S / 2
    assert p99(conflating) < AGE_P99_LIMIT_MS, f"conflating ages p99 {p99(conflating):.1f} ms"
    # Without conflation the same reader works through an ever older backlog.
    assert p99(conflating) < AGE_RATIO_LIMIT * p99(normal), (p99(conflating), p99(normal))


def test_fast_subscriber_keeps_pace_and_misses_nothing(run: Run) -> None:
    reading = run.fast
    assert reading.missed == 0
    assert reading.gaps_reported == 0
    for symbol, seqs in reading.seqs_by_symbol.items():
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"{symbol}: not contiguous"
    slow_started, slow_ended = run.normal.slow_started_at, run.normal.slow_ended_at
    during_slow = [age for at, age in reading.ages if slow_started <= at <= slow_ended]
    rate = len(during_slow) / (slow_ended - slow_started)
    assert rate >= FAST_MIN_RATE_FRACTION * RATE, f"fast subscriber received {rate:.0f} ticks/s"
    assert p99(during_slow) < FAST_AGE_P99_LIMIT_MS, f"fast ages p99 {p99(during_slow):.1f} ms"
