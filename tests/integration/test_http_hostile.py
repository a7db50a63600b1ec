"""Hostile HTTP clients on the metrics port cannot stop the feed: slowloris, resets, garbage and
more connections than allowed are refused and counted, while ticks, /healthz and SIGTERM work."""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
import zmq
from prometheus_client.core import GaugeMetricFamily, Metric

from feedsvc.config import load_config
from feedsvc.server.observe.metrics import MetricsServer
from feedsvc.server.service import Service
from tests.conftest import (
    ServeProcess,
    free_tcp_port,
    http_get,
    metric_samples,
    serve_settings,
    subscribed_probe,
    wait_for,
)

Serve = Callable[..., ServeProcess]

RATE = 5000
# The last slowloris peers connect 1.5 s in; the server's 5 s request-head deadline then ends
# them before the attack does.
ATTACK_S = 7.0
TRICKLE_INTERVAL_S = 0.5
SLOWLORIS_REQUEST = b"GET /metrics HTTP/1.1\r\nHost: feedsvc\r\nX-Slow: " + b"a" * 64
FULL_REQUEST = b"GET /metrics HTTP/1.1\r\nHost: feedsvc\r\n\r\n"
GARBAGE_BYTES = 20_000
# (start s into the attack, kind, connections per batch, batches, s between batches). Small
# batches, so that a /healthz connection is not among the oldest 32 being evicted. Slowloris
# last: a connection beyond 32 evicts the oldest slow one, so the last slow ones stay to time out.
ATTACK_PLAN = (
    (0.0, "reset", 25, 12, 0.1),
    (0.05, "too_large", 20, 5, 0.2),
    (0.1, "bad_request", 20, 5, 0.2),
    (0.3, "slowloris", 25, 20, 0.06),
)
HEALTHZ_LIMIT_S = 2.0


def _rejected(samples: dict[str, float], reason: str) -> float:
    return samples.get(f'feedsvc_http_requests_rejected_total{{reason="{reason}"}}', 0.0)


@dataclass(eq=False)  # compared and hashed by identity: peers live in sets
class _Peer:
    kind: str
    sock: socket.socket
    connected: bool = False
    sent: int = 0
    payload: bytes = b""


@dataclass
class HostileClients:
    """Opens the connections of ATTACK_PLAN from one thread with non-blocking sockets; every
    socket is closed by the end of run()."""

    port: int
    opened: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def run(self, duration_s: float, stop: threading.Event) -> None:
        selector = selectors.DefaultSelector()
        peers: set[_Peer] = set()
        slowloris: list[_Peer] = []
        started = time.monotonic()
        schedule = sorted(
            (started + offset + index * every, kind, count)
            for offset, kind, count, batches, every in ATTACK_PLAN
            for index in range(batches)
        )
        next_trickle = started
        try:
            while not stop.is_set() and time.monotonic() - started < duration_s:
                now = time.monotonic()
                while schedule and schedule[0][0] <= now:
                    _, kind, count = schedule.pop(0)
                    for _ in range(count):
                        peers.add(self._open(selector, kind))
                for key, _events in selector.select(timeout=0.02):
                    peer: _Peer = key.data
                    if not self._advance(selector, peer, slowloris):
                        self._drop(selector, peers, peer)
                if time.monotonic() >= next_trickle:
                    next_trickle += TRICKLE_INTERVAL_S
                    for peer in list(slowloris):
                        if not self._trickle(peer):
                            slowloris.remove(peer)
                            self._drop(selector, peers, peer)
        except Exception as error:  # reported by the test instead of dying silently
            self.errors.append(f"{type(error).__name__}: {error}")
        finally:
            for peer in peers:
                peer.sock.close()
            selector.close()

    def _open(self, selector: selectors.BaseSelector, kind: str) -> _Peer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", self.port))
        peer = _Peer(kind, sock, payload=_payload(kind))
        selector.register(sock, selectors.EVENT_WRITE, peer)
        self.opened[kind] = self.opened.get(kind, 0) + 1
        return peer

    def _advance(
        self, selector: selectors.BaseSelector, peer: _Peer, slowloris: list[_Peer]
    ) -> bool:
        """The next step of a peer whose socket is writable; False when it is done."""
        if not peer.connected:
            if peer.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                return False
            peer.connected = True
        if peer.kind == "slowloris":
            selector.unregister(peer.sock)  # from now on it is written to on the trickle clock
            if not self._trickle(peer):
                return False
            slowloris.append(peer)
            return True
        try:
            peer.sent += peer.sock.send(peer.payload[peer.sent :])
        except OSError:
            return False  # the server closed it already: that is what it should do
        if peer.kind == "reset":
            # SO_LINGER 0: close() sends RST instead of FIN, right after the request.
            peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return False
        return peer.sent < len(peer.payload)

    @staticmethod
    def _trickle(peer: _Peer) -> bool:
        if peer.sent >= len(peer.payload):
            return True
        try:
            peer.sent += peer.sock.send(peer.payload[peer.sent : peer.sent + 1])
        except OSError:
            return False
        return True

    @staticmethod
    def _drop(selector: selectors.BaseSelector, peers: set[_Peer], peer: _Peer) -> None:
        with contextlib.suppress(KeyError, ValueError):
            selector.unregister(peer.sock)
        peers.discard(peer)
        peer.sock.close()


