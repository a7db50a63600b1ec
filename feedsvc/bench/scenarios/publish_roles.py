"""The publish benchmark's hidden roles, each in its own process: the subscriber that counts what
it receives in a window (for feedsvc and for the baseline alike) and the raw pyzmq PUB baseline.

Both print one JSON document on stdout, which the orchestrator (feedsvc.bench.scenarios.publish)
reads; their stderr goes to the run's log for people.
"""

from __future__ import annotations

import argparse
import json
import signal
import time
from collections.abc import Callable
from typing import Any, Final

import zmq

from feedsvc.bench.procs import machine_cpu_seconds, process_cpu_seconds
from feedsvc.protocol.ticks import CONTROL_PREFIX, decode_frame
from feedsvc.server.synthetic import synthetic_symbols

FRAME_BYTES: Final = 100
COUNTER_DIGITS: Final = 10
# Frames the baseline cycles through; the counter in each frame is its index in this ring. Large
# enough that the messages in flight (HWMs + kernel buffers) stay far below half of it.
RING_SIZE: Final = 2**17
# Baseline sends between two clock samples (and stop checks).
SEND_CHUNK: Final = 4_096
# Frames received between two clock checks in the subscriber's counting loop.
RECV_BATCH: Final = 256
# Same queue settings for both publishers, and feedsvc's defaults: a fair comparison.
DEFAULT_HWM: Final = 10_000
SNDBUF_BYTES: Final = 262_144
CONTROL_TOPIC_BYTE: Final = ord(CONTROL_PREFIX)
FIRST_MESSAGE_TIMEOUT_S: Final = 30.0
# A recv that waits this long means the publisher stalled or died.
RECV_TIMEOUT_MS: Final = 3_000
# Longest time spent finding every key's position at either edge of the window.
BOUNDARY_TIMEOUT_S: Final = 3.0
POLL_INTERVAL_S: Final = 0.1

Position = Callable[[bytes], tuple[str, int] | None]


def raw_frames(symbol_count: int) -> list[bytes]:
    """The baseline's pre-encoded frames: topic, space, padding, a counter; FRAME_BYTES each."""
    topics = [symbol.encode() + b" " for symbol in synthetic_symbols(symbol_count)]
    frames = []
    for index in range(RING_SIZE):
        topic = topics[index % symbol_count]
        padding = b"." * (FRAME_BYTES - len(topic) - COUNTER_DIGITS)
        frames.append(topic + padding + b"%0*d" % (COUNTER_DIGITS, index))
    return frames


def raw_position(frame: bytes) -> tuple[str, int] | None:
    """Baseline frame -> (key, position): one global counter."""
    return "counter", int(frame[-COUNTER_DIGITS:])


def feedsvc_position(frame: bytes) -> tuple[str, int] | None:
    """feedsvc frame -> (symbol, seq); None for control messages (heartbeats)."""
    if frame[0] == CONTROL_TOPIC_BYTE:
        return None
    symbol, tick = decode_frame(frame)
    return symbol, tick["seq"]


