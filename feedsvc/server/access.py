"""Who may connect, and how much one connection may take.

- `PeerAuthenticator`: the service's ZAP handler (pyzmq's ThreadAuthenticator): Curve keys when
  curve.enabled, and each socket's ``allowed_networks`` for tcp peers. libzmq asks it before a
  handshake completes, with or without Curve, so a refused peer never receives a byte.
- `ConnectionLimiter`: one socket's open connections, from its monitor's ACCEPTED and
  DISCONNECTED events (whose value is the connection's file descriptor); a connection beyond
  the socket's cap is closed as it arrives.
- `SubscriptionLimiter`: subscriptions per connection and in total, from the XPUB socket's
  subscription messages (ZMQ_SRCFD says which connection sent one); a connection beyond a bound
  is closed, which makes libzmq drop every subscription it held.

libzmq has no call to drop one peer of a bound socket; shutting down the connection's socket
(not closing the descriptor, which libzmq owns) makes its I/O thread see the end of the stream
and tear the connection down cleanly.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Iterable
from typing import Final

import zmq
from zmq.auth.thread import ThreadAuthenticator

log = logging.getLogger("feedsvc.access")

# Subscription messages: a command byte, then the topic prefix.
SUBSCRIBE: Final = 1
UNSUBSCRIBE: Final = 0
# Label values of feedsvc_connections_refused_total{socket, reason}, and of the refusal log.
REFUSED_TOO_MANY_CONNECTIONS: Final = "too_many_connections"
REFUSED_NETWORK: Final = "network_not_allowed"
REFUSED_TOO_MANY_SUBSCRIPTIONS: Final = "too_many_subscriptions"
REFUSED_SUBSCRIPTION_TOO_LONG: Final = "subscription_too_long"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def zap_domain(socket_name: str) -> str:
    """The ZAP domain of one of the service's sockets: it tells the handler which socket asks."""
    return f"feedsvc.{socket_name}"


def close_connection(fd: int) -> bool:
    """Shut down the connection on descriptor `fd` (libzmq then closes it); False if `fd` is no
    longer a socket."""
    try:
        connection = socket.socket(fileno=fd)
    except OSError:
        return False
    try:
        connection.shutdown(socket.SHUT_RDWR)
        return True
    except OSError:
        return False
    finally:
        connection.detach()  # the descriptor stays libzmq's


