"""A real `feedsvc serve` against peers that send what it must refuse: the two messages that used
to stop the service, subscriptions and connections beyond their bounds, addresses outside
allowed_networks, sync clients that never read. Each time a plain SUB keeps receiving contiguous
seqs and the refusal is counted."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import pytest
import zmq

from feedsvc.bench import hostile
from tests.conftest import (
    ServeProcess,
    free_tcp_port,
    http_get,
    metric_samples,
    serve_settings,
    wait_for,
    wait_for_first_message,
)

Serve = Callable[..., ServeProcess]
RATE = 2_000  # synthetic ticks/s
SYMBOLS = 20
GOOD = {"bid": 10.0, "ask": 10.01, "bid_size": 100, "ask_size": 200}


class Feed:
    """A service with tcp publisher, ingest and sync endpoints and a metrics port."""

    def __init__(self, serve: Serve, *extra: str) -> None:
        self.publisher = f"tcp://127.0.0.1:{free_tcp_port()}"
        self.ingest = f"tcp://127.0.0.1:{free_tcp_port()}"
        self.sync = f"tcp://127.0.0.1:{free_tcp_port()}"
        self.metrics_port = free_tcp_port()
        settings = serve_settings([self.publisher])
        self.process = serve(
            *settings,
            f"ingest.endpoint={self.ingest}",
            f"sync.endpoint={self.sync}",
            "recovery.endpoint=",
            f"metrics.port={self.metrics_port}",
            f"synthetic.rate={RATE}",
            f"synthetic.symbols={SYMBOLS}",
            *extra,
        )

    def samples(self) -> dict[str, float]:
        return metric_samples(http_get(self.metrics_port, "/metrics")[1])

    def health(self) -> dict[str, object]:
        return orjson.loads(http_get(self.metrics_port, "/healthz")[1])


class Victim:
    """feedsvc.bench.hostile's victim SUB (per-symbol seq checks in its own thread), read in
    phases."""

    def __init__(self, feed: Feed) -> None:
        self._victim = hostile.Victim(feed.publisher)
        self._victim.start()
        if not self._victim.wait_receiving(20):
            self._victim.stop()
            pytest.fail(f"the victim received nothing:\n{feed.process.log}")
        self._victim.mark()

    def read(self, seconds: float) -> int:
        """Ticks received within the next `seconds`."""
        before = self._victim.received
        time.sleep(seconds)
        return self._victim.received - before

    def finish(self) -> dict[str, Any]:
        """The whole window's report (gaps, missed, per-second counts)."""
        return self._victim.stop()


@pytest.fixture
def context() -> Iterator[zmq.Context]:
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


@contextmanager
def _socket(
    context: zmq.Context, kind: int, endpoint: str, linger_ms: int = 0
) -> Iterator[zmq.Socket]:
    sock = context.socket(kind)
    sock.connect(endpoint)
    try:
        yield sock
    finally:
        sock.close(linger=linger_ms)


def _tick(symbol: str, **extra: object) -> dict[str, object]:
    return {"sym": symbol, **GOOD, **extra}


