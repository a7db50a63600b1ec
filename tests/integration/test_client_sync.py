"""The client side of the sync handshake (docs/sync-protocol.md) over real sockets.

The server here is `ProtocolServer`, a PROTOCOL TEST DOUBLE written from docs/sync-protocol.md to
test the client's handshake logic only (joining under load, quiet symbols, retries, failures).
It is not feedsvc's server: the end-to-end tests of the handshake against `feedsvc serve` (and of
`feedsvc subscribe --sync`) are separate.
"""

from __future__ import annotations

import asyncio
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import orjson
import pytest
import zmq

from feedsvc.cli.subscribe import EXIT_SYNC_FAILED, run_subscribe
from feedsvc.client import (
    SYNC_NO_MARKER,
    SYNC_NO_REPLY,
    AsyncSubscriber,
    Subscriber,
    SubscriberStats,
    SyncError,
)
from feedsvc.protocol.ticks import Tick, encode_frame, symbol_problem
from tests.conftest import free_tcp_port
from tests.integration.test_client import receive

# Upper bound of every wait; generous because other test runs share the two cores.
WAIT_S: Final = 15.0
# Long enough for frames already sent over loopback to arrive.
QUIET_S: Final = 0.3
BUSY_SYMBOLS: Final = [f"BUSY{index:02d}" for index in range(10)]
HIGH_RATE_PER_S: Final = 20_000
# The doc's pattern for client and marker ids.
ID_PATTERN: Final = re.compile(r"[0-9A-Za-z_-]{1,64}")

# How often the protocol server reads its subscription log (reading applies subscriptions).
SUBSCRIPTION_LOG_INTERVAL_S: Final = 0.05
ANSWER: Final = "answer"
NO_REPLY: Final = "no_reply"
NO_MARKER: Final = "no_marker"


