"""What trading clients import: blocking and asyncio subscribers, gap detection, conflation.

A subscriber connects a SUB socket to one or more publisher endpoints, subscribes to exact symbols
(``b"SYM "``) or raw byte prefixes, and hands out decoded ticks. On every tick it checks the
per-symbol sequence (gaps, duplicates, publisher restarts); heartbeats on the ``_hb`` topic tell a
quiet market from a dead feed. In conflate mode a slow consumer gets only the newest tick per
symbol instead of a growing backlog.

This module never imports the server side (service, publisher, ingest, config).
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, ClassVar, Final, NamedTuple, Self

import orjson
import zmq
import zmq.asyncio

from feedsvc.ticks import CONTROL_PREFIX, HEARTBEAT_TOPIC, Tick, symbol_problem, topic_prefix

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


class Gap(NamedTuple):
    """Ticks of one symbol never received: seq jumped from expected_seq - 1 to received_seq."""

    symbol: str
    epoch: int
    expected_seq: int
    received_seq: int
    missed: int


class Restart(NamedTuple):
    """The publisher restarted: every symbol's sequence starts again in new_epoch."""

    old_epoch: int
    new_epoch: int


class Duplicate(NamedTuple):
    """A tick at or behind the last seq of its symbol (duplicate or out of order); dropped."""

    symbol: str
    epoch: int
    last_seq: int
    received_seq: int


def _checked_int(name: str, value: object) -> int:
    # bool is an int subclass but never a seq or an epoch.
    if type(value) is not int:
        raise TypeError(f"{name} must be an integer, got {value!r}")
    return value


class SequenceTracker:
    """Follows the per-symbol seq of one publisher and says what each tick means.

    The first tick of a symbol sets its baseline (no gap: nothing was expected yet). A tick
    whose epoch differs from the current one is a publisher restart: all baselines are dropped and
    the tick becomes the first of its symbol in the new epoch. Epochs are compared for equality
    only, so a publisher whose epoch went backwards (clock change, replay) is followed, not ignored.
    """

    def __init__(self) -> None:
        self._epoch: int | None = None
        # symbol -> [last seq]: one dict lookup per tick finds and updates it.
        self._last_seq_by_symbol: dict[str, list[int]] = {}

    @property
    def epoch(self) -> int | None:
        """The epoch being followed; None before the first tick or heartbeat."""
        return self._epoch

    def last_seq(self, symbol: str) -> int | None:
        """The last seq accepted for `symbol` in the current epoch, None if there is none."""
        state = self._last_seq_by_symbol.get(symbol)
        return None if state is None else state[0]

    def observe(self, tick: Tick) -> Gap | Restart | Duplicate | None:
        """Check one tick against its symbol's sequence.

        Returns
        -------
        None when the tick is the next in sequence (or the first of its symbol); a Gap or a
        Restart for a tick that is still to be delivered; a Duplicate for a tick to drop.

        Raises
        ------
        KeyError, TypeError
            when the tick has no sym/seq/epoch or they have the wrong type (state is unchanged).
        """
        if tick["epoch"] != self._epoch:
            return self._start_epoch(tick)
        state = self._last_seq_by_symbol.get(tick["sym"])
        seq = tick["seq"]
        if state is not None and seq == state[0] + 1:
            state[0] = seq
            return None
        return self._out_of_line(tick, state)

    def _out_of_line(self, tick: Tick, state: list[int] | None) -> Gap | Duplicate | None:
        symbol, seq = tick["sym"], _checked_int("seq", tick["seq"])
        if state is None:
            if not isinstance(symbol, str):
                raise TypeError(f"sym must be a string, got {symbol!r}")
            self._last_seq_by_symbol[symbol] = [seq]
            return None
        last_seq = state[0]
        if seq <= last_seq:
            return Duplicate(symbol, tick["epoch"], last_seq, seq)
        state[0] = seq
        return Gap(symbol, tick["epoch"], last_seq + 1, seq, seq - last_seq - 1)

    def _start_epoch(self, tick: Tick) -> Restart | None:
        symbol, seq = tick["sym"], _checked_int("seq", tick["seq"])
        if not isinstance(symbol, str):
            raise TypeError(f"sym must be a string, got {symbol!r}")
        restart = self.observe_epoch(tick["epoch"])
        self._last_seq_by_symbol[symbol] = [seq]
        return restart

    def observe_epoch(self, epoch: int) -> Restart | None:
        """Follow `epoch` (from a tick or a heartbeat); a change is a Restart, the first is not."""
        if epoch == self._epoch:
            return None
        _checked_int("epoch", epoch)
        old_epoch, self._epoch = self._epoch, epoch
        self._last_seq_by_symbol.clear()
        return None if old_epoch is None else Restart(old_epoch, epoch)

    def set_baseline(self, symbol: str, epoch: int, seq: int) -> Restart | None:
        """Take `seq` as the last seq of `symbol` (e.g. from a snapshot): seq + 1 comes next.

        A snapshot from another epoch than the one followed switches to it like a tick would, and
        the Restart is returned.
        """
        restart = self.observe_epoch(epoch)
        self._last_seq_by_symbol[symbol] = [_checked_int("seq", seq)]
        return restart


