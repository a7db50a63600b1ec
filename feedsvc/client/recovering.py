"""Gap recovery's socket side, mixed into `_SubscriberCore`: the DEALER to the service's
recovery endpoint, and moving requests, replies and released ticks between it, `GapFiller`
(feedsvc.client.recovery: every decision) and the subscriber's delivery queue."""

from __future__ import annotations

import contextlib
import math
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import zmq

from feedsvc.client.recovery import GapFiller
from feedsvc.client.sequence import Gap
from feedsvc.protocol.ticks import Tick

if TYPE_CHECKING:
    from feedsvc.client.core import SubscriberStats

# Replies read per step at most (each holds up to recovery.max_reply_bytes).
REPLIES_PER_STEP = 64


class _RecoveryRunner:
    """The socket side of gap recovery (see the module's description)."""

    # Set up by _SubscriberCore before these run.
    stats: SubscriberStats
    recovery_endpoint: str | None
    _filler: GapFiller | None
    _recovering: dict[str, Any]
    _recovery_socket: zmq.Socket | None
    _owned_recovery_socket: zmq.Socket | None
    _closed: bool
    _backlog: deque[Tick]
    _take_ready: Callable[[], Tick | None]
    _take_backlog: Callable[[], Tick | None]
    _count_gap: Callable[[Gap], None]
    _open_connected: Callable[[int, str, str, str], tuple[zmq.Socket, zmq.Socket]]

    def _open_recovery_dealer(self, endpoint: str) -> None:
        self._owned_recovery_socket, self._recovery_socket = self._open_connected(
            zmq.DEALER,
            endpoint,
            "recovery endpoint",
            "ipc:///tmp/feedsvc/recovery or tcp://host:5559",
        )

    @property
    def recovering(self) -> bool:
        """True while some symbol's ticks are held for a recovery under way."""
        return bool(self._recovering)

    def _serve_recovery(self) -> None:
        """Read the replies that arrived and move on: re-sends, releases."""
        dealer, filler = self._recovery_socket, self._filler
        if dealer is None or filler is None or self._closed:
            return
        for _ in range(REPLIES_PER_STEP):
            try:
                parts = dealer.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            filler.on_reply(parts)
        self._pump_recovery()

    def _pump_recovery(self) -> None:
        """Send the requests due and queue what the filler released for delivery."""
        filler, dealer = self._filler, self._recovery_socket
        if filler is None or dealer is None or self._closed:
            return
        for request in filler.take_requests(time.monotonic()):
            # Not taken (no connection yet): its timeout sends it again.
            with contextlib.suppress(zmq.Again):
                dealer.send(request, zmq.NOBLOCK)
        released, filler.released = filler.released, []
        if released:
            backlog, count_gap = self._backlog, self._count_gap
            for kind, item in released:
                if kind == "tick":
                    backlog.append(item)
                else:
                    count_gap(item)
            if backlog and not self._closed:
                self._take_ready = self._take_backlog
        self._copy_recovery_stats()

    def _copy_recovery_stats(self) -> None:
        assert self._filler is not None
        source, stats = self._filler.stats, self.stats
        stats.recovery_requests = source.requests
        stats.recovered = source.recovered
        stats.unrecoverable_gaps = source.unrecoverable_gaps
        stats.unrecoverable_ticks = source.unrecoverable_ticks
        stats.recoveries = source.recoveries
        stats.recovery_latency_total_s = source.latency_total_s
        stats.recovery_latency_max_s = source.latency_max_s

    def _recovery_wait_ms(self, wait_ms: int) -> int:
        """`wait_ms`, shortened to when a recovery request is due again."""
        if self._filler is None or not self._recovering:
            return wait_ms
        due_at = self._filler.next_due_at()
        if due_at is None:
            return wait_ms
        return max(0, min(wait_ms, math.ceil((due_at - time.monotonic()) * 1000)))
