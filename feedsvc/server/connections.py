"""Who is connected and what was refused: connections per socket (from libzmq's monitor events),
the subscriptions SUBs sent, refused handshakes, open descriptors, and handing freed memory back
to the OS after subscribers left. The service loop feeds it; metrics and /healthz read it."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import resource
import time
from collections.abc import Callable
from typing import Final

import zmq
from zmq.utils.monitor import parse_monitor_message

from feedsvc.config import Config
from feedsvc.protocol.events import HANDSHAKE_FAILURES, HANDSHAKE_REJECT_REASONS
from feedsvc.server.access import (
    REFUSED_NETWORK,
    REFUSED_TOO_MANY_CONNECTIONS,
    ConnectionLimiter,
    PeerAuthenticator,
    SubscriptionLimiter,
)
from feedsvc.server.guard import WHERE_MONITOR, WHERE_SUBSCRIPTION, InputGuard
from feedsvc.server.sockets import MAX_SUBSCRIPTION_PREFIX_BYTES, SOCKET_NAMES

log = logging.getLogger("feedsvc.service")

# Subscription messages and monitor events read per pass at most (a burst waits in libzmq).
SUBSCRIPTIONS_PER_PASS: Final = 10_000
MONITOR_EVENTS_PER_PASS: Final = 10_000
# Descriptors the process needs besides its peers' connections (files, pipes, the mirror, HTTP).
FD_BASE_NEEDS: Final = 256
_FD_DIR: Final = "/proc/self/fd"
# After this many subscribers left, and at most this often, free memory is handed back to the
# OS: libzmq's queues of readers that left are freed in the middle of the heap, where glibc
# keeps them (1,000 subscribers that never read held +512 MB after they were gone).
TRIM_AFTER_DISCONNECTS: Final = 64
TRIM_INTERVAL_S: Final = 10.0


def _heap_trimmer() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where the C library has none."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def _source_fd(message: zmq.Frame) -> int:
    """The descriptor of the connection a message came from; -1 for one libzmq made itself (the
    unsubscriptions of a connection that ended, already forgotten at its DISCONNECTED event)."""
    try:
        return message.get(zmq.SRCFD)
    except zmq.ZMQError:
        return -1


class PeerAccounting:
    """The peers of the service's sockets, counted and bounded.

    Parameters
    ----------
    config:
        The caps: max_connections per socket, the subscription bounds.
    guard:
        Contains what a malformed monitor event or subscription raises (the loop goes on).
    """

    def __init__(self, config: Config, guard: InputGuard) -> None:
        self.guard = guard
        # Handshake failures of would-be subscribers (from the PUB socket's monitor).
        self.subscriber_handshake_failures = 0
        # Failed handshakes on every socket, by (socket name, reason): Curve rejections show here.
        self.rejected_handshakes = {
            (name, reason): 0
            for name in SOCKET_NAMES
            for reason in HANDSHAKE_REJECT_REASONS.values()
        }
        limits = {
            "publisher": config.publisher.max_connections,
            "ingest": config.ingest.max_connections,
            "sync": config.sync.max_connections,
            "recovery": config.recovery.max_connections,
        }
        self.connections = {name: ConnectionLimiter(limits[name]) for name in SOCKET_NAMES}
        self.subscriptions = SubscriptionLimiter(
            config.publisher.max_subscriptions_per_connection,
            config.publisher.max_subscriptions,
            MAX_SUBSCRIPTION_PREFIX_BYTES,
            config.publisher.max_subscription_bytes,
        )
        # Descriptors open and allowed, counted by `count_fds`.
        self.open_fds = 0
        self.fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self._trim_heap = _heap_trimmer()
        self._disconnects_since_trim = 0
        self._last_trim_at = 0.0

    @property
    def connected_by_socket(self) -> dict[str, int]:
        return {name: limiter.connected for name, limiter in self.connections.items()}

    def raise_fd_limit(self) -> None:
        """Lift the soft descriptor limit to the hard one: every connection takes one, and the
        per-socket caps (max_connections) are what bounds them, not an accident of the shell."""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard != resource.RLIM_INFINITY and soft < hard:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
                soft = hard
            except (ValueError, OSError) as error:
                log.warning(
                    "cannot raise the descriptor limit from %d to %d: %s", soft, hard, error
                )
        self.fd_limit = soft
        needed = FD_BASE_NEEDS + sum(
            limiter.max_connections for limiter in self.connections.values()
        )
        if soft != resource.RLIM_INFINITY and soft < needed:
            log.warning(
                "descriptor limit %d is below what the connection caps allow (%d: "
                "publisher/ingest/sync/recovery max_connections plus %d); raise it (ulimit -n) "
                "or lower the caps",
                soft,
                needed,
                FD_BASE_NEEDS,
            )

    def read_monitor(self, monitor: zmq.Socket, socket_name: str) -> None:
        """Account the connection events libzmq reported for one socket."""
        connections = self.connections[socket_name]
        is_publisher = socket_name == "publisher"
        for _ in range(MONITOR_EVENTS_PER_PASS):
            try:
                message = monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                event = parse_monitor_message(message)
                kind, fd = event["event"], event["value"]
                if kind == zmq.EVENT_ACCEPTED:
                    if is_publisher:
                        # A reused descriptor starts clean: subscriptions read after its last
                        # owner's DISCONNECTED event were counted against it.
                        self.subscriptions.disconnected(fd)
                    connections.accepted(fd)
                elif kind == zmq.EVENT_DISCONNECTED:
                    if connections.disconnected(fd) and is_publisher:
                        self.subscriptions.disconnected(fd)
                        self._disconnects_since_trim += 1
                elif kind & HANDSHAKE_FAILURES:
                    self.rejected_handshakes[socket_name, HANDSHAKE_REJECT_REASONS[kind]] += 1
                    if is_publisher:
                        self.subscriber_handshake_failures += 1
            except Exception as error:
                self.guard.contained(WHERE_MONITOR, error, b"".join(message))

    def read_subscriptions(self, pub: zmq.Socket) -> None:
        """Account the subscriptions SUBs sent; a connection over a bound is closed."""
        observe = self.subscriptions.observe
        for _ in range(SUBSCRIPTIONS_PER_PASS):
            try:
                message = pub.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                observe(message.bytes, _source_fd(message))
            except Exception as error:
                self.guard.contained(WHERE_SUBSCRIPTION, error, message.bytes)

    def trim_heap_after_disconnects(self, now: float) -> None:
        if (
            self._trim_heap is None
            or self._disconnects_since_trim < TRIM_AFTER_DISCONNECTS
            or now - self._last_trim_at < TRIM_INTERVAL_S
        ):
            return
        started = time.perf_counter()
        self._trim_heap(0)
        log.debug(
            "returned free memory to the OS after %d disconnects in %.1f ms",
            self._disconnects_since_trim,
            (time.perf_counter() - started) * 1e3,
        )
        self._disconnects_since_trim = 0
        self._last_trim_at = now

    def count_fds(self) -> None:
        try:
            self.open_fds = len(os.listdir(_FD_DIR))
        except OSError:
            self.open_fds = 0

    def refusal_counts(self, authenticator: PeerAuthenticator | None) -> dict[str, int]:
        """Refused handshakes and connections, by socket/reason, for the rate-limited log."""
        counts = {
            f"{name}/{reason}": count for (name, reason), count in self.rejected_handshakes.items()
        }
        for name, limiter in self.connections.items():
            counts[f"{name}/{REFUSED_TOO_MANY_CONNECTIONS}"] = limiter.refused
        for reason, count in self.subscriptions.refused_by_reason.items():
            counts[f"publisher/{reason}"] = count
        if authenticator is not None:
            for domain, count in authenticator.refused_by_domain.items():
                counts[f"{domain.removeprefix('feedsvc.')}/{REFUSED_NETWORK}"] = count
        return counts


def log_refused_connections(
    logged_before: dict[str, int], counts: dict[str, int], curve_on: bool
) -> None:
    """One warning with what was refused since the last one, by socket/reason."""
    since = {
        key: count - logged_before.get(key, 0)
        for key, count in counts.items()
        if count != logged_before.get(key, 0)
    }
    hint = (
        " (auth: key not in curve.authorized_keys; protocol: no Curve, wrong server key or "
        "not ZeroMQ; other: the peer hung up mid-handshake, often for those same reasons)"
        if curve_on
        else ""
    )
    log.warning(
        "rejected %d connection handshakes or connections since last report, by socket/reason: "
        "%s%s",
        sum(since.values()),
        since,
        hint,
    )
