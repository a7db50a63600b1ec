"""The role processes of the relay benchmark (see feedsvc.bench.scenarios.relay): a subscriber
(SUB sockets polled together, latency and seq gaps recorded) and a raw pyzmq source. The
orchestrator starts them as ``python -m feedsvc.bench.scenarios.relay_roles --role ...``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Final

import orjson
import zmq

from feedsvc.bench.latency import LatencyRecorder, hdr_available
from feedsvc.bench.scenarios.relay_analysis import tick_template
from feedsvc.bench.sequence import SequenceGaps
from feedsvc.config import PublisherConfig
from feedsvc.protocol.ticks import CONTROL_PREFIX
from feedsvc.server.synthetic import synthetic_symbols

SYMBOLS: Final = 50
# Longest poll, so every subscriber loop looks at its deadline.
POLL_SLICE_MS: Final = 100
# Frames taken from one ready socket before the others get their turn.
DRAIN_BATCH: Final = 256
# The source never sends more than this in one go, so ts stays close to the send time.
MAX_BURST: Final = 1_000
SOURCE_IDLE_S: Final = 0.0002
# What a role prints once its sockets are connected (or bound); then it waits for the timing.
READY_LINE: Final = "ready"
CONTROL_BYTE: Final = CONTROL_PREFIX.encode()


def _window_ns(start_at: float, end_at: float) -> tuple[int, int]:
    """The monotonic window in time.time_ns() terms, so the receive loop reads one clock."""
    offset_ns = time.time_ns() - int(time.monotonic() * 1e9)
    return int(start_at * 1e9) + offset_ns, int(end_at * 1e9) + offset_ns


def _ready_then_timing() -> dict[str, float]:
    """Tell the orchestrator this role is connected (a line on stdout) and wait for the window's
    monotonic times (a JSON line on stdin): a role's start-up time, long on a loaded machine,
    then never eats into a window."""
    print(READY_LINE, flush=True)
    line = sys.stdin.readline()
    if not line:
        raise SystemExit("the orchestrator went away before the window was set")
    return json.loads(line)


def run_subscriber(options: argparse.Namespace) -> dict[str, Any]:
    """SUB sockets (one per endpoint given), polled together until --end-at; every tick received
    in the window is recorded (latency from ts, seq per symbol per socket)."""
    endpoints = options.endpoints.split(",")
    context = zmq.Context()
    try:
        sockets = []
        for endpoint in endpoints:
            sub = context.socket(zmq.SUB)
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.SUBSCRIBE, b"")
            sub.connect(endpoint)
            sockets.append(sub)
        timing = _ready_then_timing()
        poller = zmq.Poller()
        for sub in sockets:
            poller.register(sub, zmq.POLLIN)
        index_by_socket = {sub: index for index, sub in enumerate(sockets)}
        trackers = [SequenceGaps() for _ in sockets]
        observers = [tracker.observe for tracker in trackers]
        received = [0] * len(sockets)
        first_tick_at: list[float | None] = [None] * len(sockets)
        latencies = LatencyRecorder()
        record, loads, time_ns, monotonic = (
            latencies.record,
            orjson.loads,
            time.time_ns,
            time.monotonic,
        )
        start_ns, _ = _window_ns(timing["start_at"], timing["end_at"])
        end_at = timing["end_at"]
        events_option, pollin = zmq.EVENTS, zmq.POLLIN
        while (remaining_s := end_at - monotonic()) > 0:
            for sub, _event in poller.poll(min(POLL_SLICE_MS, int(remaining_s * 1000) + 1)):
                index = index_by_socket[sub]
                observe = observers[index]
                recv, get = sub.recv, sub.get
                # Drain a bounded batch: one poll per frame would cost more than the frame.
                for _ in range(DRAIN_BATCH):
                    frame = recv()
                    received_ns = time_ns()
                    if not frame.startswith(CONTROL_BYTE):
                        if first_tick_at[index] is None:
                            first_tick_at[index] = monotonic()
                        if received_ns >= start_ns:
                            tick = loads(frame[frame.index(b" ") + 1 :])
                            record(received_ns, tick["ts"])
                            observe(tick["sym"], tick["epoch"], tick["seq"])
                            received[index] += 1
                    if not get(events_option) & pollin:
                        break
        return {
            "sockets": [
                {
                    "endpoint": endpoint,
                    "received_in_window": received[index],
                    "published_in_window": trackers[index].published_in_span,
                    "gaps": trackers[index].gaps,
                    "missed": trackers[index].missed,
                    "first_tick_at": first_tick_at[index],
                }
                for index, endpoint in enumerate(endpoints)
            ],
            "latency": latencies.dump(per_second=False, hdr=hdr_available())["all"],
        }
    finally:
        context.destroy(linger=0)


def run_source(options: argparse.Namespace) -> dict[str, Any]:
    """A raw pyzmq PUB with feedsvc's queue settings: from --send-at to --end-at, --rate ticks/s
    over SYMBOLS symbols round robin, each frame a pre-built template with seq and ts filled in."""
    publisher_defaults = PublisherConfig()
    context = zmq.Context()
    try:
        pub = context.socket(zmq.PUB)
        pub.setsockopt(zmq.LINGER, 0)
        pub.setsockopt(zmq.SNDHWM, publisher_defaults.sndhwm)
        pub.setsockopt(zmq.SNDBUF, publisher_defaults.sndbuf)
        pub.bind(options.bind)
        epoch = time.time_ns()
        templates = [tick_template(symbol, epoch) for symbol in synthetic_symbols(SYMBOLS)]
        seqs = [0] * SYMBOLS
        send, time_ns, monotonic = pub.send, time.time_ns, time.monotonic
        timing = _ready_then_timing()
        send_at, start_at, end_at, rate = (
            timing["send_at"],
            timing["start_at"],
            timing["end_at"],
            options.rate,
        )
        time.sleep(max(0.0, send_at - monotonic()))
        sent = 0
        sent_at_start: int | None = None
        while (now := monotonic()) < end_at:
            if sent_at_start is None and now >= start_at:
                sent_at_start = sent
            backlog = int((now - send_at) * rate) - sent
            if backlog <= 0:
                time.sleep(SOURCE_IDLE_S)
                continue
            for _ in range(min(backlog, MAX_BURST)):
                symbol = sent % SYMBOLS
                seqs[symbol] += 1
                send(templates[symbol] % (seqs[symbol], time_ns()))
                sent += 1
        window_s = end_at - start_at
        return {
            "sent": sent,
            "rate_in_window": (sent - (sent_at_start or 0)) / window_s,
            "cpu_s": time.process_time(),
        }
    finally:
        context.destroy(linger=0)


def run_role(options: argparse.Namespace) -> int:
    result = run_subscriber(options) if options.role == "subscriber" else run_source(options)
    options.out.write_text(json.dumps(result))
    return 0


def build_role_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="a role process of the relay benchmark")
    parser.add_argument("--role", choices=("subscriber", "source"), required=True)
    parser.add_argument("--endpoints")
    parser.add_argument("--bind")
    parser.add_argument("--rate", type=float)
    parser.add_argument("--out", type=Path, required=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_role(build_role_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
