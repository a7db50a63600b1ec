"""The blocking subscriber: `Subscriber`, with ``recv()``, iteration and ``with``; every
decision is `_SubscriberCore`'s, this only waits on the sockets with zmq polls."""

from __future__ import annotations

from collections.abc import Iterator
from types import TracebackType
from typing import Self

import zmq

from feedsvc.client.core import _SubscriberCore
from feedsvc.protocol.ticks import Tick


class Subscriber(_SubscriberCore):
    """A blocking subscriber: ``recv()``, ``for tick in subscriber``, ``with Subscriber(...)``.

    Parameters
    ----------
    endpoints:
        One endpoint or a list (e.g. ``ipc:///tmp/feedsvc/ticks``, ``tcp://127.0.0.1:5556``).
        Connecting to several endpoints of the same publisher is safe: duplicates are dropped.
    symbols:
        Exact symbols to receive ("AAPL" does not match "AAPLX").
    prefixes:
        Raw byte prefixes of the frame to subscribe to (b"SYN0" matches "SYN0001" ...).
        With neither symbols nor prefixes, every tick is received.
    conflate:
        Deliver only the newest tick per symbol: a slow consumer gets fresh data, not a backlog.
    rcvhwm, rcvbuf:
        Frames queued in ZeroMQ and kernel receive buffer bytes (0 = no limit / OS default); both
        bound how stale a slow consumer's data can get.
    heartbeat_timeout_s:
        Silence after which the feed counts as dead; default 3 announced heartbeat intervals
        (3 s before the first heartbeat).
    sync_endpoint:
        The service's ``sync.endpoint`` (e.g. ``ipc:///tmp/feedsvc/sync``): run the sync
        handshake (docs/sync-protocol.md) in ``sync()``, or on the first ``recv()``. Then the
        snapshot's last value of every symbol comes first (quiet symbols included), and from it
        on each symbol's seqs follow without gap or duplicate. None: no handshake.
    sync_timeout_s, sync_attempts:
        Each snapshot request waits this long for the reply, then for the marker; after this many
        failed requests ``SyncError`` is raised.
    recovery_endpoint:
        The service's ``recovery.endpoint`` (docs/recovery-protocol.md): on a gap in a symbol,
        its later ticks are held while the missing ones are asked for, then the recovered ticks
        and the held ones are delivered in seq order, so the symbol's stream is complete; every
        other symbol is delivered live meanwhile. What cannot be recovered (outside the
        service's window, its limits, no reply) is reported to on_gap as today, with
        ``recovery_tried`` and ``recovery_error``. Not with conflate.
    recovery_timeout_s, recovery_attempts, recovery_hold_ticks:
        Each recovery request waits this long for its reply and is sent at most this many
        times; at most this many ticks of a symbol are held meanwhile (beyond, its gap is
        reported and the held ticks go out).
    on_gap, on_restart, on_dead, on_alive:
        Called from inside ``recv()`` (or ``sync()``) on the matching event.
    context:
        A ZeroMQ context to use (kept open on close); by default the subscriber has its own.
    curve:
        Keys for a service with curve.enabled: ``CurveClientKeys.from_files(server NAME.key,
        own NAME.key_secret)``. Used on tcp endpoints (publisher and sync); ipc stays plain.
        With a key the server does not list, the connection is refused and nothing arrives:
        the subscriber reports the feed dead after heartbeat_timeout_s, and
        ``handshake_failure`` says why (also without ``curve``, against a Curve service).
    """

    _socket_class = zmq.Socket

    def sync(self) -> None:
        """Run the sync handshake now, if there is a sync endpoint and it has not succeeded yet.

        Usually takes a few milliseconds. Blocks at most about sync_attempts x 2 x sync_timeout_s,
        plus the back-off (0.1 s doubling, at most 1 s) and sync_timeout_s for the ready reply.
        Calling it again after a SyncError starts a new handshake.

        Raises
        ------
        SyncError
            when the service refuses, answers nonsense, or all attempts fail.
        """
        wait = self._begin_sync()
        while wait is not None:
            self._sync_poller(wait, zmq.Poller()).poll(wait.timeout_ms)
            wait = self._continue_sync()

    def recv(self, timeout: float | None = None) -> Tick | None:
        """The next tick, waiting up to `timeout` seconds (None = until one comes).

        Runs the sync handshake first if it is due (its own bounded waits are not counted in
        `timeout`; it may raise SyncError). Returns None when the timeout passes first, or once
        the subscriber is closed.
        """
        if self._sync_pending:
            self.sync()
        if self._recovering:
            self._serve_recovery()
        tick = self._take_ready()
        if tick is None:
            for wait_ms in self._poll_waits_ms(timeout):
                if self._recovering:
                    # Replies and re-sends are due too: wait on both sockets.
                    self._both_sockets().poll(self._recovery_wait_ms(wait_ms))
                    self._serve_recovery()
                else:
                    self._socket.poll(wait_ms)
                tick = self._take_ready()
                if tick is not None:
                    break
        return tick

    def _both_sockets(self) -> zmq.Poller:
        poller = self._recovery_poller
        if poller is None:
            poller = self._recovery_poller = zmq.Poller()
            poller.register(self._socket, zmq.POLLIN)
            poller.register(self._recovery_socket, zmq.POLLIN)
        return poller

    def __iter__(self) -> Iterator[Tick]:
        while not self._closed:
            tick = self.recv()
            if tick is not None:
                yield tick

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
