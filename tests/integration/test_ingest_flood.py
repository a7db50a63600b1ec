"""A real `feedsvc serve` whose ingest socket is flooded with garbage while a feed handler sends
valid ticks: subscribers still get every valid tick, in order, and every garbage tick is counted.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson
import zmq

from feedsvc.protocol.ticks import REJECT_REASONS
from tests.conftest import (
    ServeProcess,
    free_tcp_port,
    http_get,
    metric_samples,
    serve_settings,
    wait_for_first_message,
)

Serve = Callable[..., ServeProcess]

SYMBOLS = ("FLD0", "FLD1", "FLD2", "FLD3")
VALID_RATE = 2_000  # ticks/s
VALID_COUNT = 6_000  # 3 s at VALID_RATE; under publisher.sndhwm, so no drop is allowed
MAX_MESSAGE_BYTES = 4_096
# libzmq disconnects a peer sending more than 4x max_message_bytes (ZMQ_MAXMSGSIZE): never read.
BEYOND_HARD_LIMIT_BYTES = 5 * MAX_MESSAGE_BYTES
FLOOD_FRAMES_PER_MS = 10
FLOOD_MAX_FRAMES = 60_000
FLOOD_MAX_S = 15.0
RECEIVE_TIMEOUT_S = 25.0
GOOD = {"sym": "FLD0", "bid": 10.0, "ask": 10.01, "bid_size": 100, "ask_size": 200}


def _garbage_catalogue(rng: random.Random) -> list[tuple[bytes, Counter[str]]]:
    """Frames no valid tick can come out of, each with the rejections the ingest contract says
    it must cause (README, schemas/ingest.schema.json): one per frame that is too large or not
    JSON, one per element otherwise. Wrong-typed ticks use the valid feed's own symbols."""
    encoded_good = orjson.dumps(GOOD)
    catalogue: list[tuple[bytes, Counter[str]]] = []

    def add(frame: bytes, **reasons: int) -> None:
        assert len(frame) <= MAX_MESSAGE_BYTES or reasons == {"too_large": 1}
        catalogue.append((frame, Counter(reasons)))

    for _ in range(40):
        # 0xff never occurs in UTF-8, so these are never JSON.
        add(b"\xff" + rng.randbytes(rng.randint(0, 600)), not_json=1)
    for cut in range(1, len(encoded_good)):
        add(encoded_good[:cut], not_json=1)
    add(encoded_good.replace(b"10.0", b"NaN", 1), not_json=1)
    add(encoded_good + b"}", not_json=1)
    add(b"[" * 2_000 + b"]" * 2_000, not_json=1)  # deeper than the JSON parser's limit
    add(b"", not_json=1)
    for wrong, reason in [
        ({"bid": "10.0"}, "bad_price"),
        ({"ask": None}, "bad_price"),
        ({"bid": 1e308 * 10}, "bad_price"),  # orjson writes infinity as null
        ({"bid_size": -1}, "bad_size"),
        ({"ask_size": True}, "bad_size"),
        ({"sym": "_hb"}, "bad_symbol"),
        ({"sym": "FLD0 X"}, "bad_symbol"),
        ({"sym": 7}, "bad_symbol"),
        ({"sym": "F" * 65}, "bad_symbol"),
        ({"venue": 5}, "bad_optional_field"),
        ({"ts_src": 1.5}, "bad_optional_field"),
    ]:
        for sym in SYMBOLS:
            add(orjson.dumps({**GOOD, "sym": sym, **wrong}), **{reason: 1})
    for missing in ("sym", "bid", "ask", "bid_size", "ask_size"):
        add(orjson.dumps({k: v for k, v in GOOD.items() if k != missing}), missing_field=1)
    for scalar in (42, "FLD0", None, True, 1.5):
        add(orjson.dumps(scalar), not_object=1)
    # Too large: counted once, even a batch of valid ticks (a batch is taken whole or not at all).
    add(b"[" + b"1," * 3_000 + b"1]", too_large=1)
    add(rng.randbytes(10_000), too_large=1)
    add(orjson.dumps([{**GOOD, "sym": sym} for sym in SYMBOLS] * 25), too_large=1)
    # Huge arrays within the limit: every element is a tick and rejected on its own.
    add(orjson.dumps([0] * 2_000), not_object=2_000)
    add(orjson.dumps([[]] * 1_000), not_object=1_000)
    add(orjson.dumps([{"sym": "FLD1"}] * 250), missing_field=250)
    add(orjson.dumps([{**GOOD, "bid_size": -1}] * 50), bad_size=50)
    rng.shuffle(catalogue)
    return catalogue


@dataclass
class FloodResult:
    frames_sent: int = 0
    expected_rejections: Counter[str] = field(default_factory=Counter)
    oversized_sent: int = 0
    error: BaseException | None = None


