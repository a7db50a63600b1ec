"""The client library against a real PUB socket (ipc and tcp) sending feedsvc wire frames."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import zmq

from feedsvc.client import AsyncSubscriber, Gap, Restart, Subscriber
from feedsvc.protocol.ticks import HEARTBEAT_TOPIC, Tick, encode_frame

EPOCH = 1_700_000_000_000_000_000
# Upper bound of every wait; generous because other test runs share the two cores.
WAIT_S = 10.0
# Long enough for frames already sent over loopback to arrive.
QUIET_S = 0.3


class FakePublisher:
    """A bare PUB socket bound to ipc and tcp, sending frames the way feedsvc's publisher does."""

    def __init__(self, context: zmq.Context, ipc_endpoint: str, tcp_endpoint: str) -> None:
        self.endpoint_by_transport = {"ipc": ipc_endpoint, "tcp": tcp_endpoint}
        self.socket = context.socket(zmq.PUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(ipc_endpoint)
        self.socket.bind(tcp_endpoint)

    def tick(self, symbol: str, seq: int, epoch: int = EPOCH) -> None:
        tick = {"sym": symbol, "bid": 100.0 + seq, "ask": 100.5 + seq, "bid_size": 100}
        tick |= {"ask_size": 200, "seq": seq, "epoch": epoch, "ts": time.time_ns()}
        self.socket.send(encode_frame(symbol, tick))

    def heartbeat(self, epoch: int = EPOCH, interval_s: float = 1.0) -> None:
        heartbeat = {"epoch": epoch, "ts": time.time_ns(), "interval_s": interval_s}
        self.socket.send(encode_frame(HEARTBEAT_TOPIC, heartbeat))


@pytest.fixture
def publisher(zmq_context: zmq.Context, ipc_endpoint: str, tcp_endpoint: str) -> FakePublisher:
    # The zmq_context fixture closes the socket when it destroys the context.
    return FakePublisher(zmq_context, ipc_endpoint, tcp_endpoint)


@pytest.fixture(params=["ipc", "tcp"])
def endpoint(request: pytest.FixtureRequest, publisher: FakePublisher) -> str:
    return publisher.endpoint_by_transport[request.param]


@pytest.fixture
def subscribers() -> Iterator[list[Subscriber]]:
    """Subscribers a test creates; all closed at the end, whatever happens."""
    created: list[Subscriber] = []
    yield created
    for subscriber in created:
        subscriber.close()


def settle(
    publisher: FakePublisher, subscriber: Subscriber, epoch: int = EPOCH, interval_s: float = 1.0
) -> None:
    """Send heartbeats until one arrives: the subscriptions have then reached the publisher.

    The heartbeat subscription is made last, so once it works the symbol ones do too.
    """
    deadline = time.monotonic() + WAIT_S
    heartbeats_before = subscriber.stats.heartbeats
    while subscriber.stats.heartbeats == heartbeats_before:
        assert time.monotonic() < deadline, "the subscriber never received a heartbeat"
        publisher.heartbeat(epoch, interval_s)
        assert subscriber.recv(timeout=0.05) is None


def receive(subscriber: Subscriber, count: int) -> list[Tick]:
    """Exactly `count` ticks, failing if they do not come within WAIT_S."""
    ticks: list[Tick] = []
    deadline = time.monotonic() + WAIT_S
    while len(ticks) < count:
        remaining_s = deadline - time.monotonic()
        assert remaining_s > 0, f"received only {len(ticks)} of {count} ticks: {ticks}"
        tick = subscriber.recv(timeout=remaining_s)
        if tick is not None:
            ticks.append(tick)
    return ticks


def symbols_and_seqs(ticks: list[Tick]) -> list[tuple[str, int]]:
    return [(tick["sym"], tick["seq"]) for tick in ticks]


def test_exact_symbol_subscription_does_not_match_longer_symbols(
    publisher: FakePublisher, endpoint: str, subscribers: list[Subscriber]
) -> None:
    subscriber = Subscriber(endpoint, symbols=["AAPL"])
    subscribers.append(subscriber)
    settle(publisher, subscriber)
    for seq in (1, 2):
        publisher.tick("AAPLX", seq)
        publisher.tick("AAP", seq)
        publisher.tick("AAPL", seq)
    assert symbols_and_seqs(receive(subscriber, 2)) == [("AAPL", 1), ("AAPL", 2)]
    # The other frames were sent before the second AAPL one on the same connection: had the
    # publisher not filtered them, they would have arrived by now.
    assert subscriber.recv(timeout=QUIET_S) is None
    assert subscriber.stats.received == 2


def test_prefix_subscription_gets_every_symbol_with_the_prefix(
    publisher: FakePublisher, endpoint: str, subscribers: list[Subscriber]
) -> None:
    subscriber = Subscriber(endpoint, prefixes=["SYN0", b"IB"])
    subscribers.append(subscriber)
    settle(publisher, subscriber)
    for symbol in ("XYZ", "SYN0001", "SYN1000", "IBM", "SYN0002", "AAPL"):
        publisher.tick(symbol, 1)
    ticks = receive(subscriber, 3)
    assert symbols_and_seqs(ticks) == [("SYN0001", 1), ("IBM", 1), ("SYN0002", 1)]
    assert subscriber.recv(timeout=QUIET_S) is None


def test_no_symbols_and_no_prefixes_subscribes_to_everything(
    publisher: FakePublisher, subscribers: list[Subscriber]
) -> None:
    subscriber = Subscriber(publisher.endpoint_by_transport["ipc"])
    subscribers.append(subscriber)
    settle(publisher, subscriber)
    for symbol in ("AAPL", "MSFT", "SYN0001"):
        publisher.tick(symbol, 1)
    assert [tick["sym"] for tick in receive(subscriber, 3)] == ["AAPL", "MSFT", "SYN0001"]
    # Heartbeats reach the subscriber but are never delivered as ticks.
    assert subscriber.stats.heartbeats >= 1


def test_gap_is_detected_with_the_exact_missed_count(
    publisher: FakePublisher, endpoint: str, subscribers: list[Subscriber]
) -> None:
    gaps: list[Gap] = []
    subscriber = Subscriber(endpoint, symbols=["AAPL", "MSFT"], on_gap=gaps.append)
    subscribers.append(subscriber)
    settle(publisher, subscriber)
    for index, seq in enumerate((1, 2, 3, 5, 6, 9, 9, 10)):
        publisher.tick("AAPL", seq)
        publisher.tick("MSFT", index + 1)
    ticks = receive(subscriber, 15)
    assert [tick["seq"] for tick in ticks if tick["sym"] == "AAPL"] == [1, 2, 3, 5, 6, 9, 10]
    assert [tick["seq"] for tick in ticks if tick["sym"] == "MSFT"] == list(range(1, 9))
    assert gaps == [Gap("AAPL", EPOCH, 4, 5, 1), Gap("AAPL", EPOCH, 7, 9, 2)]
    assert subscriber.recv(timeout=QUIET_S) is None
    stats = subscriber.stats
    assert (stats.gaps, stats.missed, stats.missed_by_symbol) == (2, 3, {"AAPL": 3})
    # The second AAPL 9 was dropped as a duplicate.
    assert (stats.duplicates, stats.delivered) == (1, 15)


def test_epoch_change_is_reported_as_a_restart_not_a_gap(
    publisher: FakePublisher, subscribers: list[Subscriber]
) -> None:
    restarts: list[Restart] = []
    subscriber = Subscriber(
        publisher.endpoint_by_transport["ipc"], symbols=["AAPL"], on_restart=restarts.append
    )
    subscribers.append(subscriber)
    settle(publisher, subscriber)
    for seq in (1, 2, 3):
        publisher.tick("AAPL", seq)
    for seq in (1, 2):
        publisher.tick("AAPL", seq, epoch=EPOCH + 1)
    ticks = receive(subscriber, 5)
    assert [(tick["epoch"], tick["seq"]) for tick in ticks] == [
        (EPOCH, 1),
        (EPOCH, 2),
        (EPOCH, 3),
        (EPOCH + 1, 1),
        (EPOCH + 1, 2),
    ]
    assert restarts == [Restart(EPOCH, EPOCH + 1)]
    assert (subscriber.stats.gaps, subscriber.stats.duplicates) == (0, 0)

    # A quiet subscriber learns of a restart from the heartbeats alone.
    publisher.heartbeat(epoch=EPOCH + 2)
    deadline = time.monotonic() + WAIT_S
    while len(restarts) < 2 and time.monotonic() < deadline:
        assert subscriber.recv(timeout=0.1) is None
    assert restarts == [Restart(EPOCH, EPOCH + 1), Restart(EPOCH + 1, EPOCH + 2)]
    assert subscriber.stats.restarts == 2


def test_conflation_hands_a_slow_consumer_the_newest_tick_per_symbol(
    publisher: FakePublisher, endpoint: str, subscribers: list[Subscriber]
) -> None:
    gaps: list[Gap] = []
    subscriber = Subscriber(endpoint, conflate=True, on_gap=gaps.append)
    subscribers.append(subscriber)
    settle(publisher, subscriber)
    for seq in range(1, 101):
        for symbol in ("AAPL", "MSFT", "IBM"):
            publisher.tick(symbol, seq)
    publisher.tick("LAST", 1)
    # The consumer is slow: the whole burst is queued before it asks for a tick.
    time.sleep(QUIET_S)
    ticks = receive(subscriber, 4)
    assert symbols_and_seqs(ticks) == [("AAPL", 100), ("MSFT", 100), ("IBM", 100), ("LAST", 1)]
    assert subscriber.recv(timeout=QUIET_S) is None
    stats = subscriber.stats
    assert (stats.received, stats.delivered, stats.conflated) == (301, 4, 297)
    # Conflation is not a gap: the replaced ticks move the expected seq on.
    assert gaps == []
    assert stats.missed == 0


def test_conflation_still_reports_ticks_lost_before_they_reached_the_consumer(
    publisher: FakePublisher, endpoint: str, subscribers: list[Subscriber]
) -> None:
    gaps: list[Gap] = []
    subscriber = Subscriber(endpoint, conflate=True, on_gap=gaps.append)
    subscribers.append(subscriber)
    settle(publisher, subscriber)
    publisher.tick("AAPL", 1)
    assert symbols_and_seqs(receive(subscriber, 1)) == [("AAPL", 1)]
    # seq 5 to 7 never leave the publisher (as if dropped at a high-water mark).
    for seq in (*range(2, 5), *range(8, 21)):
        publisher.tick("AAPL", seq)
    time.sleep(QUIET_S)
    assert symbols_and_seqs(receive(subscriber, 1)) == [("AAPL", 20)]
    assert [(gap.symbol, gap.missed) for gap in gaps] == [("AAPL", 3)]
    stats = subscriber.stats
    assert (stats.received, stats.delivered, stats.conflated, stats.missed) == (17, 2, 15, 3)


def test_feed_is_dead_when_heartbeats_stop_and_alive_when_they_resume(
    publisher: FakePublisher, subscribers: list[Subscriber]
) -> None:
    events: list[str] = []
    subscriber = Subscriber(
        publisher.endpoint_by_transport["ipc"],
        symbols=["AAPL"],
        on_dead=lambda: events.append("dead"),
        on_alive=lambda: events.append("alive"),
    )
    subscribers.append(subscriber)
    # The announced interval sets the timeout: 3 intervals of 0.1 s.
    settle(publisher, subscriber, interval_s=0.1)
    assert subscriber.heartbeat_timeout_s == pytest.approx(0.3)
    assert subscriber.alive
    events.clear()

    # Nothing is sent: liveness is checked while recv waits.
    assert subscriber.recv(timeout=1.5) is None
    assert events == ["dead"]
    assert not subscriber.alive
    assert subscriber.stats.heartbeat_misses == 1
    assert subscriber.recv(timeout=0.5) is None
    assert events == ["dead"], "on_dead must be called once per outage"

    settle(publisher, subscriber, interval_s=0.1)
    assert events == ["dead", "alive"]
    assert subscriber.alive
    assert subscriber.stats.heartbeat_misses == 1


def test_a_publisher_never_heard_from_is_dead_after_the_given_timeout(
    ipc_dir: object, subscribers: list[Subscriber]
) -> None:
    dead_at: list[float] = []
    started_at = time.monotonic()
    subscriber = Subscriber(
        f"ipc://{ipc_dir}/nobody", heartbeat_timeout_s=0.3, on_dead=lambda: dead_at.append(1)
    )
    subscribers.append(subscriber)
    assert subscriber.alive
    assert subscriber.recv(timeout=1.0) is None
    assert len(dead_at) == 1
    assert not subscriber.alive
    assert time.monotonic() - started_at >= 0.3


def test_heartbeat_interval_does_not_override_a_given_timeout(
    publisher: FakePublisher, subscribers: list[Subscriber]
) -> None:
    subscriber = Subscriber(publisher.endpoint_by_transport["ipc"], heartbeat_timeout_s=5.0)
    subscribers.append(subscriber)
    settle(publisher, subscriber, interval_s=0.1)
    assert subscriber.heartbeat_timeout_s == 5.0


def test_malformed_frames_are_counted_and_skipped(
    publisher: FakePublisher, subscribers: list[Subscriber]
) -> None:
    subscriber = Subscriber(publisher.endpoint_by_transport["ipc"])
    subscribers.append(subscriber)
    settle(publisher, subscriber)
    for frame in (
        b"AAPL not json",
        b"AAPL [1, 2]",
        b'AAPL {"sym": "AAPL"}',
        b'AAPL {"sym": "AAPL", "seq": "1", "epoch": 1}',
        b"AAPL",
        b"",
        b'_hb {"epoch": 1}',
    ):
        publisher.socket.send(frame)
    publisher.tick("AAPL", 1)
    assert symbols_and_seqs(receive(subscriber, 1)) == [("AAPL", 1)]
    assert subscriber.stats.malformed == 7
    assert subscriber.stats.received == 7  # the six tick frames, malformed or not, and AAPL 1


def test_several_endpoints_of_one_publisher_deliver_each_tick_once(
    publisher: FakePublisher, subscribers: list[Subscriber]
) -> None:
    subscriber = Subscriber(list(publisher.endpoint_by_transport.values()), symbols=["AAPL"])
    subscribers.append(subscriber)
    # Settle both connections: one heartbeat must arrive twice.
    deadline = time.monotonic() + WAIT_S
    while True:
        assert time.monotonic() < deadline, "the two connections never both received"
        heartbeats_before = subscriber.stats.heartbeats
        publisher.heartbeat()
        assert subscriber.recv(timeout=0.2) is None
        if subscriber.stats.heartbeats - heartbeats_before >= 2:
            break
    for seq in range(1, 21):
        publisher.tick("AAPL", seq)
    assert [tick["seq"] for tick in receive(subscriber, 20)] == list(range(1, 21))
    assert subscriber.recv(timeout=QUIET_S) is None
    assert (subscriber.stats.duplicates, subscriber.stats.gaps) == (20, 0)


def test_async_subscriber_receives_ticks(publisher: FakePublisher) -> None:
    gaps: list[Gap] = []

    async def receive_async() -> tuple[list[Tick], AsyncSubscriber]:
        endpoint = publisher.endpoint_by_transport["tcp"]
        async with AsyncSubscriber(endpoint, symbols=["AAPL"], on_gap=gaps.append) as subscriber:
            deadline = time.monotonic() + WAIT_S
            while subscriber.stats.heartbeats == 0:
                assert time.monotonic() < deadline, "the subscriber never received a heartbeat"
                publisher.heartbeat()
                assert await subscriber.recv(timeout=0.05) is None
            for seq in (1, 2, 4):
                publisher.tick("MSFT", seq)
                publisher.tick("AAPL", seq)
            ticks: list[Tick] = []

            async def collect() -> None:
                async for tick in subscriber:
                    ticks.append(tick)
                    if len(ticks) == 3:
                        break

            await asyncio.wait_for(collect(), WAIT_S)
            assert await subscriber.recv(timeout=QUIET_S) is None
            return ticks, subscriber

    ticks, subscriber = asyncio.run(receive_async())
    assert symbols_and_seqs(ticks) == [("AAPL", 1), ("AAPL", 2), ("AAPL", 4)]
    assert gaps == [Gap("AAPL", EPOCH, 3, 4, 1)]
    assert subscriber.closed


def test_async_iteration_ends_when_another_task_closes_the_subscriber(ipc_endpoint: str) -> None:
    async def close_while_iterating() -> list[Tick]:
        subscriber = AsyncSubscriber(ipc_endpoint)
        received: list[Tick] = []

        async def consume() -> None:
            async for tick in subscriber:
                received.append(tick)

        consumer = asyncio.create_task(consume())
        await asyncio.sleep(0.2)
        subscriber.close()
        await asyncio.wait_for(consumer, WAIT_S)
        return received

    assert asyncio.run(close_while_iterating()) == []


def test_close_is_idempotent_and_releases_a_given_context(
    publisher: FakePublisher, ipc_endpoint: str
) -> None:
    context = zmq.Context()
    subscriber = Subscriber(ipc_endpoint, context=context)
    subscriber.close()
    subscriber.close()
    assert subscriber.closed
    assert not context.closed, "a context given by the caller stays open"
    assert subscriber.recv(timeout=0) is None
    assert list(subscriber) == []
    # term() blocks while any socket of the context is open.
    terminator = threading.Thread(target=context.term, daemon=True)
    terminator.start()
    terminator.join(WAIT_S)
    assert not terminator.is_alive(), "the subscriber's socket was left open"


def test_context_manager_closes_its_own_context(publisher: FakePublisher) -> None:
    with Subscriber(publisher.endpoint_by_transport["ipc"]) as subscriber:
        settle(publisher, subscriber)
    assert subscriber.closed
    subscriber.close()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"endpoints": []}, "at least one endpoint"),
        ({"endpoints": "nonsense"}, "cannot connect"),
        ({"symbols": ["AA PL"]}, "symbol 'AA PL'"),
        ({"symbols": ["_hb"]}, "reserved"),
        ({"heartbeat_timeout_s": 0}, "heartbeat_timeout_s"),
        (
            {"conflate": True, "recovery_endpoint": "ipc:///tmp/feedsvc/recovery"},
            "conflate and recovery_endpoint exclude each other",
        ),
        ({"recovery_endpoint": "ipc:///tmp/r", "recovery_attempts": 0}, "recovery_attempts"),
        ({"recovery_endpoint": "nonsense"}, "cannot connect to recovery endpoint"),
    ],
)
def test_wrong_arguments_say_what_is_wrong(
    ipc_endpoint: str, arguments: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Subscriber(**{"endpoints": ipc_endpoint, **arguments})