def test_the_two_messages_that_stopped_the_service_are_refused_and_the_feed_goes_on(
    serve: Serve, context: zmq.Context
) -> None:
    feed = Feed(serve)
    victim = Victim(feed)
    victim.read(0.5)
    # 400 numbers, then a valid-looking tick whose pass-through field nests 300 deep: the nesting
    # check once skipped such a frame and orjson could not encode the tick in the hot path.
    deep = b"[" * 300 + b"]" * 300
    nested_tick = (
        b"["
        + b",".join(str(number).encode() for number in range(400))
        + b',{"sym":"DEEP","bid":1,"ask":1,"bid_size":1,"ask_size":1,"x":'
        + deep
        + b"}]"
    )
    # A symbols list nested 1000 deep: the bad_symbol error's detail once recursed on it.
    nested_sync = (
        b'{"op":"snapshot","client":"c1","marker":"m1","symbols":['
        + b"[" * 1000
        + b"]" * 1000
        + b"]}"
    )
    with (
        _socket(context, zmq.PUSH, feed.ingest) as push,
        _socket(context, zmq.REQ, feed.sync) as req,
    ):
        push.send(nested_tick)
        req.send(nested_sync)
        assert req.poll(10_000), "no reply to the nested sync request"
        reply = orjson.loads(req.recv())
        assert victim.read(1.5) > RATE * 0.5
    assert reply["ok"] is False and reply["error"] == "bad_symbol"
    assert len(reply["detail"]) < 200
    assert feed.process.popen.poll() is None, feed.process.log
    assert victim.finish()["missed"] == 0
    wait_for(
        lambda: (
            feed.samples().get('feedsvc_ticks_rejected_total{reason="bad_optional_field"}') == 1
        ),
        10,
        "the nested tick counted as bad_optional_field",
        lambda: feed.process.log,
    )
    samples = feed.samples()
    assert samples['feedsvc_ticks_rejected_total{reason="not_object"}'] == 400
    assert samples['feedsvc_sync_requests_rejected_total{reason="bad_symbol"}'] == 1
    assert samples['feedsvc_internal_errors_total{where="ingest"}'] == 0
    assert "Traceback" not in feed.process.log
    assert feed.process.terminate() == 0


def test_a_connection_beyond_its_subscription_bound_is_closed_and_counted(
    serve: Serve, context: zmq.Context
) -> None:
    feed = Feed(
        serve,
        "publisher.max_subscriptions_per_connection=50",
        "publisher.max_subscriptions=200",
    )
    victim = Victim(feed)
    with _socket(context, zmq.SUB, feed.publisher) as greedy:
        for index in range(80):
            greedy.setsockopt(zmq.SUBSCRIBE, f"P{index:04d}".encode())
        wait_for(
            lambda: (
                feed.samples().get(
                    'feedsvc_connections_refused_total{reason="too_many_subscriptions",'
                    'socket="publisher"}',
                    0,
                )
                >= 1
            ),
            10,
            "the greedy SUB's connection refused",
        )
        assert victim.read(1.0) > RATE * 0.5
    # A subscription longer than any topic: libzmq disconnects its sender before storing it.
    with _socket(context, zmq.SUB, feed.publisher) as long_prefix:
        long_prefix.setsockopt(zmq.SUBSCRIBE, b"L" * 1_000)
        assert victim.read(1.0) > RATE * 0.5
        assert not long_prefix.poll(200)
    # The bound is per connection: a fresh SUB within it gets its ticks.
    with _socket(context, zmq.SUB, feed.publisher) as modest:
        modest.setsockopt(zmq.SUBSCRIBE, b"SYN0001 ")
        assert modest.poll(5_000) and modest.recv().startswith(b"SYN0001 ")
    assert victim.finish()["missed"] == 0
    assert feed.samples()["feedsvc_subscriptions"] <= 200


def test_connections_beyond_the_cap_are_closed_as_they_arrive(
    serve: Serve, context: zmq.Context
) -> None:
    feed = Feed(serve, "publisher.max_connections=4")
    victim = Victim(feed)
    host, port = feed.publisher.removeprefix("tcp://").split(":")
    raw = [socket.create_connection((host, int(port)), timeout=5) for _ in range(10)]
    try:
        wait_for(
            lambda: (
                feed.samples().get(
                    'feedsvc_connections_refused_total{reason="too_many_connections",'
                    'socket="publisher"}',
                    0,
                )
                >= 7
            ),
            10,
            "7 of the 10 raw connections refused (the victim holds one slot)",
        )
        assert feed.health()["connections"]["publisher"] == 4  # type: ignore[index]
        assert victim.read(1.0) > RATE * 0.5
    finally:
        for connection in raw:
            connection.close()
    # The slots come back when they leave.
    wait_for(
        lambda: feed.health()["connections"]["publisher"] == 1,  # type: ignore[index]
        10,
        "only the victim connected",
    )
    with _socket(context, zmq.SUB, feed.publisher) as late:
        late.setsockopt(zmq.SUBSCRIBE, b"SYN")
        assert late.poll(5_000)
    assert victim.finish()["missed"] == 0
    assert feed.health()["fds"]["open"] > 0  # type: ignore[index]


