"""What both subscribers share: `_SubscriberCore` sets up the SUB socket (with its defaults,
DEFAULT_RCVHWM and the others), decodes and checks every frame (sequence, conflation, heartbeats
and liveness) and counts it in `SubscriberStats`; the sync handshake is mixed in from syncing.py.
The blocking and the asyncio front ends (blocking.py, aio.py) only add the way they wait.

Never imports the server side (service, publisher, ingest, config).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Self

import orjson
import zmq

from feedsvc.client.conflate import Conflator
from feedsvc.client.diagnostics import (
    SilenceReason,
    open_handshake_monitor,
    queued_handshake_failures,
)
from feedsvc.client.handshake import DEFAULT_SYNC_ATTEMPTS, DEFAULT_SYNC_TIMEOUT_S
from feedsvc.client.recovering import _RecoveryRunner
from feedsvc.client.recovery import (
    DEFAULT_RECOVERY_ATTEMPTS,
    DEFAULT_RECOVERY_HOLD_TICKS,
    DEFAULT_RECOVERY_TIMEOUT_S,
    GAVE_UP_RESTART,
    GapFiller,
)
from feedsvc.client.sequence import Duplicate, Gap, Restart, SequenceTracker
from feedsvc.client.syncing import _SyncRunner
from feedsvc.curve import CurveClientKeys
from feedsvc.curve import connect as curve_connect
from feedsvc.protocol.ticks import (
    CONTROL_PREFIX,
    HEARTBEAT_TOPIC,
    SHARD_PATTERN,
    Tick,
    symbol_problem,
    topic_prefix,
)

DEFAULT_RCVHWM: Final = 10_000
DEFAULT_RCVBUF: Final = 262_144
# A feed is dead after this many announced heartbeat intervals without any message.
HEARTBEAT_TIMEOUT_INTERVALS: Final = 3
# Used until the first heartbeat announces the publisher's interval.
DEFAULT_HEARTBEAT_TIMEOUT_S: Final = 3.0
# Longest single poll, so a closed subscriber or a changed timeout is noticed.
MAX_POLL_S: Final = 0.5
# Frames read per receive step at most when rcvhwm is 0 (unbounded), so recv timeouts still hold.
UNBOUNDED_DRAIN_LIMIT: Final = 100_000

_HEARTBEAT_PREFIX: Final = topic_prefix(HEARTBEAT_TOPIC)
_CONTROL_START: Final = CONTROL_PREFIX.encode()
# What a malformed frame raises on the way to a tick: bad JSON (ValueError), a missing field
# (KeyError), a payload that is not an object or a field of the wrong type (TypeError).
_MALFORMED_ERRORS: Final = (ValueError, KeyError, TypeError)


@dataclass(slots=True)
class SubscriberStats:
    """Counters of one subscriber. Every tick frame received, and every tick of the sync snapshot,
    ends up in exactly one of delivered, conflated, duplicates, snapshot_overlap or malformed, or
    is still pending (in the conflator, or queued behind the snapshot)."""

    received: int = 0
    delivered: int = 0
    conflated: int = 0
    gaps: int = 0
    missed: int = 0
    missed_by_symbol: dict[str, int] = field(default_factory=dict)
    restarts: int = 0
    heartbeats: int = 0
    heartbeat_misses: int = 0
    duplicates: int = 0
    malformed: int = 0
    # Sync handshake: snapshot requests sent, snapshot ticks delivered first, and ticks dropped
    # because the snapshot already covered them (expected, unlike duplicates).
    sync_attempts: int = 0
    # Handshakes completed: the first, and one after each publisher restart.
    syncs: int = 0
    snapshot_ticks: int = 0
    snapshot_overlap: int = 0
    # Connection handshakes that failed (see Subscriber.handshake_failure); counted while the
    # feed is silent, which is when they matter.
    handshake_failures: int = 0
    # Gap recovery (recovery_endpoint): requests sent, ticks recovered and delivered in place,
    # gaps (and their ticks) that could not be recovered (also counted in gaps and missed), and
    # how long recoveries took, first gap of a symbol to the release of its held ticks.
    recovery_requests: int = 0
    recovered: int = 0
    unrecoverable_gaps: int = 0
    unrecoverable_ticks: int = 0
    recoveries: int = 0
    recovery_latency_total_s: float = 0.0
    recovery_latency_max_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        """The counters as plain JSON-able data (a copy)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True, slots=True)