def _payload(kind: str) -> bytes:
    if kind == "slowloris":
        return SLOWLORIS_REQUEST
    if kind == "reset":
        return FULL_REQUEST
    garbage = os.urandom(GARBAGE_BYTES).replace(b"\r", b"?")
    if kind == "too_large":
        return garbage  # no end of head at all
    return b"\x16\x03\x01\x02\x00 not http\r\n\r\n" + garbage


@dataclass
class TickReceiver:
    """Reads every frame of a SUB socket in its own thread: per-symbol gaps and publish times."""

    subscriber: zmq.Socket
    publish_ts_ns: list[int] = field(default_factory=list)
    last_seq: dict[str, int] = field(default_factory=dict)
    gaps: list[tuple[str, int, int]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self, limit_s: float) -> None:
        deadline = time.monotonic() + limit_s
        subscriber = self.subscriber
        while not self.stop.is_set() and time.monotonic() < deadline:
            if not subscriber.poll(100):
                continue
            for _ in range(10_000):
                try:
                    frame = subscriber.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                topic, _, body = frame.partition(b" ")
                if topic.startswith(b"_"):
                    continue
                tick = orjson.loads(body)
                symbol, seq = tick["sym"], tick["seq"]
                previous = self.last_seq.get(symbol)
                if previous is not None and seq != previous + 1:
                    self.gaps.append((symbol, previous, seq))
                self.last_seq[symbol] = seq
                self.publish_ts_ns.append(tick["ts"])

    def published_between(self, start_ns: int, end_ns: int) -> int:
        return sum(1 for ts in self.publish_ts_ns if start_ns <= ts <= end_ns)


def _timed_healthz(port: int) -> tuple[int, float]:
    started = time.monotonic()
    status, _ = http_get(port, "/healthz")
    return status, time.monotonic() - started


