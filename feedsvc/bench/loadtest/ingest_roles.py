"""The worker roles of `feedsvc loadtest --source ingest`: the path a desk runs, feed handler ->
publisher -> subscriber, each a process of its own.

- feed-handler: PUSHes synthetic ticks to the publisher's ingest endpoint at ``--rate``,
  ``--batch`` ticks per frame (one JSON object, or an array), each stamped ``ts_src`` (Unix ns)
  as it is made. After SIGTERM it prints one JSON line: ticks and frames sent.
- relay: the baseline publisher of this mode, a minimal hand-written relay doing what feedsvc's
  hot path does to an ingest frame: decode, per-symbol seq, stamp epoch and ts, encode, one PUB
  frame per tick (feedsvc's wire format, so the same subscriber reads both), and a heartbeat a
  second like feedsvc's. No validation, no limits, no metrics: the least a Python publisher
  can do.
- frame-subscriber: a plain pyzmq SUB reading that wire format, latency from ``ts`` (the
  publisher's stamp) and from ``ts_src`` (the feed handler's): the second is the whole path. It
  says ``ready`` at its first frame, a heartbeat: the orchestrator starts the feed handler only
  then, so the subscriber sees every tick the feed sends.
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Final

import orjson
import zmq

from feedsvc.bench.loadtest.roles import (
    RAW_HWM,
    SubscriberLog,
    announce_ready,
    plain_subscriber,
    print_result,
    read_interval_s,
    stop_on_sigterm,
)
from feedsvc.protocol.ticks import CONTROL_PREFIX, HEARTBEAT_TOPIC, TOPIC_DELIMITER, topic_prefix
from feedsvc.server.pacing import RatePacer
from feedsvc.server.synthetic import SyntheticFeed

# The feed handler's sends wait at most this long for a full socket (the publisher not
# reading); a tick not taken by then is counted as not sent.
FEED_SEND_TIMEOUT_MS: Final = 1_000
FEED_HWM: Final = 100_000
PASS_SLEEP_S: Final = 0.001
RELAY_EPOCH: Final = 1
RELAY_HEARTBEAT_S: Final = 1.0
# Frames the baseline relay takes per wake-up before it looks at its heartbeat again.
RELAY_FRAMES_PER_PASS: Final = 10_000
# At SIGTERM it publishes what is queued: until the queue has been empty this long, at most
# RELAY_DRAIN_S.
RELAY_DRAIN_QUIET_MS: Final = 50
RELAY_DRAIN_S: Final = 5.0
_HEARTBEAT_FRAME: Final = topic_prefix(HEARTBEAT_TOPIC) + b"{}"
_CONTROL_TOPIC_START: Final = CONTROL_PREFIX.encode()


def run_feed_handler(args: argparse.Namespace) -> int:
    """Hidden role: ticks to ``--endpoint`` (the ingest PULL) until SIGTERM."""
    feed = SyntheticFeed(args.symbols, 1)
    batch = max(1, args.batch)
    context = zmq.Context(io_threads=1)
    socket = context.socket(zmq.PUSH)
    socket.setsockopt(zmq.SNDHWM, FEED_HWM)
    socket.setsockopt(zmq.SNDTIMEO, FEED_SEND_TIMEOUT_MS)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(args.endpoint)
    send, dumps, now_ns, monotonic = socket.send, orjson.dumps, time.time_ns, time.monotonic
    start = monotonic()
    pacer = RatePacer(args.rate, start)
    pending: list[dict[str, Any]] = []
    sent = frames = unsent = 0
    try:
        with stop_on_sigterm() as stopped:
            while not stopped():
                due = pacer.due(monotonic())
                if due:
                    for tick in feed.generate(due):
                        tick["ts_src"] = now_ns()
                        pending.append(tick)
                while len(pending) >= batch:
                    chunk = pending[:batch]
                    del pending[:batch]
                    try:
                        send(dumps(chunk[0]) if batch == 1 else dumps(chunk))
                    except zmq.Again:
                        unsent += len(chunk)
                        continue
                    sent += len(chunk)
                    frames += 1
                if not due:
                    time.sleep(min(PASS_SLEEP_S, pacer.seconds_until_next(monotonic())))
    finally:
        socket.close(linger=0)
        context.term()
    print_result({"sent": sent, "frames": frames, "unsent": unsent, "batch": batch})
    return 0


def run_relay(args: argparse.Namespace) -> int:
    """Hidden role: PULL on ``--ingest-endpoint`` -> PUB on ``--endpoint`` until SIGTERM; writes
    a summary file shaped like `feedsvc serve --summary-file`'s."""
    context = zmq.Context(io_threads=1)
    pull = context.socket(zmq.PULL)
    pull.setsockopt(zmq.RCVHWM, FEED_HWM)
    pull.setsockopt(zmq.LINGER, 0)
    pull.bind(args.ingest_endpoint)
    pub = context.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, RAW_HWM)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(args.endpoint)
    recv, send, loads, dumps, now_ns = pull.recv, pub.send, orjson.loads, orjson.dumps, time.time_ns
    # symbol -> [topic prefix, last seq]
    state_by_symbol: dict[str, list[Any]] = {}
    published = 0
    monotonic, next_heartbeat = time.monotonic, 0.0

    def publish_queued() -> bool:
        """Publish the frames queued now (at most RELAY_FRAMES_PER_PASS); False once none is."""
        nonlocal published
        for _ in range(RELAY_FRAMES_PER_PASS):
            try:
                frame = recv(zmq.NOBLOCK)
            except zmq.Again:
                return False
            decoded = loads(frame)
            for tick in decoded if isinstance(decoded, list) else (decoded,):
                symbol = tick["sym"]
                state = state_by_symbol.get(symbol)
                if state is None:
                    state = state_by_symbol[symbol] = [topic_prefix(symbol), 0]
                state[1] += 1
                tick["seq"] = state[1]
                tick["epoch"] = RELAY_EPOCH
                tick["ts"] = now_ns()
                send(state[0] + dumps(tick))
                published += 1
        return True

    try:
        with stop_on_sigterm() as stopped:
            while not stopped():
                if monotonic() >= next_heartbeat:
                    send(_HEARTBEAT_FRAME)
                    next_heartbeat = monotonic() + RELAY_HEARTBEAT_S
                if pull.poll(200):
                    publish_queued()
            # As `feedsvc serve` does at SIGTERM: what was taken in is published, so the
            # baseline's counts compare with serve's (the feed stopped first: the queue is finite).
            drain_deadline = monotonic() + RELAY_DRAIN_S
            while monotonic() < drain_deadline:
                if not publish_queued() and not pull.poll(RELAY_DRAIN_QUIET_MS):
                    break
    finally:
        pull.close(linger=0)
        pub.close(linger=0)
        context.term()
    args.summary_file.write_bytes(orjson.dumps({"published": published, "mirror": {}}))
    return 0


def run_frame_subscriber(args: argparse.Namespace) -> int:
    """Hidden role: a plain SUB to everything on ``--endpoint`` reading feedsvc frames; prints
    one JSON result after SIGTERM (with the ts_src latencies)."""
    log = SubscriberLog(read_interval_s(args), source_latency=True)
    observe, pace, now_ns, loads = log.observe, log.pace, time.time_ns, orjson.loads
    with plain_subscriber(args.endpoint) as socket, stop_on_sigterm() as stopped:
        recv = socket.recv
        ready = False
        while not stopped():
            if not socket.poll(200):
                continue
            frame = recv()
            received_ns = now_ns()
            if not ready:
                announce_ready()
                ready = True
            if frame.startswith(_CONTROL_TOPIC_START):
                continue  # heartbeats and markers
            tick = loads(frame[frame.index(TOPIC_DELIMITER) + 1 :])
            observe(
                received_ns, tick["sym"], tick["epoch"], tick["seq"], tick["ts"], tick["ts_src"]
            )
            pace()
    print_result(log.sequence_result())
    return 0


INGEST_ROLES: Final = {
    "feed-handler": run_feed_handler,
    "relay": run_relay,
    "frame-subscriber": run_frame_subscriber,
}
