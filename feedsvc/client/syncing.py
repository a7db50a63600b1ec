"""The sync handshake on a subscriber's sockets: the REQ socket (Lazy Pirate), the marker
subscription, reading SUB while it waits, and applying the snapshot once synced.

`SyncHandshake` (handshake.py) makes every protocol decision; `_SyncRunner` does the socket work
around it as a generator that yields a `_SyncWait` whenever it has to wait, so the blocking and
the asyncio subscriber share all of it and only wait their own way.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar

import zmq

from feedsvc.client.handshake import (
    SYNC_SUBSCRIBE_SETTLE_S,
    SyncHandshake,
    SyncSnapshot,
    new_sync_id,
)
from feedsvc.protocol.ticks import CONTROL_PREFIX, Tick

if TYPE_CHECKING:
    from feedsvc.client.conflate import Conflator
    from feedsvc.client.core import SubscriberStats, _Settings
    from feedsvc.client.sequence import Duplicate, Gap, Restart, SequenceTracker

log = logging.getLogger("feedsvc.client")

_CONTROL_START: Final = CONTROL_PREFIX.encode()


@dataclass(frozen=True, slots=True)
class _SyncWait:
    """What the handshake waits for: its SUB socket, the REQ socket too if `with_req`."""

    with_req: bool
    timeout_s: float

    @property
    def timeout_ms(self) -> int:
        return max(1, math.ceil(self.timeout_s * 1000))


_Poller = TypeVar("_Poller", bound=zmq.Poller)


class _SyncRunner:
    """The sync handshake's part of `_SubscriberCore` (feedsvc.client.core), which it is mixed
    into: the core owns the sockets and the delivery state; this runs the handshake on them."""

    # Set up by _SubscriberCore.__init__ before _init_sync runs.
    sync_endpoint: str | None
    stats: SubscriberStats
    tracker: SequenceTracker
    _settings: _Settings
    _socket: zmq.Socket
    _owned_socket: zmq.Socket
    _closed: bool
    _drain_limit: int
    _last_message_at: float
    _conflator: Conflator | None
    _backlog: deque[Tick]
    _take_ready: Callable[[], Tick | None]
    _take_backlog: Callable[[], Tick | None]
    _accept: Callable[[bytes], Tick | None]
    _sequenced: Callable[[Tick, Gap | Restart | Duplicate | None], Tick | None]
    _restarted: Callable[..., None]
    _open_socket: Callable[[int], tuple[zmq.Socket, zmq.Socket]]
    _open_connected: Callable[[int, str, str, str], tuple[zmq.Socket, zmq.Socket]]

    def _init_sync(self) -> None:
        """The handshake's state before the first one (due at once with a sync endpoint)."""
        # One id for the subscriber's life: sent in every handshake, and names its monitor.
        self.client_id = new_sync_id()
        self._sync_pending = self.sync_endpoint is not None
        # The pending sync follows a publisher restart: live ticks already flow in the new
        # epoch, and the snapshot only fills in the symbols that have not ticked in it yet.
        self._resyncing = False
        self._sync_steps: Generator[_SyncWait, None, SyncSnapshot] | None = None
        self._sync_req_owned: zmq.Socket | None = None
        self._sync_req: zmq.Socket | None = None
        # SUB frames read during the handshake, in arrival order, processed once it is done.
        self._sync_frames: list[bytes] = []
        self._snapshot: dict[str, dict[str, Any]] | None = None
        self._snapshot_epoch: int | None = None
        # Every epoch the snapshot covered (one per shard).
        self._snapshot_epochs: frozenset[int] = frozenset()
        self._snapshot_seq_by_symbol: dict[str, int] = {}

    def _begin_sync(self) -> _SyncWait | None:
        """Start the handshake if it is due; returns its first wait, or None if nothing is due."""
        if not self._sync_pending or self._closed:
            return None
        if self._sync_steps is not None:
            # An earlier sync() was abandoned (e.g. its task cancelled): its finally cleans up.
            self._sync_steps.close()
        self._sync_steps = self._handshake_steps()
        return self._continue_sync()

    def _continue_sync(self) -> _SyncWait | None:
        """Run the handshake to its next wait; None when it is over (or the subscriber closed).

        Raises SyncError from the handshake.
        """
        if self._closed or self._sync_steps is None:
            return None
        try:
            return next(self._sync_steps)
        except StopIteration as done:
            self._sync_steps = None
            self._finish_sync(done.value)
            return None

    def _sync_poller(self, wait: _SyncWait, poller: _Poller) -> _Poller:
        """`poller` (blocking or asyncio) set up for what the handshake waits for."""
        poller.register(self._owned_socket, zmq.POLLIN)
        if wait.with_req and self._sync_req_owned is not None:
            poller.register(self._sync_req_owned, zmq.POLLIN)
        return poller

    def _handshake_steps(self) -> Generator[_SyncWait, None, SyncSnapshot]:
        """The handshake's socket work (docs/sync-protocol.md, client steps 1 to 7); it yields
        whenever it has to wait, and the subscriber class waits its own way.

        No user callback runs in here, so close() can always abandon it. Returns the snapshot.
        """
        assert self.sync_endpoint is not None
        handshake = SyncHandshake(
            self.sync_endpoint,
            self._settings.sync_symbols,
            subscriptions=self._settings.subscriptions,
            attempts=self._settings.sync_attempts,
            timeout_s=self._settings.sync_timeout_s,
            client=self.client_id,
        )
        try:
            if self._sync_req is None:
                self._open_sync_req()
            while True:
                if not self._resyncing:
                    self._drop_frames_before_snapshot(handshake)
                request = handshake.start_attempt()
                self.stats.sync_attempts += 1
                reply = yield from self._sync_attempt(handshake, request)
                if handshake.synced:
                    break
                if reply is None:
                    # Lazy Pirate: a REQ socket whose reply was lost can never send again.
                    self._close_sync_req()
                    self._open_sync_req()
                yield from self._read_sub_while_waiting(handshake, handshake.attempt_failed())
            snapshot = handshake.snapshot
            assert snapshot is not None
            ready_reply = yield from self._sync_request(handshake, handshake.ready_request())
            if ready_reply is None or not handshake.ready_accepted(ready_reply):
                # Only the service's count of synced clients (--wait-subscribers) misses it.
                log.warning(
                    "sync with %s: no ok reply to ready within %g s; receiving anyway",
                    self.sync_endpoint,
                    self._settings.sync_timeout_s,
                )
            return snapshot
        finally:
            self._close_sync_req()

    def _sync_attempt(
        self, handshake: SyncHandshake, request: bytes
    ) -> Generator[_SyncWait, None, bytes | None]:
        """Subscribe the marker, send the snapshot request, await the reply then the marker.

        Returns the reply, None if it did not come in time.
        """
        marker_subscription = handshake.marker_subscription
        # Before the request: the marker is published right after the snapshot is taken.
        self._socket.setsockopt(zmq.SUBSCRIBE, marker_subscription)
        try:
            yield from self._read_sub_while_waiting(handshake, SYNC_SUBSCRIBE_SETTLE_S)
            reply = yield from self._sync_request(handshake, request)
            if reply is not None:
                handshake.accept_reply(reply)
                if handshake.refused_for_now:
                    return reply
                yield from self._read_sub_while_waiting(
                    handshake, handshake.timeout_s, lambda: True if handshake.synced else None
                )
            return reply
        finally:
            # Also after success: a marker topic is never used again.
            self._socket.setsockopt(zmq.UNSUBSCRIBE, marker_subscription)

    def _sync_request(
        self, handshake: SyncHandshake, request: bytes
    ) -> Generator[_SyncWait, None, bytes | None]:
        """Send `request` on REQ; the reply, or None if it did not come within the timeout."""
        req = self._sync_req
        assert req is not None
        try:
            req.send(request, zmq.NOBLOCK)
        except zmq.Again:
            # Nowhere to queue it yet: waiting out the timeout makes it an ordinary lost reply.
            return (yield from self._read_sub_while_waiting(handshake, handshake.timeout_s))

        def reply_if_any() -> bytes | None:
            try:
                return req.recv(zmq.NOBLOCK)
            except zmq.Again:
                return None

        return (
            yield from self._read_sub_while_waiting(
                handshake, handshake.timeout_s, reply_if_any, with_req=True
            )
        )

    def _read_sub_while_waiting(
        self,
        handshake: SyncHandshake,
        timeout_s: float,
        done: Callable[[], Any] | None = None,
        *,
        with_req: bool = False,
    ) -> Generator[_SyncWait, None, Any]:
        """Keep reading SUB until `done()` returns something other than None (returned; an empty
        reply is a reply too) or `timeout_s` passes (returns None); `with_req` wakes up for the REQ
        socket too."""
        deadline = time.monotonic() + timeout_s
        while True:
            # SUB is read all along: a full receive queue would make the publisher drop the
            # marker and the first live ticks.
            self._buffer_sub_frames(handshake)
            result = None if done is None else done()
            if result is not None:
                return result
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                return None
            yield _SyncWait(with_req, remaining_s)

    def _buffer_sub_frames(self, handshake: SyncHandshake) -> None:
        """Read what is queued on SUB: the marker goes to the handshake, the rest is kept."""
        recv, keep, is_marker = self._socket.recv, self._sync_frames.append, handshake.see_frame
        for _ in range(self._drain_limit):
            try:
                frame = recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if not is_marker(frame):
                keep(frame)

    def _drop_frames_before_snapshot(self, handshake: SyncHandshake) -> None:
        """Drop the frames read so far, before a new snapshot request.

        They were all published before the snapshot this request will get, so it covers them;
        keeping them through every failed attempt would only cost memory.
        """
        self._buffer_sub_frames(handshake)
        stats = self.stats
        for frame in self._sync_frames:
            if frame[:1] != _CONTROL_START:
                stats.received += 1
                stats.snapshot_overlap += 1
        self._sync_frames.clear()

    def _finish_sync(self, snapshot: SyncSnapshot) -> None:
        """Apply the snapshot: baselines, then its ticks and the kept ones queued for delivery."""
        self._sync_pending = False
        if self._resyncing:
            self._finish_resync(snapshot)
            return
        # The public snapshot keeps its documented shape, {"seq", "tick"} per symbol.
        self._snapshot = {
            symbol: {"seq": entry["seq"], "tick": entry["tick"]}
            for symbol, entry in snapshot.entries.items()
        }
        self._snapshot_epoch = snapshot.epoch
        self._snapshot_epochs = frozenset(snapshot.epoch_by_shard.values())
        self._snapshot_seq_by_symbol = {
            symbol: entry["seq"] for symbol, entry in snapshot.entries.items()
        }
        # The marker came from the publisher: it is alive now.
        self._last_message_at = time.monotonic()
        snapshot_ticks, restarts = snapshot.apply(self.tracker)
        self.stats.syncs += 1
        for restart in restarts:
            self._restarted(restart, resync=False)  # this snapshot is the new epoch's
        self.stats.snapshot_ticks += len(snapshot_ticks)
        frames, self._sync_frames = self._sync_frames, []
        accept = self._accept
        kept_ticks = [tick for tick in map(accept, frames) if tick is not None]
        if self._closed:
            return  # a callback closed the subscriber
        if self._conflator is not None:
            for tick in (*snapshot_ticks, *kept_ticks):
                self._conflator.offer(tick)
            self.stats.conflated = self._conflator.conflated
        else:
            self._backlog.extend(snapshot_ticks)
            self._backlog.extend(kept_ticks)
            self._take_ready = self._take_backlog

    def _finish_resync(self, snapshot: SyncSnapshot) -> None:
        """After a restart: the ticks read meanwhile are live ones of the new epoch and go out
        first; then the snapshot's tick of each symbol not seen in the new epoch yet, checked
        like a live one (so the ticks before it in the epoch count as missed)."""
        self._resyncing = False
        self.stats.syncs += 1
        self._last_message_at = time.monotonic()
        frames, self._sync_frames = self._sync_frames, []
        ticks = [tick for tick in map(self._accept, frames) if tick is not None]
        tracker = self.tracker
        # Entries of an epoch not followed yet (another restart since the request) wait for
        # that restart's own re-sync.
        followed = [epoch for epoch in snapshot.epoch_by_shard.values() if tracker.follows(epoch)]
        if followed:
            self._snapshot_epoch, self._snapshot_epochs = followed[0], frozenset(followed)
            self._snapshot_seq_by_symbol = {}
            for symbol, entry in snapshot.entries.items():
                tick = entry["tick"]
                if (
                    tick is None
                    or entry["epoch"] not in self._snapshot_epochs
                    or tracker.last_seq(symbol, entry["epoch"]) is not None
                ):
                    continue
                self._snapshot_seq_by_symbol[symbol] = entry["seq"]
                # Checked like a live tick: a gap before it is recovered like any other.
                if self._sequenced(tick, tracker.observe(tick)) is not None:
                    self.stats.snapshot_ticks += 1
                    ticks.append(tick)
        # Another restart since the request: its own re-sync follows.
        if self._closed:
            return
        if self._conflator is not None:
            for tick in ticks:
                self._conflator.offer(tick)
            self.stats.conflated = self._conflator.conflated
        else:
            self._backlog.extend(ticks)
            self._take_ready = self._take_backlog

    def _open_sync_req(self) -> None:
        assert self.sync_endpoint is not None
        self._sync_req_owned, self._sync_req = self._open_connected(
            zmq.REQ,
            self.sync_endpoint,
            "sync endpoint",
            "ipc:///tmp/feedsvc/sync or tcp://host:5558",
        )

    def _close_sync_req(self) -> None:
        if self._sync_req_owned is not None:
            self._sync_req_owned.close(linger=0)
            self._sync_req_owned = self._sync_req = None