class _Settings:
    """The constructor's arguments, checked and normalised once (described on `Subscriber`)."""

    endpoints: tuple[str, ...]
    subscriptions: tuple[bytes, ...]
    # The symbols to ask the sync service for; None asks for every symbol.
    sync_symbols: tuple[str, ...] | None
    conflate: bool
    rcvhwm: int
    rcvbuf: int
    heartbeat_timeout_s: float | None
    sync_endpoint: str | None
    sync_timeout_s: float
    sync_attempts: int
    recovery_endpoint: str | None = None
    recovery_timeout_s: float = DEFAULT_RECOVERY_TIMEOUT_S
    recovery_attempts: int = DEFAULT_RECOVERY_ATTEMPTS
    recovery_hold_ticks: int = DEFAULT_RECOVERY_HOLD_TICKS

    @classmethod
    def checked(
        cls,
        endpoints: str | Sequence[str],
        symbols: Iterable[str],
        prefixes: Iterable[str | bytes],
        *,
        conflate: bool,
        rcvhwm: int,
        rcvbuf: int,
        heartbeat_timeout_s: float | None,
        sync_endpoint: str | None,
        sync_timeout_s: float,
        sync_attempts: int,
        recovery_endpoint: str | None = None,
        recovery_timeout_s: float = DEFAULT_RECOVERY_TIMEOUT_S,
        recovery_attempts: int = DEFAULT_RECOVERY_ATTEMPTS,
        recovery_hold_ticks: int = DEFAULT_RECOVERY_HOLD_TICKS,
    ) -> Self:
        """The settings; ValueError says which argument is wrong and how."""
        endpoint_list = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        symbol_list, prefix_list = list(symbols), list(prefixes)
        subscriptions = _subscriptions(symbol_list, prefix_list)
        if not endpoint_list:
            raise ValueError("give at least one endpoint, e.g. ipc:///tmp/feedsvc/ticks")
        if heartbeat_timeout_s is not None and not heartbeat_timeout_s > 0:
            raise ValueError(f"heartbeat_timeout_s must be > 0, got {heartbeat_timeout_s!r}")
        if rcvhwm < 0 or rcvbuf < 0:
            raise ValueError("rcvhwm and rcvbuf must be >= 0 (0 = no limit / OS default)")
        if not sync_timeout_s > 0:
            raise ValueError(f"sync_timeout_s must be > 0, got {sync_timeout_s!r}")
        if sync_attempts < 1:
            raise ValueError(f"sync_attempts must be >= 1, got {sync_attempts!r}")
        if recovery_endpoint is not None:
            if conflate:
                raise ValueError(
                    "conflate and recovery_endpoint exclude each other: a conflating client "
                    "skips old ticks on purpose, recovery fetches them"
                )
            if not recovery_timeout_s > 0 or recovery_attempts < 1 or recovery_hold_ticks < 1:
                raise ValueError(
                    "recovery_timeout_s must be > 0, recovery_attempts and recovery_hold_ticks "
                    f">= 1; got {recovery_timeout_s!r}, {recovery_attempts!r}, "
                    f"{recovery_hold_ticks!r}"
                )
        return cls(
            endpoints=tuple(endpoint_list),
            subscriptions=tuple(subscriptions),
            # A prefix may match symbols nobody can list: then the snapshot of every symbol is
            # asked.
            sync_symbols=None if prefix_list or not symbol_list else tuple(symbol_list),
            conflate=conflate,
            rcvhwm=rcvhwm,
            rcvbuf=rcvbuf,
            heartbeat_timeout_s=heartbeat_timeout_s,
            sync_endpoint=sync_endpoint,
            sync_timeout_s=sync_timeout_s,
            sync_attempts=sync_attempts,
            recovery_endpoint=recovery_endpoint,
            recovery_timeout_s=recovery_timeout_s,
            recovery_attempts=recovery_attempts,
            recovery_hold_ticks=recovery_hold_ticks,
        )