def _flood(context: zmq.Context, endpoint: str, stop: threading.Event, result: FloodResult) -> None:
    """Send garbage at about FLOOD_FRAMES_PER_MS frames per ms until `stop` (bounded in count
    and time), plus frames beyond the hard limit from a second connection."""
    try:
        catalogue = _garbage_catalogue(random.Random(7))
        garbage = context.socket(zmq.PUSH)
        abuser = context.socket(zmq.PUSH)
        for socket in (garbage, abuser):
            socket.setsockopt(zmq.LINGER, 5_000)
            socket.setsockopt(zmq.SNDTIMEO, 2_000)
            socket.connect(endpoint)
        deadline = time.monotonic() + FLOOD_MAX_S
        while (
            not stop.is_set()
            and result.frames_sent < FLOOD_MAX_FRAMES
            and time.monotonic() < deadline
        ):
            for _ in range(FLOOD_FRAMES_PER_MS):
                frame, rejections = catalogue[result.frames_sent % len(catalogue)]
                garbage.send(frame)
                result.frames_sent += 1
                result.expected_rejections.update(rejections)
            if result.frames_sent % 1_000 == 0 and result.oversized_sent < 10:
                try:
                    abuser.send(
                        random.Random(result.frames_sent).randbytes(BEYOND_HARD_LIMIT_BYTES)
                    )
                    result.oversized_sent += 1
                except zmq.Again:
                    pass  # disconnected and not yet reconnected: that is what the limit does
            time.sleep(0.001)
        garbage.close()  # LINGER: everything sent above is delivered before this returns
        abuser.close(linger=0)
    except BaseException as error:  # reported by the test, not lost in the thread
        result.error = error


@dataclass
class FeedResult:
    bids_by_symbol: dict[str, list[float]] = field(default_factory=dict)
    sent: int = 0
    error: BaseException | None = None


def _feed(context: zmq.Context, endpoint: str, done: threading.Event, result: FeedResult) -> None:
    """A well-behaved feed handler: VALID_COUNT ticks at VALID_RATE, alternating single-tick
    frames and batch frames. Each tick's bid is its index, so the subscriber can check order."""
    try:
        push = context.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 5_000)
        push.setsockopt(zmq.SNDTIMEO, 10_000)
        push.connect(endpoint)
        started = time.monotonic()
        step = 0
        while result.sent < VALID_COUNT:
            due = min(VALID_COUNT, int((time.monotonic() - started) * VALID_RATE) + 1)
            ticks = []
            for index in range(result.sent, due):
                sym = SYMBOLS[index % len(SYMBOLS)]
                ticks.append({**GOOD, "sym": sym, "bid": float(index), "ask": index + 0.01})
                result.bids_by_symbol.setdefault(sym, []).append(float(index))
            if ticks and step % 2:
                push.send(orjson.dumps(ticks))
            else:
                for tick in ticks:
                    push.send(orjson.dumps(tick))
            result.sent = due
            step += 1
            time.sleep(0.002)
        push.close()
    except BaseException as error:
        result.error = error
    finally:
        done.set()


def _samples(port: int) -> dict[str, float]:
    """name{labels} -> value from /metrics."""
    status, body = http_get(port, "/metrics")
    assert status == 200
    return metric_samples(body)


def _rejected(samples: dict[str, float]) -> Counter[str]:
    return Counter(
        {
            reason: int(samples.get(f'feedsvc_ticks_rejected_total{{reason="{reason}"}}', 0))
            for reason in (*REJECT_REASONS, "too_many_symbols")
        }
    )


def _start(serve: Serve, publish_endpoint: str) -> tuple[ServeProcess, str, int]:
    ingest_endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    metrics_port = free_tcp_port()
    process = serve(
        *serve_settings([publish_endpoint], "synthetic.enabled=false"),
        f"ingest.endpoint={ingest_endpoint}",
        f"ingest.max_message_bytes={MAX_MESSAGE_BYTES}",
        f"metrics.port={metrics_port}",
    )
    return process, ingest_endpoint, metrics_port


def _subscriber(context: zmq.Context, endpoint: str, process: ServeProcess) -> zmq.Socket:
    subscriber = context.socket(zmq.SUB)
    subscriber.setsockopt(zmq.LINGER, 0)
    subscriber.setsockopt(zmq.RCVHWM, 0)  # the test must not drop: it checks contiguity
    for prefix in (b"FLD", b"_hb "):
        subscriber.setsockopt(zmq.SUBSCRIBE, prefix)
    subscriber.connect(endpoint)
    wait_for_first_message(subscriber, process)  # a heartbeat: subscribed and the service is up
    return subscriber


