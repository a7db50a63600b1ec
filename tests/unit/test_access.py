"""Connection and subscription accounting, and the allowed-networks rule (no sockets: the
descriptors used are ones no process has open, so closing them is a no-op)."""

from __future__ import annotations

from feedsvc.server.access import (
    REFUSED_SUBSCRIPTION_TOO_LONG,
    REFUSED_TOO_MANY_SUBSCRIPTIONS,
    ConnectionLimiter,
    SubscriptionLimiter,
    address_allowed,
    parse_networks,
)

NO_SUCH_FD = 1_000_000


def test_connections_beyond_the_cap_are_refused_and_slots_come_back() -> None:
    limiter = ConnectionLimiter(max_connections=2)
    assert limiter.accepted(NO_SUCH_FD) and limiter.accepted(NO_SUCH_FD + 1)
    assert not limiter.accepted(NO_SUCH_FD + 2)
    assert (limiter.connected, limiter.refused) == (2, 1)
    # The refused one was never counted: its disconnect changes nothing.
    assert not limiter.disconnected(NO_SUCH_FD + 2)
    assert limiter.disconnected(NO_SUCH_FD)
    assert limiter.accepted(NO_SUCH_FD + 3)
    assert limiter.connected == 2


def _subscribe(prefix: bytes) -> bytes:
    return b"\x01" + prefix


def _unsubscribe(prefix: bytes) -> bytes:
    return b"\x00" + prefix


def test_subscriptions_are_counted_per_connection_and_in_total() -> None:
    limiter = SubscriptionLimiter(
        per_connection=3, total=5, max_prefix_bytes=10, max_distinct_bytes=100
    )
    a, b = NO_SUCH_FD, NO_SUCH_FD + 1
    assert all(limiter.observe(_subscribe(b"A%d " % n), a) for n in range(3))
    assert not limiter.observe(_subscribe(b"A4 "), a)  # a fourth on one connection
    assert limiter.refused_by_reason[REFUSED_TOO_MANY_SUBSCRIPTIONS] == 1
    assert a not in limiter.count_by_fd and limiter.total == 0  # closed: libzmq drops them all
    assert all(limiter.observe(_subscribe(b"B%d " % n), b) for n in range(3))
    assert limiter.observe(_unsubscribe(b"B0 "), b)
    assert limiter.count_by_fd[b] == 2 and limiter.total == 2
    assert limiter.observe(_subscribe(b"C "), a) and limiter.observe(_subscribe(b"D "), a)
    assert limiter.observe(_subscribe(b"E "), a)
    assert not limiter.observe(_subscribe(b"F "), b)  # the total of 5 is reached
    assert limiter.total == 3 and limiter.total == sum(limiter.count_by_fd.values())


def test_a_prefix_longer_than_any_topic_closes_its_connection() -> None:
    limiter = SubscriptionLimiter(
        per_connection=10, total=10, max_prefix_bytes=4, max_distinct_bytes=100
    )
    assert limiter.observe(_subscribe(b"ABC "), NO_SUCH_FD)
    assert not limiter.observe(_subscribe(b"ABCDE"), NO_SUCH_FD)
    assert limiter.refused_by_reason[REFUSED_SUBSCRIPTION_TOO_LONG] == 1
    assert limiter.total == 0


def test_unsubscriptions_of_unknown_connections_and_empty_messages_change_nothing() -> None:
    limiter = SubscriptionLimiter(
        per_connection=10, total=10, max_prefix_bytes=10, max_distinct_bytes=100
    )
    assert limiter.observe(_unsubscribe(b"X "), -1)
    assert limiter.observe(b"", NO_SUCH_FD)
    limiter.forget(NO_SUCH_FD)
    assert limiter.total == 0 and limiter.count_by_fd == {}


def test_addresses_are_matched_against_networks() -> None:
    networks = parse_networks(["10.1.0.0/16", "127.0.0.1", "::1/128"])
    assert address_allowed("10.1.200.3", networks)
    assert address_allowed("127.0.0.1", networks)
    assert address_allowed("::1", networks)
    assert address_allowed("::ffff:10.1.0.9", networks)  # IPv4 client of a dual-stack socket
    assert not address_allowed("10.2.0.1", networks)
    assert not address_allowed("127.0.0.2", networks)
    assert not address_allowed("", networks)  # no address (ipc) never matches a network
    assert not address_allowed("not an address", networks)


def test_distinct_prefix_bytes_are_bounded_and_shared_prefixes_count_once() -> None:
    limiter = SubscriptionLimiter(
        per_connection=100, total=100, max_prefix_bytes=10, max_distinct_bytes=12
    )
    a, b, c = NO_SUCH_FD, NO_SUCH_FD + 1, NO_SUCH_FD + 2
    assert limiter.observe(_subscribe(b"AAPL "), a) and limiter.observe(_subscribe(b"AAPL "), b)
    assert limiter.observe(_subscribe(b"AAPL "), b)  # twice on one connection, as SUBs may
    assert limiter.distinct_bytes == 5 and limiter.total == 3
    assert limiter.observe(_subscribe(b"MSFT "), c)
    assert not limiter.observe(_subscribe(b"IBM "), c)  # 14 distinct bytes: over 12
    assert limiter.distinct_bytes == 5  # c's MSFT went with its connection
    limiter.forget(a)
    assert limiter.distinct_bytes == 5  # b still holds AAPL
    assert limiter.observe(_unsubscribe(b"AAPL "), b) and limiter.distinct_bytes == 5
    assert limiter.observe(_unsubscribe(b"AAPL "), b)
    assert limiter.distinct_bytes == 0 and limiter.total == 0