class _SubscriberCore(_SyncRunner, _RecoveryRunner):
    """Socket set-up, decoding, sequence checks, conflation, liveness and (from `_SyncRunner`)
    the sync handshake, shared by the blocking and the asyncio subscriber; those only add the
    way they wait for the sockets.

    The constructor's parameters are described on `Subscriber`.
    """

    # The sockets the subscriber owns and closes: plain, or asyncio for the async subscriber.
    _socket_class: ClassVar[type[zmq.Socket]]

    def __init__(
        self,
        endpoints: str | Sequence[str],
        symbols: Iterable[str] = (),
        prefixes: Iterable[str | bytes] = (),
        *,
        conflate: bool = False,
        rcvhwm: int = DEFAULT_RCVHWM,
        rcvbuf: int = DEFAULT_RCVBUF,
        heartbeat_timeout_s: float | None = None,
        sync_endpoint: str | None = None,
        sync_timeout_s: float = DEFAULT_SYNC_TIMEOUT_S,
        sync_attempts: int = DEFAULT_SYNC_ATTEMPTS,
        recovery_endpoint: str | None = None,
        recovery_timeout_s: float = DEFAULT_RECOVERY_TIMEOUT_S,
        recovery_attempts: int = DEFAULT_RECOVERY_ATTEMPTS,
        recovery_hold_ticks: int = DEFAULT_RECOVERY_HOLD_TICKS,
        on_gap: Callable[[Gap], object] | None = None,
        on_restart: Callable[[Restart], object] | None = None,
        on_dead: Callable[[], object] | None = None,
        on_alive: Callable[[], object] | None = None,
        context: zmq.Context | None = None,
        curve: CurveClientKeys | None = None,
    ) -> None:
        self._settings = settings = _Settings.checked(
            endpoints,
            symbols,
            prefixes,
            conflate=conflate,
            rcvhwm=rcvhwm,
            rcvbuf=rcvbuf,
            heartbeat_timeout_s=heartbeat_timeout_s,
            sync_endpoint=sync_endpoint,
            sync_timeout_s=sync_timeout_s,
            sync_attempts=sync_attempts,
            recovery_endpoint=recovery_endpoint,
            recovery_timeout_s=recovery_timeout_s,
            recovery_attempts=recovery_attempts,
            recovery_hold_ticks=recovery_hold_ticks,
        )
        self.endpoints = list(settings.endpoints)
        self.sync_endpoint = sync_endpoint
        self._curve = curve
        self._on_gap, self._on_restart = on_gap, on_restart
        self._on_dead, self._on_alive = on_dead, on_alive
        self.stats = SubscriberStats()
        self.tracker = SequenceTracker()
        self._init_delivery()
        self._init_liveness()
        self._init_sync()
        self._init_recovery()
        self._open_sockets(context)

    def _init_delivery(self) -> None:
        conflate = self._settings.conflate
        self._conflator = Conflator() if conflate else None
        self._drain_limit = self._settings.rcvhwm or UNBOUNDED_DRAIN_LIMIT
        self._take_live = self._take_conflated if conflate else self._take_next
        self._take_ready = self._take_live
        self._closed = False
        # Ticks the handshake hands out before any live one: the snapshot's, then the kept ones.
        self._backlog: deque[Tick] = deque()

    def _init_recovery(self) -> None:
        settings = self._settings
        self.recovery_endpoint = settings.recovery_endpoint
        self._filler: GapFiller | None = None
        if settings.recovery_endpoint is not None:
            self._filler = GapFiller(
                _decode_frame,
                settings.recovery_timeout_s,
                settings.recovery_attempts,
                settings.recovery_hold_ticks,
            )
        # The symbols being recovered (empty without recovery): one truth test per tick.
        self._recovering = self._filler.recovering if self._filler is not None else {}
        self._recovery_socket: zmq.Socket | None = None
        self._owned_recovery_socket: zmq.Socket | None = None
        # The SUB and the DEALER socket in one poller (blocking or asyncio), made on first use.
        self._recovery_poller: Any = None

    def _init_liveness(self) -> None:
        heartbeat_timeout_s = self._settings.heartbeat_timeout_s
        self._fixed_heartbeat_timeout_s = heartbeat_timeout_s
        self._heartbeat_timeout_s = heartbeat_timeout_s or DEFAULT_HEARTBEAT_TIMEOUT_S
        # Liveness is counted from connect: a publisher that never answers is reported dead too.
        self._alive = True
        self._last_message_at = time.monotonic()
        self._silence_reason = SilenceReason()
        # shard -> when its last heartbeat came (monotonic), for silent_shards().
        self._heartbeat_at_by_shard: dict[str, float] = {}

    def _open_sockets(self, context: zmq.Context | None) -> None:
        """The SUB socket, subscribed and connected, its handshake monitor and the sync REQ
        socket; on any error everything opened so far is closed again."""
        self._owns_context = context is None
        self._context = zmq.Context() if context is None else context
        self._owned_socket, self._socket = self._open_socket(zmq.SUB)
        self._handshake_monitor: zmq.Socket | None = None
        try:
            self._handshake_monitor = open_handshake_monitor(
                self._socket,
                self._context,
                f"inproc://feedsvc-subscriber-{self.client_id}-handshakes",
            )
            self._subscribe_and_connect()
            # Connected now: a bad endpoint fails here, and the connection is up by sync().
            if self.sync_endpoint is not None:
                self._open_sync_req()
            if self.recovery_endpoint is not None:
                self._open_recovery_dealer(self.recovery_endpoint)
        except BaseException:
            self.close()
            raise

    def _subscribe_and_connect(self) -> None:
        settings, socket = self._settings, self._socket
        socket.setsockopt(zmq.RCVHWM, settings.rcvhwm)
        if settings.rcvbuf:
            socket.setsockopt(zmq.RCVBUF, settings.rcvbuf)
        # Heartbeats last: once the publisher applies it, the earlier ones are applied too.
        for subscription in (*settings.subscriptions, _HEARTBEAT_PREFIX):
            socket.setsockopt(zmq.SUBSCRIBE, subscription)
        for endpoint in settings.endpoints:
            try:
                curve_connect(socket, endpoint, self._curve)
            except zmq.ZMQError as error:
                raise ValueError(
                    f"cannot connect to {endpoint!r} ({error}); "
                    "endpoints look like ipc:///tmp/feedsvc/ticks or tcp://host:5556"
                ) from None

    def _open_socket(self, socket_type: int) -> tuple[zmq.Socket, zmq.Socket]:
        """A socket of the subscriber's class, and the plain socket to do non-blocking I/O on
        (the same one, or a shadow of the asyncio socket, which is only awaited for readiness)."""
        # Through the context, so that its default socket options (Context.setsockopt) apply.
        owned = self._context.socket(socket_type, socket_class=self._socket_class)
        plain = owned if self._socket_class is zmq.Socket else zmq.Socket.shadow(owned.underlying)
        plain.setsockopt(zmq.LINGER, 0)
        return owned, plain

    def _open_connected(
        self, socket_type: int, endpoint: str, what: str, example: str
    ) -> tuple[zmq.Socket, zmq.Socket]:
        """`_open_socket`, connected to `endpoint` (Curve on tcp with the subscriber's keys);
        ValueError names `what` and shows `example` when the endpoint is unusable."""
        owned, plain = self._open_socket(socket_type)
        try:
            curve_connect(plain, endpoint, self._curve)
        except zmq.ZMQError as error:
            owned.close(linger=0)
            raise ValueError(
                f"cannot connect to {what} {endpoint!r} ({error}); endpoints look like {example}"
            ) from None
        return owned, plain

    def _read_handshake_failures(self) -> None:
        if self._handshake_monitor is None:
            return
        for failure in queued_handshake_failures(self._handshake_monitor):
            self.stats.handshake_failures += 1
            self._silence_reason.note(*failure)

    @property
    def handshake_failure(self) -> str | None:
        """Why a connection handshake failed during the current silence (a Curve key the
        service does not list, Curve on one side only, the wrong server key), or None; cleared
        when messages arrive again. A subscriber that receives nothing should show it."""
        return self._silence_reason.text

    @property
    def alive(self) -> bool:
        """False once no message (tick or heartbeat) came for heartbeat_timeout_s; True again on
        the next message. Updated while receiving."""
        return self._alive

    @property
    def heartbeat_timeout_s(self) -> float:
        """The silence after which the feed counts as dead (given, or 3 heartbeat intervals)."""
        return self._heartbeat_timeout_s

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def synced(self) -> bool:
        """True once the sync handshake succeeded (never without a sync endpoint)."""
        return self._snapshot is not None

    @property
    def snapshot(self) -> dict[str, dict[str, Any]] | None:
        """After the handshake, per symbol received ``{"seq": int, "tick": Tick | None}`` as the
        service sent it (seq 0 and tick None: not ticked yet in the epoch); None before."""
        return self._snapshot

    @property
    def epoch(self) -> int | None:
        """The snapshot's epoch after the handshake (with several shards, the first one's), None
        before. After a publisher restart the epochs followed are ``tracker.epoch_by_shard``."""
        return self._snapshot_epoch

    def silent_shards(self) -> list[str]:
        """Publishers (by `publisher.shard`; "" unnamed) whose heartbeats stopped for longer than
        `heartbeat_timeout_s`. Behind one relay, the others' frames keep the feed alive: this says
        which shard went quiet."""
        deadline = time.monotonic() - self._heartbeat_timeout_s
        return [shard for shard, at in self._heartbeat_at_by_shard.items() if at < deadline]

    def close(self) -> None:
        """Close the sockets without lingering, and the context if this subscriber created it.
        Calling it again does nothing; a handshake under way is abandoned."""
        if self._closed:
            return
        self._closed = True
        # Swapping the bound method costs nothing per tick, unlike a closed check in every recv.
        self._take_ready = self._nothing_after_close
        if self._sync_steps is not None:
            self._sync_steps.close()
        self._close_sync_req()
        if self._owned_recovery_socket is not None:
            self._owned_recovery_socket.close(linger=0)
        if self._handshake_monitor is not None:
            self._handshake_monitor.close(linger=0)
        self._owned_socket.close(linger=0)
        if self._owns_context:
            self._context.term()

    def _nothing_after_close(self) -> Tick | None:
        return None

    def _accept(self, frame: bytes) -> Tick | None:
        """Account for one received frame; returns the tick if it is to be delivered."""
        self._last_message_at = time.monotonic()
        if not self._alive:
            self._set_alive()
        if frame[:1] == _CONTROL_START:
            self._accept_control(frame)
            return None
        self.stats.received += 1
        return self._check_tick(frame)

    def _check_tick(self, frame: bytes, skipped: int = 0) -> Tick | None:
        """Decode a tick frame and check its seq; returns the tick if it is to be delivered.

        `skipped`: older ticks of its symbol conflated unread, which are no gap.
        """
        try:
            tick = orjson.loads(frame[frame.index(b" ") + 1 :])
            if skipped:
                self.tracker.skip(tick["sym"], skipped, tick["epoch"])
            event = self.tracker.observe(tick)
        except _MALFORMED_ERRORS:
            self.stats.malformed += 1
            return None
        return self._sequenced(tick, event)

    def _sequenced(self, tick: Tick, event: Gap | Restart | Duplicate | None) -> Tick | None:
        """Act on what the tracker said of `tick`; returns it if it is to be delivered now."""
        if event is None:
            if self._recovering:
                # A symbol being recovered: its later ticks wait for the missing ones.
                recovering = self._recovering.get(tick["sym"])
                if recovering is not None:
                    self._filler.hold(recovering, tick)
                    self._pump_recovery()
                    return None
            return tick
        if self._filler is not None:
            gap = event if type(event) is Gap else getattr(event, "gap", None)
            if gap is not None:
                if type(event) is Restart:
                    self._restarted(event)
                # The ticks before it (in the new epoch, after a restart) are recovered too.
                self._filler.start(gap, tick)
                self._pump_recovery()
                return None
        if self._report(event):
            return tick
        return None

    def _report(self, event: Gap | Restart | Duplicate) -> bool:
        """Count a sequence event and call its callback; returns whether the tick is delivered."""
        stats = self.stats
        if type(event) is Gap:
            self._count_gap(event)
            return True
        if type(event) is Restart:
            self._restarted(event)
            if event.gap is not None:
                self._count_gap(event.gap)
            return True
        if (
            event.epoch in self._snapshot_epochs
            and event.received_seq <= self._snapshot_seq_by_symbol.get(event.symbol, -1)
        ):
            stats.snapshot_overlap += 1
        else:
            stats.duplicates += 1
        return False

    def _count_gap(self, gap: Gap) -> None:
        stats = self.stats
        stats.gaps += 1
        stats.missed += gap.missed
        stats.missed_by_symbol[gap.symbol] = stats.missed_by_symbol.get(gap.symbol, 0) + gap.missed
        if self._on_gap is not None:
            self._on_gap(gap)

    def _restarted(self, restart: Restart, resync: bool = True) -> None:
        self.stats.restarts += 1
        if self._recovering:
            # The old epoch's ticks are not held any more: release what was held of it (other
            # shards' recoveries go on).
            self._filler.give_up_all(GAVE_UP_RESTART, restart.old_epoch)
            self._pump_recovery()
        # A synced client syncs again in the new epoch: quiet symbols get their new value, and
        # the snapshot is the new baseline. The next recv() runs it.
        if resync and self.sync_endpoint is not None and self._snapshot is not None:
            self._sync_pending = self._resyncing = True
        if self._on_restart is not None:
            self._on_restart(restart)

    def _accept_control(self, frame: bytes) -> None:
        if not frame.startswith(_HEARTBEAT_PREFIX):
            return  # other control topics are not meant for subscribers
        try:
            heartbeat = orjson.loads(frame[len(_HEARTBEAT_PREFIX) :])
            interval_s = heartbeat["interval_s"]
            shard = heartbeat.get("shard", "")
            if not isinstance(shard, str) or SHARD_PATTERN.fullmatch(shard) is None:
                raise ValueError(f"not a shard name: {shard!r}")
            restart = self.tracker.observe_epoch(heartbeat["epoch"], shard)
        except _MALFORMED_ERRORS:
            self.stats.malformed += 1
            return
        self.stats.heartbeats += 1
        self._heartbeat_at_by_shard[shard] = self._last_message_at
        if (
            self._fixed_heartbeat_timeout_s is None
            and isinstance(interval_s, int | float)
            and math.isfinite(interval_s)
            and interval_s > 0
        ):
            self._heartbeat_timeout_s = HEARTBEAT_TIMEOUT_INTERVALS * interval_s
        if restart is not None:
            self._restarted(restart)

    def _set_alive(self) -> None:
        self._alive = True
        # The reason given for the silence that just ended is not one for the next silence.
        self._read_handshake_failures()
        self._silence_reason.clear()
        if self._on_alive is not None:
            self._on_alive()

    def _seconds_until_dead(self, now: float) -> float:
        """Declare the feed dead if it has been silent too long; returns how long to poll."""
        if not self._alive:
            self._read_handshake_failures()
            return MAX_POLL_S
        remaining_s = self._last_message_at + self._heartbeat_timeout_s - now
        if remaining_s > 0:
            return min(remaining_s, MAX_POLL_S)
        self._read_handshake_failures()
        self._alive = False
        self.stats.heartbeat_misses += 1
        if self._on_dead is not None:
            self._on_dead()
        return MAX_POLL_S

    def _take_next(self) -> Tick | None:
        """The next deliverable tick already queued on the socket, or None."""
        recv, accept = self._socket.recv, self._accept
        for _ in range(self._drain_limit):
            try:
                frame = recv(zmq.NOBLOCK)
            except zmq.Again:
                return None
            tick = accept(frame)
            if tick is not None:
                self.stats.delivered += 1
                return tick
        return None

    def _take_backlog(self) -> Tick | None:
        """The ticks the handshake queued, in order, then (swapping back) live ones."""
        backlog = self._backlog
        if not backlog:
            self._take_ready = self._take_live
            return self._take_live()
        self.stats.delivered += 1
        return backlog.popleft()

    def _take_conflated(self) -> Tick | None:
        """Drain what is queued into the conflator (raw), then the longest-waiting newest tick."""
        recv, conflator, stats = self._socket.recv, self._conflator, self.stats
        assert conflator is not None
        offer_frame = conflator.offer_frame
        tick_frames = 0
        for _ in range(self._drain_limit):
            try:
                frame = recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            if frame[:1] == _CONTROL_START:
                self._accept(frame)
                continue
            tick_frames += 1
            space = frame.find(b" ")
            if space > 0:
                offer_frame(frame[:space], frame)
            else:
                stats.malformed += 1
        if tick_frames:
            stats.received += tick_frames
            self._last_message_at = time.monotonic()
            if not self._alive:
                self._set_alive()
        stats.conflated = conflator.conflated
        while (entry := conflator.take_entry()) is not None:
            item, replaced = entry
            # Decoded ticks (a snapshot's) were checked when they were offered.
            tick = item if type(item) is dict else self._check_tick(item, replaced)
            if tick is not None:
                stats.delivered += 1
                return tick
        return None

    def _poll_waits_ms(self, timeout: float | None) -> Iterator[int]:
        """How long to poll the socket, slice by slice, until `timeout` (None = forever) is over.

        Liveness is checked before every slice, so a dead feed is noticed while waiting.
        """
        monotonic = time.monotonic
        deadline = None if timeout is None else monotonic() + timeout
        while not self._closed:
            now = monotonic()
            wait_s = self._seconds_until_dead(now)
            if deadline is not None:
                if now >= deadline:
                    return
                wait_s = min(wait_s, deadline - now)
            yield max(1, math.ceil(wait_s * 1000))


def _decode_frame(frame: bytes) -> Tick:
    """A broadcast tick frame's payload (raises ValueError when there is none)."""
    return orjson.loads(frame[frame.index(b" ") + 1 :])


def _subscriptions(symbols: Iterable[str], prefixes: Iterable[str | bytes]) -> list[bytes]:
    """SUB subscriptions: b"SYM " per exact symbol, raw prefixes as given, else everything."""
    subscriptions: list[bytes] = []
    for symbol in symbols:
        problem = symbol_problem(symbol)
        if problem is not None:
            raise ValueError(f"symbol {symbol!r} {problem}")
        subscriptions.append(topic_prefix(symbol))
    subscriptions.extend(
        prefix.encode() if isinstance(prefix, str) else prefix for prefix in prefixes
    )
    return subscriptions or [b""]
