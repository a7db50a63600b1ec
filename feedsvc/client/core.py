"""What trading clients import: blocking and asyncio subscribers, gap detection, conflation.

A subscriber connects a SUB socket to one or more publisher endpoints, subscribes to exact symbols
(``b"SYM "``) or raw byte prefixes, and hands out decoded ticks. On every tick it checks the
per-symbol sequence (gaps, duplicates, publisher restarts); heartbeats on the ``_hb`` topic tell a
quiet market from a dead feed. In conflate mode a slow consumer gets only the newest tick per
symbol instead of a growing backlog.

With a sync endpoint the subscriber first runs the sync handshake of docs/sync-protocol.md: it gets
the last value and seq of every symbol over REQ/REP and waits for a marker on its SUB socket, so it
starts with a price for every symbol, quiet ones included, and then misses nothing. `SyncHandshake`
holds the protocol without sockets; the subscribers do the socket work around it.

This module never imports the server side (service, publisher, ingest, config).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import secrets
import time
from collections import deque
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterable,
    Iterator,
    Sequence,
)
from dataclasses import dataclass, field
from types import MappingProxyType, TracebackType
from typing import Any, ClassVar, Final, NamedTuple, Self, TypeVar

import orjson
import zmq
import zmq.asyncio
from zmq.utils.monitor import recv_monitor_message

from feedsvc.curve import CurveClientKeys
from feedsvc.curve import connect as curve_connect
from feedsvc.protocol.events import HANDSHAKE_FAILURES
from feedsvc.protocol.sync import (
    ERROR_BAD_REQUEST,
    ERROR_BAD_SYMBOL,
    ERROR_BUSY,
    ERROR_INTERNAL,
    ERROR_NOT_JSON,
    ERROR_SNAPSHOT_TOO_LARGE,
    ERROR_TOO_LARGE,
    ERROR_TOO_MANY_SYMBOLS,
    ERROR_UNKNOWN_MARKER,
    MARKER_TOPIC_PREFIX,
    RETRYABLE_ERRORS,
)
from feedsvc.protocol.ticks import (
    CONTROL_PREFIX,
    HEARTBEAT_TOPIC,
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
DEFAULT_SYNC_TIMEOUT_S: Final = 2.0
DEFAULT_SYNC_ATTEMPTS: Final = 5
# Pause before the second handshake attempt; doubled after each failed one, up to the cap, so a
# service that is starting up is not hammered and one that is down is given up on in seconds.
SYNC_BACKOFF_FIRST_S: Final = 0.1
SYNC_BACKOFF_MAX_S: Final = 1.0
# Between subscribing a marker topic and sending the request. A PUB socket applies a new
# subscription only when it next processes commands, which a send does at most about once a
# millisecond: a request sent at once is often answered, and its marker filtered out, before
# that (about 2 in 3 first attempts against feedsvc serve at 20k ticks/s); a retry then costs a
# whole sync timeout. The retry stays the fallback for anything slower.
SYNC_SUBSCRIBE_SETTLE_S: Final = 0.01
# Error codes for failures the client sees itself; the service's own codes are passed through.
SYNC_NO_REPLY: Final = "no_reply"
SYNC_NO_MARKER: Final = "no_marker"
SYNC_BAD_REPLY: Final = "bad_reply"
# The service's refusals that a later attempt can overcome (RETRYABLE_ERRORS: it is busy, or
# hit a bug it contained) are retried after the usual backoff, like a lost reply.
SYNC_SERVICE_BUSY: Final = ERROR_BUSY
_UPGRADE_ONE: Final = "the client and the service disagree on docs/sync-protocol.md; upgrade one"
_FEWER_SYMBOLS: Final = "subscribe to fewer symbols per subscriber"
# What to do about a refusal, by the service's error code.
_SYNC_REFUSAL_HINTS: Final = MappingProxyType(
    {
        ERROR_BAD_SYMBOL: "subscribe to valid symbols",
        ERROR_TOO_MANY_SYMBOLS: _FEWER_SYMBOLS,
        ERROR_BAD_REQUEST: _UPGRADE_ONE,
        ERROR_NOT_JSON: _UPGRADE_ONE,
        ERROR_TOO_LARGE: _FEWER_SYMBOLS,
        ERROR_SNAPSHOT_TOO_LARGE: _FEWER_SYMBOLS,
        ERROR_BUSY: "the service is sending other snapshots; retry later",
        ERROR_INTERNAL: "the service logged the failure; retry later",
        ERROR_UNKNOWN_MARKER: "send ready only after the snapshot reply and its marker",
    }
)


log = logging.getLogger("feedsvc.client")

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
    """The publisher restarted: every symbol's sequence starts again at 1 in new_epoch.

    `gap`: the tick that showed the restart was not its symbol's seq 1 (the ticks before it in
    the new epoch were missed), or None.
    """

    old_epoch: int
    new_epoch: int
    gap: Gap | None = None


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

    In the first epoch followed, the first tick of a symbol sets its baseline (no gap: the client
    joined a running feed and nothing was expected yet). A tick or heartbeat whose epoch differs
    from the current one is a publisher restart: every seq starts again at 1, so from then on
    the first tick of a symbol with seq n > 1 means n - 1 missed ticks, reported as a gap like
    any other. Epochs are compared for equality only, so a publisher whose epoch went backwards
    (clock change, replay) is followed, not ignored.
    """

    def __init__(self) -> None:
        self._epoch: int | None = None
        # The current epoch was entered by a restart: every symbol is expected from seq 1.
        self._from_first_seq = False
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
            return self._missed_from_first(symbol, tick["epoch"], seq)
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
        if restart is None:
            return None
        return restart._replace(gap=self._missed_from_first(symbol, tick["epoch"], seq))

    def _missed_from_first(self, symbol: str, epoch: int, seq: int) -> Gap | None:
        """The gap before a symbol's first tick of an epoch entered by a restart."""
        if self._from_first_seq and seq > 1:
            return Gap(symbol, epoch, 1, seq, seq - 1)
        return None

    def skip(self, symbol: str, count: int) -> None:
        """`count` ticks of `symbol` after its last seq were passed over unread on purpose
        (conflated): the next expected seq moves on by `count`, so they are not a gap."""
        state = self._last_seq_by_symbol.get(symbol)
        if state is not None:
            state[0] += count

    def observe_epoch(self, epoch: int) -> Restart | None:
        """Follow `epoch` (from a tick or a heartbeat); a change is a Restart, the first is not."""
        if epoch == self._epoch:
            return None
        _checked_int("epoch", epoch)
        old_epoch, self._epoch = self._epoch, epoch
        self._last_seq_by_symbol.clear()
        self._from_first_seq = old_epoch is not None
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

    It holds raw wire frames, decoded only when taken: a conflating reader passes over most ticks,
    and decoding every one of them cost it as much CPU as a fast reader, CPU the publisher and
    the other subscribers on the machine need. Ticks already decoded (a snapshot's) are held too.

    Symbols are handed out in the order their first pending tick arrived: replacing a pending tick
    keeps the symbol's place (a dict keeps insertion order on update), so a busy symbol cannot
    starve a quiet one.
    """

    def __init__(self) -> None:
        # topic -> [newest frame or decoded tick, raw frames it replaced (never decoded)]
        self._pending_by_topic: dict[bytes, list[Any]] = {}
        self.conflated = 0

    def offer_frame(self, topic: bytes, frame: bytes) -> None:
        """Hold a raw tick frame, replacing (and counting) the older pending one of its topic."""
        entry = self._pending_by_topic.get(topic)
        if entry is None:
            self._pending_by_topic[topic] = [frame, 0]
            return
        if type(entry[0]) is bytes:
            entry[1] += 1
        entry[0] = frame
        self.conflated += 1

    def offer(self, tick: Tick) -> None:
        """Hold a decoded tick (its seq already checked), replacing an older pending one."""
        topic = tick["sym"].encode()
        if topic in self._pending_by_topic:
            self.conflated += 1
        # Raw frames it replaces were not checked, but the tracker has seen this newer tick.
        self._pending_by_topic[topic] = [tick, 0]

    def take_entry(self) -> tuple[Tick | bytes, int] | None:
        """The longest-waiting symbol's newest frame or tick and how many unchecked raw frames it
        replaced; None if nothing is pending."""
        pending = self._pending_by_topic
        if not pending:
            return None
        item, replaced = pending.pop(next(iter(pending)))
        return item, replaced

    def take(self) -> Tick | bytes | None:
        """The longest-waiting symbol's newest frame or tick, or None if nothing is pending."""
        entry = self.take_entry()
        return None if entry is None else entry[0]

    def __len__(self) -> int:
        return len(self._pending_by_topic)


class SyncError(Exception):
    """The sync handshake failed: the service refused it, answered nonsense, or did not answer (or
    the marker did not come) in any of the attempts.

    Attributes
    ----------
    endpoint:
        The sync endpoint.
    code:
        The service's error code (``bad_symbol``, ``too_many_symbols`` ...) or, for failures the
        client saw itself, ``no_reply``, ``no_marker`` or ``bad_reply``.
    detail:
        The service's explanation, or what was wrong with its reply ("" if none).
    attempts:
        How many snapshot requests were made.
    """

    def __init__(
        self, message: str, *, endpoint: str, code: str, detail: str = "", attempts: int = 0
    ) -> None:
        super().__init__(message)
        self.endpoint = endpoint
        self.code = code
        self.detail = detail
        self.attempts = attempts


@dataclass(frozen=True, slots=True)
class SyncSnapshot:
    """A checked snapshot reply: the epoch and, per symbol, ``{"seq": int, "tick": Tick | None}``
    in the order the service sent them (only symbols this subscriber receives)."""

    epoch: int
    entries: dict[str, dict[str, Any]]

    def apply(self, tracker: SequenceTracker) -> tuple[list[Tick], Restart | None]:
        """Make every symbol's snapshot seq its baseline in `tracker` (seq + 1 comes next).

        Returns
        -------
        The snapshot's ticks to deliver before any other, in snapshot order, symbols without a
        tick skipped; and the Restart if `tracker` was following another epoch.
        """
        restart = tracker.observe_epoch(self.epoch)
        for symbol, entry in self.entries.items():
            tracker.set_baseline(symbol, self.epoch, entry["seq"])
        ticks = [entry["tick"] for entry in self.entries.values() if entry["tick"] is not None]
        return ticks, restart


def new_sync_id() -> str:
    """A random client or marker id: 16 hex digits, within the protocol's 1 to 64 [0-9A-Za-z_-]."""
    return secrets.token_hex(8)


class SyncHandshake:
    """The client side of the sync handshake (docs/sync-protocol.md), without sockets.

    It makes the requests, checks the replies, recognises this attempt's marker frame, counts the
    attempts and says how long to back off; the subscriber does the socket work around it, so the
    blocking and the asyncio subscriber share every protocol decision.

    States: ``idle`` -> (`start_attempt`) ``awaiting_reply`` -> (`accept_reply`)
    ``awaiting_marker`` -> (`see_frame` finds the marker) ``synced``. The marker may also come
    before the reply (REP and PUB are separate connections); the reply then leads straight to
    ``synced``. `attempt_failed` goes back to ``idle``; a refusal, a bad reply or the last failed
    attempt leads to ``failed`` and raises SyncError.

    Parameters
    ----------
    endpoint:
        The sync endpoint, for messages.
    symbols:
        The exact symbols to ask for, or None for every symbol the service knows.
    subscriptions:
        The subscriber's SUB subscriptions; snapshot symbols it would not receive are left out.
    attempts, timeout_s:
        At most this many snapshot requests; each waits this long for the reply, then for the
        marker.
    client:
        The client id, kept for the subscriber's life; random by default.
    """

    IDLE: Final = "idle"
    AWAITING_REPLY: Final = "awaiting_reply"
    AWAITING_MARKER: Final = "awaiting_marker"
    SYNCED: Final = "synced"
    FAILED: Final = "failed"

    def __init__(
        self,
        endpoint: str,
        symbols: Sequence[str] | None,
        *,
        subscriptions: Sequence[bytes] = (b"",),
        attempts: int = DEFAULT_SYNC_ATTEMPTS,
        timeout_s: float = DEFAULT_SYNC_TIMEOUT_S,
        client: str | None = None,
    ) -> None:
        if attempts < 1:
            raise ValueError(f"sync attempts must be at least 1, got {attempts!r}")
        if not timeout_s > 0:
            raise ValueError(f"sync timeout must be more than 0 seconds, got {timeout_s!r}")
        self.endpoint = endpoint
        self.symbols = None if symbols is None else list(symbols)
        self.attempts = attempts
        self.timeout_s = timeout_s
        self.client = new_sync_id() if client is None else client
        self.state = self.IDLE
        self.marker: str | None = None
        self.attempts_made = 0
        # The last reply was a temporary refusal (busy): back off and retry.
        self.refused_for_now = False
        self._subscriptions = list(subscriptions)
        self._receives_everything = b"" in self._subscriptions
        self._marker_prefix = b""
        self._marker_seen = False
        self._snapshot: SyncSnapshot | None = None
        self._failures_by_code = {SYNC_NO_REPLY: 0, SYNC_NO_MARKER: 0, SYNC_SERVICE_BUSY: 0}

    @property
    def marker_subscription(self) -> bytes:
        """This attempt's marker topic with its delimiter: ``b"_sync.<marker> "``."""
        return self._marker_prefix

    @property
    def synced(self) -> bool:
        """The reply was accepted and the marker seen: the snapshot can be applied."""
        return self.state == self.SYNCED

    @property
    def snapshot(self) -> SyncSnapshot | None:
        """The checked snapshot once synced, else None."""
        return self._snapshot if self.state == self.SYNCED else None

    def start_attempt(self) -> bytes:
        """Begin an attempt with a fresh marker; returns the snapshot request to send on REQ.

        Subscribe to `marker_subscription` before sending it.
        """
        self._expect(self.IDLE)
        if self.attempts_made >= self.attempts:
            raise RuntimeError("no sync attempt left; attempt_failed() should have raised")
        self.attempts_made += 1
        self.marker = new_sync_id()
        self._marker_prefix = topic_prefix(MARKER_TOPIC_PREFIX + self.marker)
        self._marker_seen = False
        self._snapshot = None
        self.state = self.AWAITING_REPLY
        request = {"op": "snapshot", "client": self.client, "marker": self.marker}
        return orjson.dumps({**request, "symbols": self.symbols})

    def see_frame(self, frame: bytes) -> bool:
        """Whether `frame`, read from SUB, is this attempt's marker (and remember it).

        Any other frame, a stale marker of an earlier attempt included, is for the subscriber to
        keep.
        """
        if self.state not in (self.AWAITING_REPLY, self.AWAITING_MARKER):
            return False
        if not frame.startswith(self._marker_prefix):
            return False
        self._marker_seen = True
        if self.state == self.AWAITING_MARKER:
            self.state = self.SYNCED
        return True

    def accept_reply(self, reply: bytes) -> None:
        """Check the reply to the snapshot request and keep its snapshot (not trusted until the
        marker is seen).

        A refusal the service says is temporary (``busy``, ``internal_error``) leaves the attempt
        awaiting its reply (`refused_for_now` is then True): call `attempt_failed()` to back off
        and try again; after the last attempt it fails like any other refusal.

        Raises
        ------
        SyncError
            for a refusal (``ok: false``: retrying the same request cannot help) or a reply that
            is not a snapshot; the handshake has then failed.
        """
        self._expect(self.AWAITING_REPLY)
        self.refused_for_now = False
        try:
            fields = orjson.loads(reply)
        except orjson.JSONDecodeError:
            raise self._fail_bad_reply("it is not JSON") from None
        if isinstance(fields, dict) and fields.get("ok") is False:
            if fields.get("error") in RETRYABLE_ERRORS and self.attempts_made < self.attempts:
                self.refused_for_now = True
                return
            raise self._fail_refused(fields)
        try:
            self._snapshot = self._checked_snapshot(fields)
        except ValueError as error:
            raise self._fail_bad_reply(str(error)) from None
        self.state = self.SYNCED if self._marker_seen else self.AWAITING_MARKER

    def attempt_failed(self) -> float:
        """The attempt got no reply, or no marker, in time.

        Returns
        -------
        Seconds to wait before the next attempt (0.1 s doubling, at most 1 s).

        Raises
        ------
        SyncError
            when that was the last attempt.
        """
        self._expect(self.AWAITING_REPLY, self.AWAITING_MARKER)
        if self.refused_for_now:
            code = SYNC_SERVICE_BUSY
        else:
            code = SYNC_NO_REPLY if self.state == self.AWAITING_REPLY else SYNC_NO_MARKER
        self.refused_for_now = False
        self._failures_by_code[code] += 1
        if self.attempts_made < self.attempts:
            self.state = self.IDLE
            return min(SYNC_BACKOFF_FIRST_S * 2 ** (self.attempts_made - 1), SYNC_BACKOFF_MAX_S)
        self.state = self.FAILED
        no_reply, no_marker, busy = self._failures_by_code.values()
        detail = (
            f"{no_reply} without a reply and {no_marker} without the marker on the SUB socket, "
            f"{self.timeout_s:g} s each"
        ) + (f", {busy} refused as busy" if busy else "")
        # A Curve refusal looks like silence from here: name it where it can be the cause.
        curve_hint = (
            "; a service with curve.enabled answers only keys in its curve.authorized_keys "
            "(check --curve-server-key and --curve-client-cert)"
            if self.endpoint.startswith("tcp://")
            else ""
        )
        raise SyncError(
            f"sync with {self.endpoint} failed after {self.attempts_made} attempts ({detail}); "
            f"check that feedsvc serve runs with sync.endpoint {self.endpoint} and that the "
            f"subscriber's endpoints are that service's publisher endpoints{curve_hint}",
            endpoint=self.endpoint,
            code=code,
            detail=detail,
            attempts=self.attempts_made,
        )

    def ready_request(self) -> bytes:
        """The ``ready`` request to send once synced (the service counts completed handshakes)."""
        self._expect(self.SYNCED)
        return orjson.dumps({"op": "ready", "client": self.client, "marker": self.marker})

    @staticmethod
    def ready_accepted(reply: bytes) -> bool:
        """Whether `reply` is the service's ``{"ok": true}`` to a ready request."""
        try:
            fields = orjson.loads(reply)
        except orjson.JSONDecodeError:
            return False
        return isinstance(fields, dict) and fields.get("ok") is True

    def _expect(self, *states: str) -> None:
        if self.state not in states:
            raise RuntimeError(f"sync handshake is {self.state}, expected {' or '.join(states)}")

    def _receives(self, symbol: str) -> bool:
        """Whether the subscriber's SUB socket lets `symbol`'s ticks through."""
        if self._receives_everything:
            return True
        topic = topic_prefix(symbol)
        # A prefix longer than the topic reaches into the payload: it may match, so keep it.
        return any(
            topic.startswith(prefix) or prefix.startswith(topic) for prefix in self._subscriptions
        )

    def _checked_snapshot(self, fields: object) -> SyncSnapshot:
        """The snapshot of a reply; ValueError says what is wrong with it."""
        if not isinstance(fields, dict):
            raise ValueError("it is not a JSON object")
        if fields.get("ok") is not True:
            raise ValueError('it has no "ok": true or false')
        epoch = fields.get("epoch")
        if type(epoch) is not int:
            raise ValueError(f"epoch must be an integer, got {epoch!r}")
        # The doc's example carries the marker topic; the bare marker is taken too.
        marker = fields.get("marker", self.marker)
        if marker not in (self.marker, f"{MARKER_TOPIC_PREFIX}{self.marker}"):
            raise ValueError(f"it answers marker {marker!r}, not {self.marker!r}")
        entries_by_symbol = fields.get("snapshot")
        if not isinstance(entries_by_symbol, dict):
            raise ValueError("snapshot must be an object of symbol -> {seq, tick}")
        missing = [symbol for symbol in self.symbols or () if symbol not in entries_by_symbol]
        if missing:
            raise ValueError(f"it has no entry for requested symbols {missing[:5]}")
        return SyncSnapshot(
            epoch,
            {
                symbol: _checked_entry(symbol, entry, epoch)
                for symbol, entry in entries_by_symbol.items()
                if self._receives(symbol)
            },
        )

    def _fail_refused(self, fields: dict[str, Any]) -> SyncError:
        self.state = self.FAILED
        code, detail = fields.get("error"), fields.get("detail")
        code = code if isinstance(code, str) else "unknown"
        detail = detail if isinstance(detail, str) else ""
        hint = _SYNC_REFUSAL_HINTS.get(code, "see docs/sync-protocol.md")
        return SyncError(
            f"sync with {self.endpoint} refused: {code}: {detail} ({hint})",
            endpoint=self.endpoint,
            code=code,
            detail=detail,
            attempts=self.attempts_made,
        )

    def _fail_bad_reply(self, why: str) -> SyncError:
        self.state = self.FAILED
        return SyncError(
            f"sync with {self.endpoint}: the reply is not a sync snapshot ({why}); is "
            f"{self.endpoint} the sync.endpoint of a feedsvc service?",
            endpoint=self.endpoint,
            code=SYNC_BAD_REPLY,
            detail=why,
            attempts=self.attempts_made,
        )


def _checked_entry(symbol: object, entry: object, epoch: int) -> dict[str, Any]:
    """One snapshot entry as ``{"seq", "tick"}``; ValueError if it is not a valid one."""
    problem = symbol_problem(symbol)
    if problem is not None:
        raise ValueError(f"snapshot symbol {str(symbol)[:80]!r} {problem}")
    if not isinstance(entry, dict):
        raise ValueError(f"the entry of {symbol!r} is not an object")
    seq, tick = entry.get("seq"), entry.get("tick")
    if type(seq) is not int or seq < 0:
        raise ValueError(f"the seq of {symbol!r} must be an integer >= 0, got {seq!r}")
    # The tick must be the one the seq stands for, or the baseline would be off by some ticks.
    if tick is not None and not (
        isinstance(tick, dict)
        and tick.get("sym") == symbol
        and type(tick.get("seq")) is int
        and tick["seq"] == seq
        and tick.get("epoch") == epoch
    ):
        raise ValueError(f"the tick of {symbol!r} is not its seq {seq} in epoch {epoch}")
    return {"seq": seq, "tick": tick}


def describe_handshake_failure(event: int, value: int, endpoint: str) -> str:
    """One line for a failed handshake as a client sees it (event and value from the socket
    monitor), saying what to check."""
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return (
            f"{endpoint} refused this client's Curve key (ZAP status {value}): it is not in the "
            "service's curve.authorized_keys"
        )
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
            return (
                f"{endpoint} and this client disagree on Curve: one side uses it and the other "
                "does not (check curve.enabled and the client's Curve keys)"
            )
        return f"{endpoint}: the handshake broke the ZMTP protocol (error {value:#x})"
    return (
        f"{endpoint} closed the connection during the handshake; with Curve, check that the "
        "client's server key is the service's public key"
    )


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

    def summary(self) -> dict[str, Any]:
        """The counters as plain JSON-able data (a copy)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True, slots=True)
class _SyncWait:
    """What the handshake waits for: its SUB socket, the REQ socket too if `with_req`."""

    with_req: bool
    timeout_s: float

    @property
    def timeout_ms(self) -> int:
        return max(1, math.ceil(self.timeout_s * 1000))


_Poller = TypeVar("_Poller", bound=zmq.Poller)


class _SubscriberCore:
    """Socket set-up, decoding, sequence checks, conflation, liveness and the sync handshake,
    shared by the blocking and the asyncio subscriber; those only add the way they wait for the
    sockets.

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
        on_gap: Callable[[Gap], object] | None = None,
        on_restart: Callable[[Restart], object] | None = None,
        on_dead: Callable[[], object] | None = None,
        on_alive: Callable[[], object] | None = None,
        context: zmq.Context | None = None,
        curve: CurveClientKeys | None = None,
    ) -> None:
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

        self.endpoints = endpoint_list
        self.sync_endpoint = sync_endpoint
        self._curve = curve
        self.stats = SubscriberStats()
        self.tracker = SequenceTracker()
        self._conflator = Conflator() if conflate else None
        self._fixed_heartbeat_timeout_s = heartbeat_timeout_s
        self._heartbeat_timeout_s = heartbeat_timeout_s or DEFAULT_HEARTBEAT_TIMEOUT_S
        self._on_gap, self._on_restart = on_gap, on_restart
        self._on_dead, self._on_alive = on_dead, on_alive
        self._drain_limit = rcvhwm or UNBOUNDED_DRAIN_LIMIT
        self._take_live = self._take_conflated if conflate else self._take_next
        self._take_ready = self._take_live
        self._closed = False
        # Liveness is counted from connect: a publisher that never answers is reported dead too.
        self._alive = True
        self._last_message_at = time.monotonic()

        self._subscriptions = subscriptions
        # A prefix may match symbols nobody can list: then the snapshot of every symbol is asked.
        self._sync_symbols = None if prefix_list or not symbol_list else symbol_list
        self._sync_timeout_s, self._sync_attempts = sync_timeout_s, sync_attempts
        self._sync_pending = sync_endpoint is not None
        # The pending sync follows a publisher restart: live ticks already flow in the new
        # epoch, and the snapshot only fills in the symbols that have not ticked in it yet.
        self._resyncing = False
        self.client_id = new_sync_id()
        self._sync_steps: Generator[_SyncWait, None, SyncSnapshot] | None = None
        self._sync_req_owned: zmq.Socket | None = None
        self._sync_req: zmq.Socket | None = None
        # SUB frames read during the handshake, in arrival order, processed once it is done.
        self._sync_frames: list[bytes] = []
        # Ticks the handshake hands out before any live one: the snapshot's, then the kept ones.
        self._backlog: deque[Tick] = deque()
        self._snapshot: dict[str, dict[str, Any]] | None = None
        self._snapshot_epoch: int | None = None
        self._snapshot_seq_by_symbol: dict[str, int] = {}

        self._owns_context = context is None
        self._context = zmq.Context() if context is None else context
        self._owned_socket, self._socket = self._open_socket(zmq.SUB)
        self._handshake_monitor: zmq.Socket | None = None
        self._handshake_failure: str | None = None
        try:
            self._handshake_monitor = self._monitor_handshakes()
            self._socket.setsockopt(zmq.RCVHWM, rcvhwm)
            if rcvbuf:
                self._socket.setsockopt(zmq.RCVBUF, rcvbuf)
            # Heartbeats last: once the publisher applies it, the earlier ones are applied too.
            for subscription in (*subscriptions, _HEARTBEAT_PREFIX):
                self._socket.setsockopt(zmq.SUBSCRIBE, subscription)
            for endpoint in endpoint_list:
                try:
                    curve_connect(self._socket, endpoint, curve)
                except zmq.ZMQError as error:
                    raise ValueError(
                        f"cannot connect to {endpoint!r} ({error}); "
                        "endpoints look like ipc:///tmp/feedsvc/ticks or tcp://host:5556"
                    ) from None
            # Connected now: a bad endpoint fails here, and the connection is up by sync().
            if sync_endpoint is not None:
                self._open_sync_req()
        except BaseException:
            self.close()
            raise

    def _open_socket(self, socket_type: int) -> tuple[zmq.Socket, zmq.Socket]:
        """A socket of the subscriber's class, and the plain socket to do non-blocking I/O on
        (the same one, or a shadow of the asyncio socket, which is only awaited for readiness)."""
        # Through the context, so that its default socket options (Context.setsockopt) apply.
        owned = self._context.socket(socket_type, socket_class=self._socket_class)
        plain = owned if self._socket_class is zmq.Socket else zmq.Socket.shadow(owned.underlying)
        plain.setsockopt(zmq.LINGER, 0)
        return owned, plain

    def _monitor_handshakes(self) -> zmq.Socket:
        address = f"inproc://feedsvc-subscriber-{self.client_id}-handshakes"
        # libzmq tells only a socket monitor about handshake failures: without one a refused
        # Curve key (or Curve on one side only) looks exactly like a silent publisher.
        self._socket.monitor(address, HANDSHAKE_FAILURES)
        # A plain socket even for the asyncio subscriber: it is only read without blocking.
        monitor = zmq.Context.shadow(self._context.underlying).socket(zmq.PAIR)
        monitor.setsockopt(zmq.LINGER, 0)
        monitor.connect(address)
        return monitor

    def _read_handshake_failures(self) -> None:
        monitor = self._handshake_monitor
        if monitor is None:
            return
        while True:
            try:
                event = recv_monitor_message(monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            self.stats.handshake_failures += 1
            self._handshake_failure = describe_handshake_failure(
                event["event"], event["value"], event["endpoint"].decode(errors="replace")
            )

    @property
    def handshake_failure(self) -> str | None:
        """Why a connection handshake failed during the current silence (a Curve key the
        service does not list, Curve on one side only, the wrong server key), or None; cleared
        when messages arrive again. A subscriber that receives nothing should show it."""
        return self._handshake_failure

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
        """The snapshot's epoch after the handshake, None before. After a publisher restart the
        epoch followed is ``tracker.epoch``."""
        return self._snapshot_epoch

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
            if skipped and tick["epoch"] == self.tracker.epoch:
                self.tracker.skip(tick["sym"], skipped)
            event = self.tracker.observe(tick)
        except _MALFORMED_ERRORS:
            self.stats.malformed += 1
            return None
        if event is None or self._report(event):
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
            event.epoch == self._snapshot_epoch
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
        # The reason given for the silence that just ended is not one for the next silence.
        self._read_handshake_failures()
        self._handshake_failure = None
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
            self._sync_symbols,
            subscriptions=self._subscriptions,
            attempts=self._sync_attempts,
            timeout_s=self._sync_timeout_s,
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
                    self._sync_timeout_s,
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
        self._snapshot, self._snapshot_epoch = snapshot.entries, snapshot.epoch
        self._snapshot_seq_by_symbol = {
            symbol: entry["seq"] for symbol, entry in snapshot.entries.items()
        }
        # The marker came from the publisher: it is alive now.
        self._last_message_at = time.monotonic()
        snapshot_ticks, restart = snapshot.apply(self.tracker)
        self.stats.syncs += 1
        if restart is not None:
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
        if snapshot.epoch == tracker.epoch:
            self._snapshot_epoch = snapshot.epoch
            self._snapshot_seq_by_symbol = {}
            for symbol, entry in snapshot.entries.items():
                tick = entry["tick"]
                if tick is None or tracker.last_seq(symbol) is not None:
                    continue
                self._snapshot_seq_by_symbol[symbol] = entry["seq"]
                event = tracker.observe(tick)
                if event is None or self._report(event):
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
        owned, plain = self._open_socket(zmq.REQ)
        try:
            curve_connect(plain, self.sync_endpoint, self._curve)
        except zmq.ZMQError as error:
            owned.close(linger=0)
            raise ValueError(
                f"cannot connect to sync endpoint {self.sync_endpoint!r} ({error}); "
                "endpoints look like ipc:///tmp/feedsvc/sync or tcp://host:5558"
            ) from None
        self._sync_req_owned, self._sync_req = owned, plain

    def _close_sync_req(self) -> None:
        if self._sync_req_owned is not None:
            self._sync_req_owned.close(linger=0)
            self._sync_req_owned = self._sync_req = None


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
    sync_endpoint:
        The service's ``sync.endpoint`` (e.g. ``ipc:///tmp/feedsvc/sync``): run the sync
        handshake (docs/sync-protocol.md) in ``sync()``, or on the first ``recv()``. Then the
        snapshot's last value of every symbol comes first (quiet symbols included), and from it
        on each symbol's seqs follow without gap or duplicate. None: no handshake.
    sync_timeout_s, sync_attempts:
        Each snapshot request waits this long for the reply, then for the marker; after this many
        failed requests ``SyncError`` is raised.
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

    async def sync(self) -> None:
        """Run the sync handshake now, if there is a sync endpoint and it has not succeeded yet;
        as `Subscriber.sync`. Returns early, without error, if another task closes the subscriber.
        """
        wait = self._begin_sync()
        while wait is not None:
            poll = self._sync_poller(wait, zmq.asyncio.Poller()).poll(wait.timeout_ms)
            if not await self._unless_closed(poll):
                return
            wait = self._continue_sync()

    async def recv(self, timeout: float | None = None) -> Tick | None:
        """The next tick, waiting up to `timeout` seconds (None = until one comes).

        Runs the sync handshake first if it is due (as `Subscriber.recv`). Returns None when the
        timeout passes first, or once the subscriber is closed (also by another task while this
        one waits).
        """
        if self._sync_pending:
            await self.sync()
        tick = self._take_ready()
        if tick is None:
            for wait_ms in self._poll_waits_ms(timeout):
                if not await self._unless_closed(self._owned_socket.poll(wait_ms)):
                    return None
                tick = self._take_ready()
                if tick is not None:
                    break
        return tick

    async def _unless_closed(self, waiting: Awaitable[object]) -> bool:
        """Await `waiting`; False if close() cancelled it, True when it completed."""
        try:
            await waiting
        except asyncio.CancelledError:
            # close() cancels the pending poll; only a cancelled task must see the error.
            task = asyncio.current_task()
            if self._closed and (task is None or not task.cancelling()):
                return False
            raise
        return True

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