class Conflator:
    """Keeps only the newest tick per symbol until taken.

    Symbols are handed out in the order their first pending tick arrived: replacing a pending tick
    keeps the symbol's place (a dict keeps insertion order on update), so a busy symbol cannot
    starve a quiet one.
    """

    def __init__(self) -> None:
        self._pending_by_symbol: dict[str, Tick] = {}
        self.conflated = 0

    def offer(self, tick: Tick) -> None:
        """Hold `tick`, replacing (and counting) an older pending tick of the same symbol."""
        pending = self._pending_by_symbol
        pending_before = len(pending)
        pending[tick["sym"]] = tick
        if len(pending) == pending_before:
            self.conflated += 1

    def take(self) -> Tick | None:
        """The pending tick whose symbol has waited longest, or None if nothing is pending."""
        pending = self._pending_by_symbol
        if not pending:
            return None
        return pending.pop(next(iter(pending)))

    def __len__(self) -> int:
        return len(self._pending_by_symbol)


@dataclass(slots=True)
class SubscriberStats:
    """Counters of one subscriber. Every tick frame received ends up in exactly one of
    delivered, conflated, duplicates or malformed, or is still pending in the conflator."""

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

    def summary(self) -> dict[str, Any]:
        """The counters as plain JSON-able data (a copy)."""
        return dataclasses.asdict(self)