def parse_networks(networks: Iterable[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(network, strict=False) for network in networks)


def address_allowed(address: str, networks: tuple[Network, ...]) -> bool:
    """Whether a ZAP request's peer address lies in one of `networks`."""
    try:
        peer = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(peer, ipaddress.IPv6Address) and peer.ipv4_mapped is not None:
        peer = peer.ipv4_mapped  # an IPv4 client of a dual-stack socket
    return any(peer in network for network in networks)


class PeerAuthenticator(ThreadAuthenticator):
    """pyzmq's ZAP handler, refusing tcp peers outside a socket's allowed networks first.

    Parameters
    ----------
    context:
        The service's context; its sockets' ZAP requests come here.
    networks_by_domain:
        ZAP domain (`zap_domain`) -> networks a peer must be in; a domain not listed admits
        any address.
    """

    def __init__(
        self, context: zmq.Context, networks_by_domain: dict[str, tuple[Network, ...]]
    ) -> None:
        # The authenticator logs each decision at debug level: kept out of the service's log,
        # where refused handshakes are counted and reported rate-limited instead.
        zap_log = logging.getLogger("feedsvc.access.zap")
        zap_log.setLevel(logging.INFO)
        super().__init__(context, log=zap_log)
        self.networks_by_domain = networks_by_domain
        self.refused_by_domain: dict[str, int] = dict.fromkeys(networks_by_domain, 0)
        self.internal_errors = 0

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        # An exception here would end the handler's thread, and every later handshake would
        # wait for it forever: each request is contained, and refused if it fails.
        try:
            if len(msg) >= 6:
                domain = msg[2].decode("utf-8", "replace")
                networks = self.networks_by_domain.get(domain)
                if networks and not address_allowed(msg[3].decode("utf-8", "replace"), networks):
                    self.refused_by_domain[domain] += 1
                    self._send_zap_reply(msg[1], b"400", b"Address not allowed")
                    return
            await super().handle_zap_message(msg)
        except Exception:
            self.internal_errors += 1
            if len(msg) >= 2:
                self._send_zap_reply(msg[1], b"500", b"Internal error")


class ConnectionLimiter:
    """One socket's open connections, kept from its monitor's events; refuses past a cap.

    Parameters
    ----------
    max_connections:
        Connections at once; one more is closed as soon as its ACCEPTED event is read.
    """

    def __init__(self, max_connections: int) -> None:
        self.max_connections = max_connections
        self.open_fds: set[int] = set()
        self.refused = 0

    @property
    def connected(self) -> int:
        return len(self.open_fds)

    def accepted(self, fd: int) -> bool:
        """A connection arrived; False (and it is closed) if the socket is full."""
        if len(self.open_fds) >= self.max_connections:
            self.refused += 1
            close_connection(fd)
            return False
        self.open_fds.add(fd)
        return True

    def disconnected(self, fd: int) -> bool:
        """A connection ended; True if it was one of the open ones."""
        if fd in self.open_fds:
            self.open_fds.remove(fd)
            return True
        return False


class SubscriptionLimiter:
    """Subscriptions held per connection and in total, from XPUB subscription messages.

    libzmq keeps every subscription in a trie with a node per prefix byte, and each disconnect of
    any subscriber walks the whole trie in the publishing thread (measured ~85 ns a node here):
    the bound on the distinct prefixes' bytes is what keeps that walk, and the trie's memory,
    short.

    Parameters
    ----------
    per_connection, total:
        How many subscriptions one connection, and all together, may hold.
    max_prefix_bytes:
        The longest useful prefix (the longest topic's).
    max_distinct_bytes:
        The bytes of all distinct prefixes together.

    A connection whose subscription goes beyond any bound is closed (and counted); libzmq then
    drops every subscription it held.
    """

    def __init__(
        self, per_connection: int, total: int, max_prefix_bytes: int, max_distinct_bytes: int
    ) -> None:
        self.per_connection = per_connection
        self.total_bound = total
        self.max_prefix_bytes = max_prefix_bytes
        self.max_distinct_bytes = max_distinct_bytes
        # fd -> prefix -> how many times that connection subscribed it.
        self.prefixes_by_fd: dict[int, dict[bytes, int]] = {}
        self.count_by_fd: dict[int, int] = {}
        self._connections_by_prefix: dict[bytes, int] = {}
        self.total = 0
        self.distinct_bytes = 0
        # Connections closed for a subscription, until their DISCONNECTED event: what they still
        # send is ignored, and each counts once.
        self._closing_fds: set[int] = set()
        self.refused_by_reason = dict.fromkeys(
            (REFUSED_TOO_MANY_SUBSCRIPTIONS, REFUSED_SUBSCRIPTION_TOO_LONG), 0
        )

    def observe(self, message: bytes, fd: int) -> bool:
        """Account one subscription message from connection `fd`; False if that connection was
        closed for it."""
        if not message:
            return True
        if fd in self._closing_fds:
            return False
        prefix = message[1:]
        if message[0] == SUBSCRIBE:
            if len(prefix) > self.max_prefix_bytes:
                return self._refuse(fd, REFUSED_SUBSCRIPTION_TOO_LONG)
            count = self.count_by_fd.get(fd, 0) + 1
            new_prefix = prefix not in self._connections_by_prefix
            if (
                count > self.per_connection
                or self.total >= self.total_bound
                or (new_prefix and self.distinct_bytes + len(prefix) > self.max_distinct_bytes)
            ):
                return self._refuse(fd, REFUSED_TOO_MANY_SUBSCRIPTIONS)
            prefixes = self.prefixes_by_fd.setdefault(fd, {})
            if prefix not in prefixes:
                self._connections_by_prefix[prefix] = self._connections_by_prefix.get(prefix, 0) + 1
                if new_prefix:
                    self.distinct_bytes += len(prefix)
            prefixes[prefix] = prefixes.get(prefix, 0) + 1
            self.count_by_fd[fd] = count
            self.total += 1
        elif message[0] == UNSUBSCRIBE:
            prefixes = self.prefixes_by_fd.get(fd)
            if prefixes and prefix in prefixes:
                self._drop(fd, prefix, 1)
        return True

    def _drop(self, fd: int, prefix: bytes, times: int) -> None:
        prefixes = self.prefixes_by_fd[fd]
        prefixes[prefix] -= times
        self.count_by_fd[fd] -= times
        self.total -= times
        if prefixes[prefix] == 0:
            del prefixes[prefix]
            remaining = self._connections_by_prefix[prefix] - 1
            if remaining:
                self._connections_by_prefix[prefix] = remaining
            else:
                del self._connections_by_prefix[prefix]
                self.distinct_bytes -= len(prefix)

    def _refuse(self, fd: int, reason: str) -> bool:
        self.refused_by_reason[reason] += 1
        self.forget(fd)
        if close_connection(fd):
            self._closing_fds.add(fd)
        return False

    def disconnected(self, fd: int) -> None:
        """Connection `fd` ended (its DISCONNECTED event): libzmq dropped its subscriptions."""
        self._closing_fds.discard(fd)
        self.forget(fd)

    def forget(self, fd: int) -> None:
        """Drop what connection `fd` held."""
        for prefix, times in list(self.prefixes_by_fd.get(fd, {}).items()):
            self._drop(fd, prefix, times)
        self.prefixes_by_fd.pop(fd, None)
        self.count_by_fd.pop(fd, None)