def _cpu_delta(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else end - start


def count_window(
    socket: zmq.Socket,
    position: Position,
    expected_keys: int,
    warmup_s: float,
    duration_s: float,
    publisher_pid: int,
) -> dict[str, Any]:
    """Warm up, find every key's first position, count frames for `duration_s`, then find every
    key's first position after the window; CPU of this process, the publisher and the machine
    over the window."""
    recv, monotonic = socket.recv, time.monotonic
    first_deadline = monotonic() + FIRST_MESSAGE_TIMEOUT_S
    while not socket.poll(int(POLL_INTERVAL_S * 1000)):
        if monotonic() > first_deadline:
            return {"error": f"no message within {FIRST_MESSAGE_TIMEOUT_S:.0f} s"}
    warmup_end = monotonic() + warmup_s
    while monotonic() < warmup_end:
        for _ in range(RECV_BATCH):
            recv()

    window_start = monotonic()
    cpu_start, publisher_cpu_start = time.process_time(), process_cpu_seconds(publisher_pid)
    machine_start = machine_cpu_seconds()
    start_by_key: dict[str, int] = {}
    received = sampled_bytes = sampled = 0
    edge_deadline = window_start + BOUNDARY_TIMEOUT_S
    while len(start_by_key) < expected_keys and monotonic() < edge_deadline:
        frame = recv()
        found = position(frame)
        if found is None:
            continue
        start_by_key.setdefault(found[0], found[1])
        received += 1
        sampled += 1
        sampled_bytes += len(frame)

    # Count only: decoding here would make the subscriber, not the publisher, the limit.
    window_end = window_start + duration_s
    next_mark = window_start + 1.0
    marks: list[tuple[float, int]] = [(window_start, 0)]
    now = monotonic()
    while now < window_end:
        control = 0
        for _ in range(RECV_BATCH):
            if recv()[0] == CONTROL_TOPIC_BYTE:
                control += 1
        received += RECV_BATCH - control
        now = monotonic()
        if now >= next_mark:
            marks.append((now, received))
            next_mark += 1.0
    window_end = now
    cpu_end, publisher_cpu_end = time.process_time(), process_cpu_seconds(publisher_pid)
    machine_end = machine_cpu_seconds()
    marks.append((window_end, received))

    # The first position after the window, per key (not counted as received).
    end_by_key: dict[str, int] = {}
    edge_deadline = window_end + BOUNDARY_TIMEOUT_S
    while len(end_by_key) < len(start_by_key) and monotonic() < edge_deadline:
        found = position(recv())
        if found is not None and found[0] in start_by_key:
            end_by_key.setdefault(found[0], found[1])

    machine_busy = machine_steal = None
    if machine_start is not None and machine_end is not None:
        machine_busy = machine_end[0] - machine_start[0]
        machine_steal = machine_end[1] - machine_start[1]
    return {
        "window_start": window_start,
        "window_end": window_end,
        "received": received,
        "marks": marks,
        "start_by_key": start_by_key,
        "end_by_key": end_by_key,
        "edges_complete": len(start_by_key) == expected_keys
        and len(end_by_key) == len(start_by_key),
        "mean_frame_bytes": sampled_bytes / sampled if sampled else None,
        "subscriber_cpu_s": cpu_end - cpu_start,
        "publisher_cpu_s": _cpu_delta(publisher_cpu_start, publisher_cpu_end),
        "machine_busy_cpu_s": machine_busy,
        "machine_steal_cpu_s": machine_steal,
    }


def run_subscriber(args: argparse.Namespace) -> int:
    """Role: one SUB socket; prints its counts as one JSON line on stdout."""
    context = zmq.Context()
    socket = context.socket(zmq.SUB)
    socket.setsockopt(zmq.RCVHWM, args.hwm)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.RCVTIMEO, RECV_TIMEOUT_MS)
    socket.setsockopt(zmq.SUBSCRIBE, b"")
    socket.connect(args.endpoint)
    is_raw = args.kind == "baseline"
    try:
        result = count_window(
            socket,
            raw_position if is_raw else feedsvc_position,
            1 if is_raw else args.symbols,
            args.warmup,
            args.duration,
            args.publisher_pid,
        )
    except zmq.Again:
        result = {"error": f"the publisher went quiet for {RECV_TIMEOUT_MS} ms"}
    finally:
        socket.close(linger=0)
        context.term()
    print(json.dumps(result))
    return 0


def run_raw_publisher(args: argparse.Namespace) -> int:
    """Role: the baseline PUB; sends until SIGTERM (or --max-run), then prints its send counts
    over time as JSON on stdout."""
    stop_requested = False

    def request_stop(_signum: int, _frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGTERM, request_stop)
    frames = raw_frames(args.symbols)
    chunks = [frames[index : index + SEND_CHUNK] for index in range(0, RING_SIZE, SEND_CHUNK)]
    context = zmq.Context(io_threads=1)
    socket = context.socket(zmq.PUB)
    socket.setsockopt(zmq.SNDHWM, args.hwm)
    socket.setsockopt(zmq.SNDBUF, SNDBUF_BYTES)
    socket.setsockopt(zmq.LINGER, 0)
    socket.bind(args.endpoint)
    send, monotonic = socket.send, time.monotonic
    samples: list[tuple[float, int]] = [(monotonic(), 0)]
    deadline = samples[0][0] + args.max_run
    sent = 0
    try:
        while not stop_requested:
            for chunk in chunks:
                for frame in chunk:
                    send(frame)
                sent += SEND_CHUNK
                now = monotonic()
                samples.append((now, sent))
                if stop_requested or now > deadline:
                    stop_requested = True
                    break
    finally:
        socket.close(linger=0)
        context.term()
    print(json.dumps({"samples": samples}))
    return 0
