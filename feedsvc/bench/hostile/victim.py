"""The victim: a well-behaved plain pyzmq SUB measuring the feed while peers attack the service,
in windows (per-second counts, seq gaps, heartbeat silences, latency)."""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Sequence
from typing import Any, Final

import orjson
import zmq

from feedsvc.bench.hostile.peer import zmq_context
from feedsvc.bench.latency import LatencyRecorder, hdr_available, latency_percentiles
from feedsvc.bench.sequence import SequenceGaps

# Symbols of the synthetic feed start with this; the victim subscribes to it.
SYNTHETIC_PREFIX: Final = b"SYN"
HEARTBEAT_PREFIX: Final = b"_hb "
US_PER_MS: Final = 1_000


def longest_gap(arrivals: Sequence[float], start: float | None, end: float | None) -> float | None:
    """The longest time without an arrival between `start` and `end` (both optional bounds,
    so a stream that stopped shows the silence up to `end`); None without arrivals or bounds."""
    points = sorted(arrivals)
    if start is not None:
        points = [start, *(point for point in points if point >= start)]
    if end is not None:
        points = [*(point for point in points if point <= end), end]
    if len(points) < 2:
        return None
    return max(later - earlier for earlier, later in itertools.pairwise(points))


def latency_ms(recorder: LatencyRecorder) -> dict[str, float | None]:
    """p50, p99 and max of what `recorder` holds, in milliseconds (None when it holds nothing)."""
    figures = latency_percentiles(recorder.dump(per_second=False).values())
    return {
        key: None if figures[key] is None else figures[key] / US_PER_MS
        for key in ("p50", "p99", "max")
    }


class _VictimWindow:
    """What the victim measured since its last mark (owned by the victim's thread)."""

    def __init__(self, started: float, last_heartbeat: float | None) -> None:
        self.started = started
        self.received = 0
        self.per_second: list[int] = []
        self.sequence = SequenceGaps()
        self.latency = LatencyRecorder()
        self.heartbeats: list[float] = []
        self.last_heartbeat_before = last_heartbeat
        self.malformed = 0

    def count_at(self, now: float) -> None:
        second = int(now - self.started)
        per_second = self.per_second
        while len(per_second) <= second:
            per_second.append(0)
        per_second[second] += 1
        self.received += 1

    def report(self, ended: float) -> dict[str, Any]:
        window_s = ended - self.started
        seconds = max(1, math.ceil(window_s))
        # Silence from the last heartbeat before the mark counts: a gap that spans it is one gap.
        start = self.last_heartbeat_before
        gap = longest_gap(self.heartbeats, self.started if start is None else start, ended)
        return {
            "window_s": round(window_s, 3),
            "received": self.received,
            "rate_per_s": self.received / window_s if window_s > 0 else None,
            # Every second of the window, silent ones too (a dead feed ends in zeros); the last
            # one may be a fraction of a second.
            "per_second": [*self.per_second, *[0] * seconds][:seconds],
            **self.sequence.summary(),
            "heartbeats": len(self.heartbeats),
            "max_heartbeat_gap_s": None if gap is None else round(gap, 3),
            "latency_ms": latency_ms(self.latency),
            "latency_method": "hdrhistogram" if hdr_available() else "sorted list",
            "malformed": self.malformed,
        }


class Victim:
    """A well-behaved plain pyzmq SUB measuring the feed from its own thread.

    It subscribes to `prefixes` (the synthetic symbols and heartbeats) and records per-second
    tick counts, per-symbol seq gaps, heartbeat silences and latency (receive time minus the
    tick's "ts"). `mark()` starts a new measured window; `stop()` returns the window's report.
    """

    def __init__(
        self,
        endpoint: str,
        prefixes: Sequence[bytes] = (SYNTHETIC_PREFIX, HEARTBEAT_PREFIX),
        rcvhwm: int = 100_000,
    ) -> None:
        self.endpoint = endpoint
        self.prefixes = tuple(prefixes)
        self.rcvhwm = rcvhwm
        self.first_tick = threading.Event()
        self._mark_at = time.monotonic()
        # Ticks arriving after stop() was called are not the window's.
        self._ended = math.inf
        self._stop = threading.Event()
        self._window = _VictimWindow(self._mark_at, None)
        self._error: str | None = None
        self._thread = threading.Thread(target=self._run, name="victim", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wait_receiving(self, timeout_s: float) -> bool:
        """Whether a tick arrived within `timeout_s`."""
        return self.first_tick.wait(timeout_s)

    @property
    def received(self) -> int:
        """Ticks received in the current window so far (read while the thread runs)."""
        return self._window.received

    def mark(self) -> None:
        """Start a new window now (the thread drops what it counted before)."""
        self._mark_at = time.monotonic()

    def stop(self) -> dict[str, Any]:
        ended = self._ended = min(self._ended, time.monotonic())
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        report = self._window.report(ended)
        if self._error:
            report["error"] = self._error
        return report

    def _run(self) -> None:
        context = zmq_context()
        sub = context.socket(zmq.SUB)
        sub.linger = 0
        sub.rcvhwm = self.rcvhwm
        try:
            for prefix in self.prefixes:
                sub.subscribe(prefix)
            sub.connect(self.endpoint)
            self._receive(sub)
        except Exception as error:  # reported; the window so far stays valid
            self._error = f"{type(error).__name__}: {error}"
        finally:
            sub.close()
            context.term()

    def _receive(self, sub: zmq.Socket) -> None:
        monotonic, time_ns, loads = time.monotonic, time.time_ns, orjson.loads
        recv, again = sub.recv, zmq.Again
        window = self._window
        while not self._stop.is_set():
            if window.started != self._mark_at:
                last = window.heartbeats[-1] if window.heartbeats else window.last_heartbeat_before
                window = self._window = _VictimWindow(self._mark_at, last)
            if not sub.poll(100):
                continue
            for _ in range(10_000):
                try:
                    frame = recv(zmq.NOBLOCK)
                except again:
                    break
                received_ns, now = time_ns(), monotonic()
                if now >= self._ended:
                    return
                topic, _, body = frame.partition(b" ")
                if topic == b"_hb":
                    window.heartbeats.append(now)
                    continue
                try:
                    tick = loads(body)
                    window.sequence.observe(tick["sym"], tick["epoch"], tick["seq"])
                    window.latency.record(received_ns, tick["ts"])
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    window.malformed += 1
                    continue
                window.count_at(now)
                if not self.first_tick.is_set():
                    self.first_tick.set()