def test_hostile_http_clients_do_not_stop_the_feed(
    serve: Serve, ipc_endpoint: str, zmq_context: zmq.Context
) -> None:
    port = free_tcp_port()
    process = serve(
        *serve_settings([ipc_endpoint], f"synthetic.rate={RATE}", f"metrics.port={port}")
    )
    subscriber = zmq_context.socket(zmq.SUB)
    # Deep enough that this test's own GIL contention never drops a tick on our side.
    subscriber.setsockopt(zmq.RCVHWM, 1_000_000)
    subscriber.setsockopt(zmq.LINGER, 0)
    subscriber.setsockopt(zmq.SUBSCRIBE, b"")
    subscriber.connect(ipc_endpoint)
    # Both SUBs stay connected until the service has stopped (zmq_context closes them): this
    # test is about the HTTP side, and a subscriber leaving is another test's subject.
    _probe = subscribed_probe(zmq_context, ipc_endpoint, process, b"_hb ")
    wait_for(lambda: http_get(port, "/healthz")[0] == 200, 10, "/healthz is 200 before")
    receiver = TickReceiver(subscriber)
    receiving = threading.Thread(target=receiver.run, args=(ATTACK_S + 30,), daemon=True)
    receiving.start()
    time.sleep(0.5)  # the receiver is past the ticks queued before it started

    attack = HostileClients(port)
    stop_attack = threading.Event()
    attacking = threading.Thread(target=attack.run, args=(ATTACK_S, stop_attack), daemon=True)
    healthz: list[tuple[int, float]] = []
    attack_start_ns = time.time_ns()
    attacking.start()
    try:
        for _ in range(int(ATTACK_S) - 1):
            time.sleep(0.8)
            healthz.append(_timed_healthz(port))
        attacking.join(timeout=ATTACK_S + 10)
    finally:
        stop_attack.set()
        attacking.join(timeout=10)
    attack_end_ns = time.time_ns()
    time.sleep(1.0)  # ticks of the window still in flight
    receiver.stop.set()
    receiving.join(timeout=10)

    assert not attacking.is_alive() and not receiving.is_alive()
    assert not attack.errors, attack.errors
    assert attack.opened == {"slowloris": 500, "reset": 300, "too_large": 100, "bad_request": 100}
    window_s = (attack_end_ns - attack_start_ns) / 1e9
    received = receiver.published_between(attack_start_ns, attack_end_ns)
    assert received >= 0.9 * RATE * window_s, (
        f"{received} ticks in {window_s:.1f} s of attack ({received / window_s:.0f}/s of {RATE})"
    )
    assert not receiver.gaps, f"per-symbol sequence gaps: {receiver.gaps[:10]}"
    assert healthz and all(status == 200 for status, _ in healthz), healthz
    assert max(elapsed for _, elapsed in healthz) < HEALTHZ_LIMIT_S, healthz

    samples = metric_samples(http_get(port, "/metrics")[1])
    for reason in ("too_many_connections", "timeout", "too_large", "bad_request", "reset"):
        assert _rejected(samples, reason) > 0, (reason, samples)
    assert _rejected(samples, "internal") == 0
    assert samples["feedsvc_http_connections"] == 1  # this scrape: nothing was left open

    started = time.monotonic()
    assert process.terminate(timeout_s=10) == 0
    assert time.monotonic() - started < 10
    log = process.log
    assert "Traceback" not in log, log
    http_lines = [line for line in log.splitlines() if "http" in line.lower()]
    assert len(http_lines) < 10, http_lines


@pytest.fixture
def idle_service(ipc_endpoint: str) -> Iterator[Service]:
    """A started Service (sockets bound, loop not running: /healthz says 503) without its own
    metrics server, for MetricsServer instances of the test's choosing."""
    service = Service(load_config(None, serve_settings([ipc_endpoint])))
    service.start()
    yield service
    service.close()


@contextlib.contextmanager
def _metrics_server(service: Service, **limits: Any) -> Iterator[MetricsServer]:
    server = MetricsServer(service, 0, **limits)
    server.start()
    try:
        yield server
    finally:
        server.close()


def _sample(server: MetricsServer, name: str, reason: str | None = None) -> float:
    labels = {"reason": reason} if reason else None
    return server.registry.get_sample_value(name, labels) or 0.0


def _closed_by_server(sock: socket.socket, timeout_s: float) -> bool:
    """True if the server closed `sock` (end of stream or reset) within timeout_s; what it had
    sent before is read and dropped."""
    deadline = time.monotonic() + timeout_s
    while (left_s := deadline - time.monotonic()) > 0:
        sock.settimeout(left_s)
        try:
            if not sock.recv(1 << 20):
                return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
    return False


def _connect(port: int, first_bytes: bytes, receive_buffer: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port))
    sock.sendall(first_bytes)
    return sock