class _SubscriberCore:
    """Socket set-up, decoding, sequence checks, conflation and liveness, shared by the blocking
    and the asyncio subscriber; those only add the way they wait for the socket.

    The constructor's parameters are described on `Subscriber`.
    """

    # The socket the subscriber owns and closes: plain, or asyncio for the async subscriber.
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
        on_gap: Callable[[Gap], object] | None = None,
        on_restart: Callable[[Restart], object] | None = None,
        on_dead: Callable[[], object] | None = None,
        on_alive: Callable[[], object] | None = None,
        context: zmq.Context | None = None,
    ) -> None:
        endpoint_list = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        subscriptions = _subscriptions(symbols, prefixes)
        if not endpoint_list:
            raise ValueError("give at least one endpoint, e.g. ipc:///tmp/feedsvc/ticks")
        if heartbeat_timeout_s is not None and not heartbeat_timeout_s > 0:
            raise ValueError(f"heartbeat_timeout_s must be > 0, got {heartbeat_timeout_s!r}")
        if rcvhwm < 0 or rcvbuf < 0:
            raise ValueError("rcvhwm and rcvbuf must be >= 0 (0 = no limit / OS default)")

        self.endpoints = endpoint_list
        self.stats = SubscriberStats()
        self.tracker = SequenceTracker()
        self._conflator = Conflator() if conflate else None
        self._fixed_heartbeat_timeout_s = heartbeat_timeout_s
        self._heartbeat_timeout_s = heartbeat_timeout_s or DEFAULT_HEARTBEAT_TIMEOUT_S
        self._on_gap, self._on_restart = on_gap, on_restart
        self._on_dead, self._on_alive = on_dead, on_alive
        self._drain_limit = rcvhwm or UNBOUNDED_DRAIN_LIMIT
        self._take_ready = self._take_conflated if conflate else self._take_next
        self._closed = False
        # Liveness is counted from connect: a publisher that never answers is reported dead too.
        self._alive = True
        self._last_message_at = time.monotonic()

        self._owns_context = context is None
        self._context = zmq.Context() if context is None else context
        self._owned_socket = self._socket_class(self._context, zmq.SUB)
        # Reads are non-blocking on a plain socket; the asyncio subscriber only awaits readiness.
        self._socket = (
            self._owned_socket
            if self._socket_class is zmq.Socket
            else zmq.Socket.shadow(self._owned_socket.underlying)
        )
        try:
            self._socket.setsockopt(zmq.LINGER, 0)
            self._socket.setsockopt(zmq.RCVHWM, rcvhwm)
            if rcvbuf:
                self._socket.setsockopt(zmq.RCVBUF, rcvbuf)
            # Heartbeats last: once the publisher applies it, the earlier ones are applied too.
            for subscription in (*subscriptions, _HEARTBEAT_PREFIX):
                self._socket.setsockopt(zmq.SUBSCRIBE, subscription)
            for endpoint in endpoint_list:
                try:
                    self._socket.connect(endpoint)
                except zmq.ZMQError as error:
                    raise ValueError(
                        f"cannot connect to {endpoint!r} ({error}); "
                        "endpoints look like ipc:///tmp/feedsvc/ticks or tcp://host:5556"
                    ) from None
        except BaseException:
            self.close()
            raise

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

    def close(self) -> None:
        """Close the socket without lingering, and the context if this subscriber created it.
        Calling it again does nothing."""
        if self._closed:
            return
        self._closed = True
        # Swapping the bound method costs nothing per tick, unlike a closed check in every recv.
        self._take_ready = self._nothing_after_close
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
        stats = self.stats
        stats.received += 1
        try:
            tick = orjson.loads(frame[frame.index(b" ") + 1 :])
            event = self.tracker.observe(tick)
        except _MALFORMED_ERRORS:
            stats.malformed += 1
            return None
        if event is None or self._report(event):
            return tick
        return None

    def _report(self, event: Gap | Restart | Duplicate) -> bool:
        """Count a sequence event and call its callback; returns whether the tick is delivered."""
        stats = self.stats
        if type(event) is Gap:
            stats.gaps += 1
            stats.missed += event.missed
            stats.missed_by_symbol[event.symbol] = (
                stats.missed_by_symbol.get(event.symbol, 0) + event.missed
            )
            if self._on_gap is not None:
                self._on_gap(event)
            return True
        if type(event) is Restart:
            self._restarted(event)
            return True
        stats.duplicates += 1
        return False

    def _restarted(self, restart: Restart) -> None:
        self.stats.restarts += 1
        if self._on_restart is not None:
            self._on_restart(restart)

    def _accept_control(self, frame: bytes) -> None:
        if not frame.startswith(_HEARTBEAT_PREFIX):
            return  # other control topics are not meant for subscribers
        try:
            heartbeat = orjson.loads(frame[len(_HEARTBEAT_PREFIX) :])
            interval_s = heartbeat["interval_s"]
            restart = self.tracker.observe_epoch(heartbeat["epoch"])
        except _MALFORMED_ERRORS:
            self.stats.malformed += 1
            return
        self.stats.heartbeats += 1
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
        if self._on_alive is not None:
            self._on_alive()

    def _seconds_until_dead(self, now: float) -> float:
        """Declare the feed dead if it has been silent too long; returns how long to poll."""
        if not self._alive:
            return MAX_POLL_S
        remaining_s = self._last_message_at + self._heartbeat_timeout_s - now
        if remaining_s > 0:
            return min(remaining_s, MAX_POLL_S)
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

    def _take_conflated(self) -> Tick | None:
        """Drain what is queued into the conflator, then the longest-waiting newest tick."""
        recv, accept, conflator = self._socket.recv, self._accept, self._conflator
        assert conflator is not None
        offer = conflator.offer
        for _ in range(self._drain_limit):
            try:
                frame = recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            tick = accept(frame)
            if tick is not None:
                offer(tick)
        self.stats.conflated = conflator.conflated
        tick = conflator.take()
        if tick is not None:
            self.stats.delivered += 1
        return tick

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
    on_gap, on_restart, on_dead, on_alive:
        Called from inside ``recv()`` on the matching event.
    context:
        A ZeroMQ context to use (kept open on close); by default the subscriber has its own.
    """

    _socket_class = zmq.Socket

    def recv(self, timeout: float | None = None) -> Tick | None:
        """The next tick, waiting up to `timeout` seconds (None = until one comes).

        Returns None when the timeout passes first, or once the subscriber is closed.
        """
        tick = self._take_ready()
        if tick is None:
            for wait_ms in self._poll_waits_ms(timeout):
                self._socket.poll(wait_ms)
                tick = self._take_ready()
                if tick is not None:
                    break
        return tick

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


class AsyncSubscriber(_SubscriberCore):
    """The asyncio subscriber: ``await recv()``, ``async for tick in subscriber``,
    ``async with AsyncSubscriber(...)``. Same parameters as `Subscriber`."""

    _socket_class = zmq.asyncio.Socket

    async def recv(self, timeout: float | None = None) -> Tick | None:
        """The next tick, waiting up to `timeout` seconds (None = until one comes).

        Returns None when the timeout passes first, or once the subscriber is closed (also by
        another task while this one waits).
        """
        tick = self._take_ready()
        if tick is None:
            for wait_ms in self._poll_waits_ms(timeout):
                try:
                    await self._owned_socket.poll(wait_ms)
                except asyncio.CancelledError:
                    # close() cancels the pending poll; only a cancelled task must see the error.
                    task = asyncio.current_task()
                    if self._closed and (task is None or not task.cancelling()):
                        return None
                    raise
                tick = self._take_ready()
                if tick is not None:
                    break
        return tick

    async def __aiter__(self) -> AsyncIterator[Tick]:
        while not self._closed:
            tick = await self.recv()
            if tick is not None:
                yield tick

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