def test_allowed_networks_refuse_other_addresses_before_the_handshake(
    serve: Serve, context: zmq.Context, ipc_endpoint: str
) -> None:
    tcp = f"tcp://127.0.0.1:{free_tcp_port()}"
    metrics_port = free_tcp_port()
    process = serve(
        *serve_settings([ipc_endpoint, tcp]),
        f"metrics.port={metrics_port}",
        f"synthetic.rate={RATE}",
        "publisher.allowed_networks=[10.0.0.0/8]",
    )
    with (
        _socket(context, zmq.SUB, ipc_endpoint) as local,
        _socket(context, zmq.SUB, tcp) as outsider,
    ):
        local.setsockopt(zmq.SUBSCRIBE, b"")
        outsider.setsockopt(zmq.SUBSCRIBE, b"")
        wait_for_first_message(local, process)  # ipc is not filtered (file permissions guard it)
        assert not outsider.poll(1_500), "127.0.0.1 is outside 10.0.0.0/8 but got a frame"
    samples = metric_samples(http_get(metrics_port, "/metrics")[1])
    assert (
        samples[
            'feedsvc_connections_refused_total{reason="network_not_allowed",socket="publisher"}'
        ]
        >= 1
    )
    endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    allowed = serve(
        *serve_settings([endpoint]), "publisher.allowed_networks=[10.0.0.0/8, 127.0.0.0/8]"
    )
    with _socket(context, zmq.SUB, endpoint) as insider:
        insider.setsockopt(zmq.SUBSCRIBE, b"")
        wait_for_first_message(insider, allowed)


def test_snapshot_replies_held_by_clients_that_never_read_are_bounded(
    serve: Serve, context: zmq.Context
) -> None:
    feed = Feed(serve, "sync.max_inflight_bytes=3145728", "sync.max_snapshot_bytes=4194304")
    victim = Victim(feed)
    # 200 symbols of 8 KB each: every full snapshot is about 1.6 MB.
    padding = "x" * 8_000
    with _socket(context, zmq.PUSH, feed.ingest, linger_ms=5_000) as push:
        for index in range(200):
            push.send(orjson.dumps(_tick(f"BIG{index:03d}", note=padding)))
    wait_for(lambda: feed.samples()["feedsvc_symbols"] >= SYMBOLS + 200, 10, "big symbols in")
    hoarders = []
    try:
        for _ in range(12):
            hoarder = context.socket(zmq.DEALER)
            hoarder.setsockopt(zmq.LINGER, 0)
            hoarder.setsockopt(zmq.RCVBUF, 4_096)  # fills at once: the replies stay queued
            hoarder.setsockopt(zmq.RCVHWM, 1)
            hoarder.connect(feed.sync)
            hoarders.append(hoarder)
        for index, hoarder in enumerate(hoarders):
            for attempt in range(3):
                request = {"op": "snapshot", "client": f"h{index}", "marker": f"h{index}x{attempt}"}
                hoarder.send_multipart([b"", orjson.dumps({**request, "symbols": None})])
        wait_for(
            lambda: feed.samples()['feedsvc_sync_requests_rejected_total{reason="busy"}'] >= 1,
            15,
            "a snapshot refused as busy while the hoarders hold the budget",
        )
        assert feed.samples()["feedsvc_sync_inflight_bytes"] <= 3_145_728
        assert victim.read(1.0) > RATE * 0.5
    finally:
        for hoarder in hoarders:
            hoarder.close(linger=0)
    # Gone peers release what libzmq held for them: a snapshot is served again.
    with _socket(context, zmq.REQ, feed.sync) as req:

        def served() -> bool:
            req.send(orjson.dumps({"op": "snapshot", "client": "c", "marker": "ok1"}))
            assert req.poll(5_000)
            return orjson.loads(req.recv())["ok"] is True

        wait_for(served, 15, "a snapshot served after the hoarders left")
    assert victim.finish()["missed"] == 0
    assert feed.process.popen.poll() is None