def wait_until(condition: Callable[[], object], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


class ProtocolServer:
    """Protocol test double of the service side of the handshake, for the client's tests only.

    One thread owns all its sockets, so a snapshot, its reply and its marker frame happen with no
    tick in between, as the doc requires:

    - an XPUB socket (a PUB that also reports subscriptions, so tests see the marker topics come
      and go) publishing `symbols` round robin at `rate_per_s`, each with its own seq from 1.
      Like feedsvc's PUB socket it is never polled and its subscription log is read only now and
      then, so new subscriptions take effect as lazily as there: libzmq applies them when the
      socket processes commands, which a send does at most about once per millisecond;
    - at `sync_endpoint` (bound `sync_bind_delay_s` after start), in mode ``answer`` a REP socket
      that answers snapshot and ready requests from its last-value cache (and validates them as
      the doc says), in ``no_marker`` the same without ever publishing the marker, in
      ``no_reply`` a ROUTER that records requests and never answers.

    The PUB queue is unbounded so a slow test run never drops a tick: any gap is the client's.
    """

    def __init__(
        self,
        context: zmq.Context,
        pub_endpoint: str,
        sync_endpoint: str,
        *,
        symbols: list[str],
        rate_per_s: int,
        mode: str = ANSWER,
        sync_bind_delay_s: float = 0.0,
        max_symbols: int = 10_000,
    ) -> None:
        self.pub_endpoint, self.sync_endpoint = pub_endpoint, sync_endpoint
        self.epoch = time.time_ns()
        self.requests: list[dict[str, Any]] = []
        self.routing_ids: list[bytes] = []
        self.subscription_events: list[bytes] = []
        self.ready_clients: list[str] = []
        self.published = 0
        self._context = context
        self._symbols, self._rate_per_s = symbols, rate_per_s
        self._mode, self._sync_bind_delay_s = mode, sync_bind_delay_s
        self._max_symbols = max_symbols
        self._seq_by_symbol: dict[str, int] = {}
        self._last_tick_by_symbol: dict[str, Tick] = {}
        self._publish_once: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._bound = threading.Event()
        self._thread = threading.Thread(target=self._run, name="protocol-server", daemon=True)

    def start(self) -> None:
        self._thread.start()
        assert self._bound.wait(WAIT_S), "the protocol server did not bind its PUB socket"

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(WAIT_S)
        assert not self._thread.is_alive(), "the protocol server thread did not stop"

    def publish_once(self, symbol: str) -> None:
        """Publish one tick of `symbol` (besides the steady flow); returns once it is sent."""
        before = self.seq(symbol)
        self._publish_once.put(symbol)
        wait_until(lambda: self.seq(symbol) > before, f"{symbol} to be published")

    def seq(self, symbol: str) -> int:
        return self._seq_by_symbol.get(symbol, 0)

    def last_tick(self, symbol: str) -> Tick | None:
        return self._last_tick_by_symbol.get(symbol)

    def snapshot_requests(self) -> list[dict[str, Any]]:
        return [request for request in list(self.requests) if request.get("op") == "snapshot"]

    def _run(self) -> None:
        pub = self._context.socket(zmq.XPUB)
        sync_socket: zmq.Socket | None = None
        poller = zmq.Poller()
        try:
            pub.setsockopt(zmq.LINGER, 0)
            pub.setsockopt(zmq.SNDHWM, 0)
            pub.bind(self.pub_endpoint)
            self._bound.set()
            started_at = subscriptions_read_at = time.monotonic()
            steady_sent = 0
            while not self._stop.is_set():
                now = time.monotonic()
                if sync_socket is None and now - started_at >= self._sync_bind_delay_s:
                    sync_socket = self._bind_sync_socket()
                    poller.register(sync_socket, zmq.POLLIN)
                # Steady rate: send what is due since the start (bounded, to stay responsive).
                due = int((now - started_at) * self._rate_per_s) - steady_sent
                for _ in range(min(due, 2_000)):
                    self._publish(pub, self._symbols[steady_sent % len(self._symbols)])
                    steady_sent += 1
                while not self._publish_once.empty():
                    self._publish(pub, self._publish_once.get())
                if now - subscriptions_read_at >= SUBSCRIPTION_LOG_INTERVAL_S:
                    self._read_subscriptions(pub)
                    subscriptions_read_at = now
                if sync_socket is None:
                    time.sleep(0.001)
                elif poller.poll(1):
                    self._serve(sync_socket, pub)
        finally:
            pub.close(linger=0)
            if sync_socket is not None:
                sync_socket.close(linger=0)

    def _bind_sync_socket(self) -> zmq.Socket:
        sync_socket = self._context.socket(zmq.ROUTER if self._mode == NO_REPLY else zmq.REP)
        sync_socket.setsockopt(zmq.LINGER, 0)
        sync_socket.bind(self.sync_endpoint)
        return sync_socket

    def _publish(self, pub: zmq.Socket, symbol: str) -> None:
        seq = self._seq_by_symbol.get(symbol, 0) + 1
        tick = {"sym": symbol, "bid": 100.0 + seq % 100, "ask": 100.5 + seq % 100}
        tick |= {"bid_size": 100, "ask_size": 200, "seq": seq, "epoch": self.epoch}
        tick["ts"] = time.time_ns()
        pub.send(encode_frame(symbol, tick))
        self._last_tick_by_symbol[symbol] = tick
        self._seq_by_symbol[symbol] = seq
        self.published += 1

    def _read_subscriptions(self, pub: zmq.Socket) -> None:
        while True:
            try:
                self.subscription_events.append(pub.recv(zmq.NOBLOCK))
            except zmq.Again:
                return

    def _serve(self, sync_socket: zmq.Socket, pub: zmq.Socket) -> None:
        if self._mode == NO_REPLY:
            routing_id, _empty, request = sync_socket.recv_multipart()
            self.routing_ids.append(routing_id)
            self.requests.append(orjson.loads(request))
            return
        reply, marker_frame = self._answer(sync_socket.recv())
        sync_socket.send(orjson.dumps(reply))
        if marker_frame is not None and self._mode != NO_MARKER:
            pub.send(marker_frame)

    def _answer(self, request: bytes) -> tuple[dict[str, Any], bytes | None]:
        """The reply to one request and the marker frame to publish right after it."""
        try:
            fields = orjson.loads(request)
        except orjson.JSONDecodeError:
            return self._error("not_json", "not JSON"), None
        self.requests.append(fields)
        if not isinstance(fields, dict) or fields.get("op") not in ("snapshot", "ready"):
            return self._error("bad_request", "op must be snapshot or ready"), None
        for name in ("client", "marker"):
            if not isinstance(fields.get(name), str) or not ID_PATTERN.fullmatch(fields[name]):
                return self._error("bad_request", f"bad {name}"), None
        if fields["op"] == "ready":
            self.ready_clients.append(fields["client"])
            return {"ok": True}, None
        if "symbols" not in fields:
            return self._error("bad_request", "symbols missing"), None
        symbols = fields["symbols"]
        if symbols is not None:
            if len(symbols) > self._max_symbols:
                detail = f"at most {self._max_symbols} symbols per request, got {len(symbols)}"
                return self._error("too_many_symbols", detail), None
            if any(symbol_problem(symbol) is not None for symbol in symbols):
                return self._error("bad_symbol", "invalid symbol"), None
        wanted = list(self._seq_by_symbol) if symbols is None else symbols
        snapshot = {
            symbol: {"seq": self.seq(symbol), "tick": self.last_tick(symbol)} for symbol in wanted
        }
        topic = f"_sync.{fields['marker']}"
        reply = {"ok": True, "epoch": self.epoch, "marker": topic, "snapshot": snapshot}
        return reply, encode_frame(topic, {"epoch": self.epoch, "marker": fields["marker"]})

    @staticmethod
    def _error(code: str, detail: str) -> dict[str, Any]:
        return {"ok": False, "error": code, "detail": detail}


@pytest.fixture(params=["ipc", "tcp"])
def endpoints(request: pytest.FixtureRequest, ipc_dir: Path) -> tuple[str, str]:
    """A publisher endpoint and a sync endpoint, both ipc or both tcp."""
    if request.param == "ipc":
        return f"ipc://{ipc_dir}/ticks", f"ipc://{ipc_dir}/sync"
    return f"tcp://127.0.0.1:{free_tcp_port()}", f"tcp://127.0.0.1:{free_tcp_port()}"


@pytest.fixture
def ipc_endpoints(ipc_dir: Path) -> tuple[str, str]:
    return f"ipc://{ipc_dir}/ticks", f"ipc://{ipc_dir}/sync"


@pytest.fixture
def protocol_server(zmq_context: zmq.Context) -> Iterator[Callable[..., ProtocolServer]]:
    """Factory: protocol_server(pub_endpoint, sync_endpoint, **options) starts a ProtocolServer;
    all are stopped after the test (before the context is destroyed)."""
    started: list[ProtocolServer] = []

    def start(
        pub_endpoint: str,
        sync_endpoint: str,
        *,
        symbols: list[str] = BUSY_SYMBOLS,
        rate_per_s: int = 1_000,
        **options: Any,
    ) -> ProtocolServer:
        server = ProtocolServer(
            zmq_context,
            pub_endpoint,
            sync_endpoint,
            symbols=symbols,
            rate_per_s=rate_per_s,
            **options,
        )
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def new_subscriber() -> Iterator[Callable[..., Subscriber]]:
    """Factory: new_subscriber(*args, **kwargs) is a Subscriber, closed after the test whatever
    happens."""
    created: list[Subscriber] = []

    def make(*args: Any, **kwargs: Any) -> Subscriber:
        created.append(Subscriber(*args, **kwargs))
        return created[-1]

    yield make
    for subscriber in created:
        subscriber.close()


def receive_all(subscriber: Subscriber, server: ProtocolServer, count: int) -> list[Tick]:
    """`count` ticks, then, with the server stopped, every tick still on its way (until QUIET_S
    without one): all the server published from the snapshot on."""
    ticks = receive(subscriber, count)
    server.stop()
    deadline = time.monotonic() + WAIT_S
    while (tick := subscriber.recv(timeout=QUIET_S)) is not None:
        ticks.append(tick)
        assert time.monotonic() < deadline, "ticks kept coming after the server stopped"
    return ticks


def snapshot_ticks(snapshot: dict[str, dict[str, Any]]) -> list[Tick]:
    return [entry["tick"] for entry in snapshot.values() if entry["tick"] is not None]


def assert_contiguous_from_snapshot(
    ticks: list[Tick], snapshot: dict[str, dict[str, Any]], stats: SubscriberStats
) -> None:
    """The property a syncing client relies on: the snapshot's ticks first, then per symbol
    every seq from the snapshot's on, once, in order; nothing reported missing or duplicated."""
    first = snapshot_ticks(snapshot)
    assert ticks[: len(first)] == first
    for symbol, entry in snapshot.items():
        seqs = [tick["seq"] for tick in ticks if tick["sym"] == symbol]
        start = entry["seq"] if entry["tick"] is not None else entry["seq"] + 1
        assert seqs == list(range(start, start + len(seqs))), f"{symbol} is not contiguous"
    assert (stats.gaps, stats.missed, stats.duplicates, stats.malformed) == (0, 0, 0, 0)
    assert stats.snapshot_ticks == len(first)
    # Every frame and every snapshot tick is accounted for exactly once.
    assert stats.received + stats.snapshot_ticks == (
        stats.delivered + stats.duplicates + stats.snapshot_overlap + stats.malformed
    )
    assert stats.delivered == len(ticks)


def marker_topic(marker: str) -> bytes:
    return f"_sync.{marker} ".encode()


def wait_for_marker_unsubscribed(server: ProtocolServer, marker: str) -> None:
    """The client subscribed the marker topic and has unsubscribed it again."""
    topic = marker_topic(marker)
    wait_until(
        lambda: b"\x00" + topic in server.subscription_events,
        f"the unsubscription of {topic!r}",
    )
    assert b"\x01" + topic in server.subscription_events


def test_join_under_a_high_rate_continues_the_snapshot_without_gap_or_duplicate(
    protocol_server: Callable[..., ProtocolServer],
    endpoints: tuple[str, str],
    new_subscriber: Callable[..., Subscriber],
) -> None:
    pub_endpoint, sync_endpoint = endpoints
    server = protocol_server(pub_endpoint, sync_endpoint, rate_per_s=HIGH_RATE_PER_S)
    # Join a running feed: every symbol is well past seq 1.
    wait_until(lambda: server.published >= 5_000, "the feed to run")
    # rcvhwm 0: a test run slowed by the machine must not drop ticks on the client side either.
    subscriber = new_subscriber(pub_endpoint, BUSY_SYMBOLS, sync_endpoint=sync_endpoint, rcvhwm=0)
    subscriber.sync()

    assert subscriber.synced and subscriber.epoch == server.epoch
    snapshot = subscriber.snapshot
    assert snapshot is not None and list(snapshot) == BUSY_SYMBOLS
    assert all(entry["seq"] >= 100 for entry in snapshot.values())
    ticks = receive_all(subscriber, server, 10_000)

    assert_contiguous_from_snapshot(ticks, snapshot, subscriber.stats)
    for symbol, entry in snapshot.items():
        # The snapshot tick, then the first live one is exactly its seq + 1.
        seqs = [tick["seq"] for tick in ticks if tick["sym"] == symbol]
        assert seqs[:2] == [entry["seq"], entry["seq"] + 1]
        # Until the last published one: nothing lost at the end either.
        assert seqs[-1] == server.seq(symbol)
    request = server.snapshot_requests()[-1]
    assert request["symbols"] == BUSY_SYMBOLS and request["client"] == subscriber.client_id
    assert server.ready_clients == [subscriber.client_id]
    wait_for_marker_unsubscribed(server, request["marker"])


def test_joins_under_load_need_one_attempt(
    protocol_server: Callable[..., ProtocolServer],
    endpoints: tuple[str, str],
    new_subscriber: Callable[..., Subscriber],
) -> None:
    """A retry costs a whole sync timeout. Sending the request right after subscribing the marker
    lost the marker in about half of these joins (the PUB socket had not applied the new
    subscription yet); at most one retry in ten leaves room for a very busy machine."""
    pub_endpoint, sync_endpoint = endpoints
    server = protocol_server(pub_endpoint, sync_endpoint, rate_per_s=HIGH_RATE_PER_S)
    wait_until(lambda: server.published >= 2_000, "the feed to run")
    attempts = []
    for _ in range(10):
        subscriber = new_subscriber(pub_endpoint, BUSY_SYMBOLS, sync_endpoint=sync_endpoint)
        subscriber.sync()
        attempts.append(subscriber.stats.sync_attempts)
        subscriber.close()
    assert attempts.count(1) >= 9, attempts


def test_a_quiet_symbol_gets_its_last_value_from_the_snapshot_first(
    protocol_server: Callable[..., ProtocolServer],
    ipc_endpoints: tuple[str, str],
    new_subscriber: Callable[..., Subscriber],
) -> None:
    pub_endpoint, sync_endpoint = ipc_endpoints
    server = protocol_server(pub_endpoint, sync_endpoint, symbols=["BUSY"], rate_per_s=2_000)
    server.publish_once("QUIET")  # before the client joins, and never again
    quiet_tick = server.last_tick("QUIET")
    subscriber = new_subscriber(
        pub_endpoint, ["BUSY", "QUIET", "NEVER"], sync_endpoint=sync_endpoint, rcvhwm=0
    )

    # No sync() call: the first recv() runs the handshake.
    ticks = receive(subscriber, 2)
    snapshot = subscriber.snapshot
    assert snapshot is not None
    assert ticks == [snapshot["BUSY"]["tick"], quiet_tick]
    assert snapshot["QUIET"] == {"seq": 1, "tick": quiet_tick}
    assert snapshot["NEVER"] == {"seq": 0, "tick": None}
    # A symbol never ticked so far: its first tick is seq 1 after baseline 0, no gap.
    server.publish_once("NEVER")
    ticks += receive_all(subscriber, server, 200)

    assert [tick["seq"] for tick in ticks if tick["sym"] == "QUIET"] == [1]
    assert [tick["seq"] for tick in ticks if tick["sym"] == "NEVER"] == [1]
    assert_contiguous_from_snapshot(ticks, snapshot, subscriber.stats)


def test_conflating_subscriber_gets_the_snapshot_through_the_conflator(
    protocol_server: Callable[..., ProtocolServer],
    ipc_endpoints: tuple[str, str],
    new_subscriber: Callable[..., Subscriber],
) -> None:
    pub_endpoint, sync_endpoint = ipc_endpoints
    server = protocol_server(pub_endpoint, sync_endpoint, rate_per_s=HIGH_RATE_PER_S)
    server.publish_once("QUIET")
    wait_until(lambda: server.published >= 2_000, "the feed to run")
    subscriber = new_subscriber(
        pub_endpoint,
        [*BUSY_SYMBOLS, "QUIET"],
        conflate=True,
        sync_endpoint=sync_endpoint,
        rcvhwm=0,
    )
    subscriber.sync()
    snapshot = subscriber.snapshot
    assert snapshot is not None
    time.sleep(QUIET_S)  # fall behind: the conflator has to collapse the backlog
    ticks = receive_all(subscriber, server, 500)

    assert [tick["seq"] for tick in ticks if tick["sym"] == "QUIET"] == [1]
    for symbol in BUSY_SYMBOLS:
        seqs = [tick["seq"] for tick in ticks if tick["sym"] == symbol]
        assert seqs == sorted(set(seqs)) and seqs[0] >= snapshot[symbol]["seq"]
        assert seqs[-1] == server.seq(symbol)
    stats = subscriber.stats
    assert (stats.gaps, stats.duplicates, stats.malformed) == (0, 0, 0)
    assert stats.conflated > 0 and stats.snapshot_ticks == len(BUSY_SYMBOLS) + 1
    assert stats.received + stats.snapshot_ticks == (
        stats.delivered + stats.conflated + stats.duplicates + stats.snapshot_overlap
    )


def test_retries_cover_a_sync_endpoint_that_comes_up_late(
    protocol_server: Callable[..., ProtocolServer],
    endpoints: tuple[str, str],
    new_subscriber: Callable[..., Subscriber],
) -> None:
    pub_endpoint, sync_endpoint = endpoints
    server = protocol_server(pub_endpoint, sync_endpoint, sync_bind_delay_s=1.0)
    started_at = time.monotonic()
    subscriber = new_subscriber(
        pub_endpoint,
        BUSY_SYMBOLS,
        sync_endpoint=sync_endpoint,
        sync_timeout_s=0.3,
        sync_attempts=10,
    )
    subscriber.sync()

    assert time.monotonic() - started_at >= 0.8
    assert subscriber.synced and subscriber.stats.sync_attempts >= 2
    snapshot = subscriber.snapshot
    assert snapshot is not None
    ticks = receive_all(subscriber, server, 300)
    assert_contiguous_from_snapshot(ticks, snapshot, subscriber.stats)


def test_a_service_that_never_replies_fails_after_the_bounded_attempts(
    protocol_server: Callable[..., ProtocolServer],
    endpoints: tuple[str, str],
    new_subscriber: Callable[..., Subscriber],
) -> None:
    pub_endpoint, sync_endpoint = endpoints
    server = protocol_server(pub_endpoint, sync_endpoint, mode=NO_REPLY)
    subscriber = new_subscriber(
        pub_endpoint, sync_endpoint=sync_endpoint, sync_timeout_s=0.2, sync_attempts=3
    )
    started_at = time.monotonic()
    with pytest.raises(SyncError) as failure:
        subscriber.sync()
    elapsed_s = time.monotonic() - started_at

    # 3 waits of 0.2 s and back-offs of 0.1 s and 0.2 s; the rest is slack for a busy machine.
    assert 0.9 <= elapsed_s < 3.0
    error = failure.value
    assert (error.code, error.attempts, error.endpoint) == (SYNC_NO_REPLY, 3, sync_endpoint)
    assert sync_endpoint in str(error) and "3 attempts" in str(error)
    assert not subscriber.synced and subscriber.stats.sync_attempts == 3
    wait_until(lambda: len(server.requests) == 3, "the 3 requests to reach the server")
    # A fresh marker per attempt, and a fresh REQ socket after each lost reply (Lazy Pirate).
    assert len({request["marker"] for request in server.requests}) == 3
    assert len(set(server.routing_ids)) == 3
    assert {request["symbols"] is None for request in server.requests} == {True}


def test_a_marker_that_never_comes_is_retried_with_new_markers_then_fails(
    protocol_server: Callable[..., ProtocolServer],
    ipc_endpoints: tuple[str, str],
    new_subscriber: Callable[..., Subscriber],
) -> None:
    pub_endpoint, sync_endpoint = ipc_endpoints
    server = protocol_server(pub_endpoint, sync_endpoint, mode=NO_MARKER)
    subscriber = new_subscriber(
        pub_endpoint, BUSY_SYMBOLS, sync_endpoint=sync_endpoint, sync_timeout_s=0.2, sync_attempts=3
    )
    started_at = time.monotonic()
    with pytest.raises(SyncError) as failure:
        subscriber.sync()

    assert time.monotonic() - started_at < 3.0
    assert (failure.value.code, failure.value.attempts) == (SYNC_NO_MARKER, 3)
    assert "marker" in str(failure.value)
    markers = [request["marker"] for request in server.snapshot_requests()]
    assert len(markers) == len(set(markers)) == 3
    for marker in markers:
        wait_for_marker_unsubscribed(server, marker)
    # Ticks read while waiting were not handed out from an unconfirmed snapshot.
    assert subscriber.snapshot is None and subscriber.stats.delivered == 0
    assert server.ready_clients == []


def test_an_error_reply_fails_at_once_with_the_service_code(
    protocol_server: Callable[..., ProtocolServer],
    ipc_endpoints: tuple[str, str],
    new_subscriber: Callable[..., Subscriber],
) -> None:
    pub_endpoint, sync_endpoint = ipc_endpoints
    server = protocol_server(pub_endpoint, sync_endpoint, max_symbols=2)
    subscriber = new_subscriber(pub_endpoint, ["AAA", "BBB", "CCC"], sync_endpoint=sync_endpoint)
    started_at = time.monotonic()
    with pytest.raises(SyncError) as failure:
        subscriber.recv(timeout=0)

    # Refusals are not retried: well within one timeout (2 s).
    assert time.monotonic() - started_at < 1.0
    error = failure.value
    assert (error.code, error.attempts) == ("too_many_symbols", 1)
    assert error.detail == "at most 2 symbols per request, got 3"
    assert "too_many_symbols" in str(error) and sync_endpoint in str(error)
    assert len(server.snapshot_requests()) == 1


def test_async_subscriber_does_the_same_handshake(
    protocol_server: Callable[..., ProtocolServer], endpoints: tuple[str, str]
) -> None:
    pub_endpoint, sync_endpoint = endpoints
    server = protocol_server(pub_endpoint, sync_endpoint, rate_per_s=HIGH_RATE_PER_S)
    server.publish_once("QUIET")
    wait_until(lambda: server.published >= 5_000, "the feed to run")
    symbols = [*BUSY_SYMBOLS, "QUIET"]

    async def join() -> tuple[list[Tick], dict[str, dict[str, Any]] | None, SubscriberStats]:
        subscriber = AsyncSubscriber(pub_endpoint, symbols, sync_endpoint=sync_endpoint, rcvhwm=0)
        try:
            ticks: list[Tick] = []
            while len(ticks) < 10_000:  # the first recv() runs the handshake
                tick = await subscriber.recv(timeout=WAIT_S)
                assert tick is not None, f"received only {len(ticks)} ticks"
                ticks.append(tick)
            server.stop()
            while (tick := await subscriber.recv(timeout=QUIET_S)) is not None:
                ticks.append(tick)
            return ticks, subscriber.snapshot, subscriber.stats
        finally:
            subscriber.close()

    ticks, snapshot, stats = asyncio.run(asyncio.wait_for(join(), 4 * WAIT_S))

    assert snapshot is not None and list(snapshot) == symbols
    assert snapshot["QUIET"]["seq"] == 1
    assert_contiguous_from_snapshot(ticks, snapshot, stats)
    assert [tick["seq"] for tick in ticks if tick["sym"] == "QUIET"] == [1]
    assert len(server.ready_clients) == 1


def test_async_subscriber_fails_after_the_bounded_attempts(
    protocol_server: Callable[..., ProtocolServer], ipc_endpoints: tuple[str, str]
) -> None:
    pub_endpoint, sync_endpoint = ipc_endpoints
    server = protocol_server(pub_endpoint, sync_endpoint, mode=NO_REPLY)

    async def sync() -> SyncError:
        subscriber = AsyncSubscriber(
            pub_endpoint, sync_endpoint=sync_endpoint, sync_timeout_s=0.2, sync_attempts=2
        )
        try:
            with pytest.raises(SyncError) as failure:
                await subscriber.sync()
            return failure.value
        finally:
            subscriber.close()

    error = asyncio.run(asyncio.wait_for(sync(), WAIT_S))
    assert (error.code, error.attempts) == (SYNC_NO_REPLY, 2)
    wait_until(lambda: len(set(server.routing_ids)) == 2, "2 requests from 2 REQ sockets")


def test_closing_an_async_subscriber_ends_its_handshake(
    protocol_server: Callable[..., ProtocolServer], ipc_endpoints: tuple[str, str]
) -> None:
    pub_endpoint, sync_endpoint = ipc_endpoints
    protocol_server(pub_endpoint, sync_endpoint, mode=NO_REPLY)

    async def close_while_syncing() -> float:
        subscriber = AsyncSubscriber(
            pub_endpoint, sync_endpoint=sync_endpoint, sync_timeout_s=5.0, sync_attempts=5
        )
        try:
            receiving = asyncio.create_task(subscriber.recv())
            await asyncio.sleep(0.2)
            closed_at = time.monotonic()
            subscriber.close()
            assert await asyncio.wait_for(receiving, WAIT_S) is None
            return time.monotonic() - closed_at
        finally:
            subscriber.close()

    assert asyncio.run(close_while_syncing()) < 1.0


def test_subscribe_command_reports_a_failed_sync_in_one_line_and_exits_1(
    protocol_server: Callable[..., ProtocolServer],
    ipc_endpoints: tuple[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    pub_endpoint, sync_endpoint = ipc_endpoints
    protocol_server(pub_endpoint, sync_endpoint, mode=NO_REPLY)
    exit_code = run_subscribe(
        [pub_endpoint], sync_endpoint=sync_endpoint, sync_timeout_s=0.1, as_json=True, count=1
    )
    captured = capsys.readouterr()
    assert exit_code == EXIT_SYNC_FAILED == 1
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith("feedsvc subscribe: sync with ")
    assert sync_endpoint in captured.err and "5 attempts" in captured.err