def test_garbage_flood_on_ingest_loses_no_valid_tick_and_every_reject_is_counted(
    serve: Serve, ipc_endpoint: str, zmq_context: zmq.Context
) -> None:
    """One broken or hostile feed handler flooding the ingest socket cannot cost a trading
    client a single tick from the good feed handler: every valid tick arrives once, in order,
    with per-symbol seq 1..N, and every garbage tick shows up in the rejection counters."""
    process, ingest_endpoint, metrics_port = _start(serve, ipc_endpoint)
    subscriber = _subscriber(zmq_context, ipc_endpoint, process)
    before = _rejected(_samples(metrics_port))

    feed_done = threading.Event()
    flood, feed = FloodResult(), FeedResult()
    threads = [
        threading.Thread(target=_flood, args=(zmq_context, ingest_endpoint, feed_done, flood)),
        threading.Thread(target=_feed, args=(zmq_context, ingest_endpoint, feed_done, feed)),
    ]
    for thread in threads:
        thread.start()

    ticks: list[dict[str, object]] = []
    deadline = time.monotonic() + RECEIVE_TIMEOUT_S
    while len(ticks) < VALID_COUNT and time.monotonic() < deadline:
        if subscriber.poll(100):
            topic, _, payload = subscriber.recv().partition(b" ")
            if not topic.startswith(b"_"):
                ticks.append(orjson.loads(payload))
        if process.popen.poll() is not None:
            break
    for thread in threads:
        thread.join(timeout=FLOOD_MAX_S + 10)
    # Anything beyond the valid ticks (a garbage tick published, a duplicate) would arrive now.
    quiet_until = time.monotonic() + 0.5
    while time.monotonic() < quiet_until:
        if subscriber.poll(50):
            topic, _, payload = subscriber.recv().partition(b" ")
            if not topic.startswith(b"_"):
                ticks.append(orjson.loads(payload))

    assert process.popen.poll() is None, f"feedsvc serve died:\n{process.log}"
    assert flood.error is None and feed.error is None, (flood.error, feed.error)
    assert not any(thread.is_alive() for thread in threads)
    assert feed.sent == VALID_COUNT
    # The flood really ran alongside the feed (about 10 frames per ms for ~3 s).
    assert flood.frames_sent >= 5_000, flood.frames_sent
    assert len(ticks) == VALID_COUNT, f"{len(ticks)} of {VALID_COUNT} valid ticks arrived"
    assert {tick["epoch"] for tick in ticks} == {ticks[0]["epoch"]}
    for sym in SYMBOLS:
        of_symbol = [tick for tick in ticks if tick["sym"] == sym]
        assert [tick["seq"] for tick in of_symbol] == list(range(1, len(of_symbol) + 1)), sym
        assert [tick["bid"] for tick in of_symbol] == feed.bids_by_symbol[sym], sym

    expected = before + flood.expected_rejections
    rejected = _rejected(_samples(metrics_port))
    counting_deadline = time.monotonic() + 15
    while rejected != expected and time.monotonic() < counting_deadline:
        time.sleep(0.2)
        rejected = _rejected(_samples(metrics_port))
    assert rejected == expected, f"counted {dict(rejected)}, sent {dict(expected)}"
    samples = _samples(metrics_port)
    assert samples['feedsvc_ticks_ingested_total{source="ingest"}'] == VALID_COUNT
    assert samples["feedsvc_ticks_published_total"] == VALID_COUNT
    status, body = http_get(metrics_port, "/healthz")
    assert status == 200, body
    assert process.popen.poll() is None
    assert process.terminate() == 0
    assert "Traceback" not in process.log, process.log


# Within orjson.loads' nesting limit (1024) but beyond what orjson.dumps writes (254).
DEEP_EXTRA_FIELD = b"[" * 300 + b"]" * 300


def test_one_deeply_nested_tick_does_not_stop_the_service(
    serve: Serve, ipc_endpoint: str, zmq_context: zmq.Context
) -> None:
    """A single odd frame from a feed handler must not take the publisher down for every
    trading client: the ticks after it are still published."""
    process, ingest_endpoint, metrics_port = _start(serve, ipc_endpoint)
    subscriber = _subscriber(zmq_context, ipc_endpoint, process)
    push = zmq_context.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 2_000)
    push.connect(ingest_endpoint)
    tick = orjson.dumps({**GOOD, "sym": "FLD0"})
    push.send(tick[:-1] + b',"x":' + DEEP_EXTRA_FIELD + b"}")
    push.send(tick)
    received: list[bytes] = []
    deadline = time.monotonic() + 10
    while not received and time.monotonic() < deadline and process.popen.poll() is None:
        if subscriber.poll(100):
            frame = subscriber.recv()
            if frame.startswith(b"FLD0 "):
                received.append(frame)
    assert process.popen.poll() is None, f"feedsvc serve died:\n{process.log[-2000:]}"
    assert received, "the tick after the deep one was not published"
    assert http_get(metrics_port, "/healthz")[0] == 200