def test_a_client_beyond_max_connections_takes_the_place_of_the_oldest_slow_one(
    idle_service: Service,
) -> None:
    with _metrics_server(idle_service, max_connections=4) as server, contextlib.ExitStack() as s:
        slow = [s.enter_context(_connect(server.port, b"GET /metr")) for _ in range(4)]
        wait_for(lambda: _sample(server, "feedsvc_http_connections") == 4, 5, "4 connections open")
        status, body = http_get(server.port, "/metrics")
        assert status == 200 and b"feedsvc_http_connections" in body
        assert _sample(server, "feedsvc_http_requests_rejected_total", "too_many_connections") == 1
        assert _closed_by_server(slow[0], 2.0), "the oldest slow connection is still open"
        assert not any(_closed_by_server(sock, 0.2) for sock in slow[1:])

        started = time.monotonic()
        server.close()
        assert time.monotonic() - started < 1.5
        assert all(_closed_by_server(sock, 2.0) for sock in slow[1:])


class _BigMetric:
    """A metric too big for the socket buffers while `enabled`: its response stays in writing."""

    def __init__(self) -> None:
        self.enabled = True

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        if self.enabled:
            family = GaugeMetricFamily("test_big", "padding", labels=["pad"])
            family.add_metric(["x" * 8_000_000], 1)  # more than the 4 MiB tcp_wmem maximum
            yield family


def test_when_every_connection_is_being_answered_a_new_one_is_closed_at_once(
    idle_service: Service,
) -> None:
    limits = {"max_connections": 4, "write_timeout_s": 3.0}
    with _metrics_server(idle_service, **limits) as server, contextlib.ExitStack() as stack:
        big = _BigMetric()
        server.registry.register(big)
        readers = [
            stack.enter_context(_connect(server.port, FULL_REQUEST, receive_buffer=4096))
            for _ in range(4)
        ]
        wait_for(lambda: _sample(server, "feedsvc_http_connections") == 4, 5, "4 connections open")
        time.sleep(0.3)  # their heads are read: all 4 are in writing, none can be evicted
        fifth = stack.enter_context(_connect(server.port, b"GET /healthz HTTP/1.1\r\n\r\n"))
        assert _closed_by_server(fifth, 1.0), "the 5th connection was not closed at once"
        assert _sample(server, "feedsvc_http_requests_rejected_total", "too_many_connections") == 1

        wait_for(
            lambda: _sample(server, "feedsvc_http_requests_rejected_total", "timeout") == 4,
            6,
            "the 4 clients that do not read time out",
        )
        big.enabled = False
        status, body = http_get(server.port, "/healthz")
        assert status == 503 and orjson.loads(body)["reason"] == "not publishing yet"
        assert all(_closed_by_server(sock, 2.0) for sock in readers)


def test_a_failing_scrape_is_answered_500_counted_and_logged_rate_limited(
    idle_service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    class Failing:
        def describe(self) -> list[Metric]:
            return []

        def collect(self) -> Iterator[Metric]:
            raise ValueError("collector broke")

    with _metrics_server(idle_service) as server:
        failing = Failing()
        server.registry.register(failing)
        assert [http_get(server.port, "/metrics")[0] for _ in range(3)] == [500, 500, 500]
        server.registry.unregister(failing)
        status, body = http_get(server.port, "/metrics")
        assert status == 200
        assert _rejected(metric_samples(body), "internal") == 3
        while_serving = [r for r in caplog.records if r.name == "feedsvc.http"]
    warnings = [r for r in caplog.records if r.name == "feedsvc.http"]
    # The first at once, the other two in the summary close() writes.
    assert len(while_serving) == 1 and len(warnings) == 2
    assert "{'internal': 1}" in warnings[0].getMessage()
    assert "{'internal': 2}" in warnings[1].getMessage()
    assert all("ValueError: collector broke" in w.getMessage() for w in warnings)
    assert all(w.exc_info is None for w in warnings)


def test_head_gets_the_headers_without_a_body(idle_service: Service) -> None:
    request = b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    with _metrics_server(idle_service) as server, _connect(server.port, request) as sock:
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 ")
    assert b"Content-Type: application/json" in head and b"Connection: close" in head
    assert body == b""
