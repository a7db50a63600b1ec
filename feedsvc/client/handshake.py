"""The client side of the sync handshake (docs/sync-protocol.md) without sockets: `SyncHandshake`
makes the requests, checks the replies and recognises the marker; `SyncError` and the SYNC_* codes
say why it failed, with a hint per refusal; the timing constants say how long it waits."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

import orjson

from feedsvc.client.sequence import Restart, SequenceTracker
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
from feedsvc.protocol.ticks import Tick, symbol_problem, topic_prefix

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
    """A checked snapshot reply: the epoch and, per symbol, ``{"seq": int, "tick": Tick | None,
    "epoch": int}`` in the order the service sent them (only symbols this subscriber receives).

    From one publisher, `epoch_by_shard` is its one shard and epoch; through a relay in front of
    several (shards), one entry per shard, and each symbol's entry says its epoch.
    """

    epoch: int
    entries: dict[str, dict[str, Any]]
    epoch_by_shard: dict[str, int]

    def apply(self, tracker: SequenceTracker) -> tuple[list[Tick], list[Restart]]:
        """Make every symbol's snapshot seq its baseline in `tracker` (seq + 1 comes next).

        Returns
        -------
        The snapshot's ticks to deliver before any other, in snapshot order, symbols without a
        tick skipped; and a Restart for each shard `tracker` was following in another epoch.
        """
        restarts = [
            restart
            for shard, epoch in self.epoch_by_shard.items()
            if (restart := tracker.observe_epoch(epoch, shard)) is not None
        ]
        shard_by_epoch = {epoch: shard for shard, epoch in self.epoch_by_shard.items()}
        for symbol, entry in self.entries.items():
            epoch = entry["epoch"]
            tracker.set_baseline(symbol, epoch, entry["seq"], shard_by_epoch[epoch])
        ticks = [entry["tick"] for entry in self.entries.values() if entry["tick"] is not None]
        return ticks, restarts


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
        # Through a relay in front of several shards every shard sends the marker: the epochs
        # of those seen (None for one without a readable epoch).
        self._marker_epochs: set[int | None] = set()
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
        self._marker_epochs = set()
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
        self._marker_epochs.add(_marker_epoch(frame[len(self._marker_prefix) :]))
        if self.state == self.AWAITING_MARKER and self._all_markers_seen():
            self.state = self.SYNCED
        return True

    def _all_markers_seen(self) -> bool:
        """One marker from each shard of the snapshot (from one publisher: any marker)."""
        assert self._snapshot is not None
        epochs = self._snapshot.epoch_by_shard.values()
        return self._marker_seen and (len(epochs) == 1 or self._marker_epochs.issuperset(epochs))

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
        self.state = self.SYNCED if self._all_markers_seen() else self.AWAITING_MARKER

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
        epoch_by_shard = _checked_epochs(fields, epoch)
        epochs = set(epoch_by_shard.values())
        return SyncSnapshot(
            epoch,
            {
                symbol: _checked_entry(symbol, entry, epoch, epochs)
                for symbol, entry in entries_by_symbol.items()
                if self._receives(symbol)
            },
            epoch_by_shard,
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


def _marker_epoch(payload: bytes) -> int | None:
    try:
        fields = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    epoch = fields.get("epoch") if isinstance(fields, dict) else None
    return epoch if type(epoch) is int else None


def _checked_epochs(fields: dict[str, Any], epoch: int) -> dict[str, int]:
    """The reply's shard -> epoch: a relay's "epochs" for several shards, else its one shard."""
    epochs = fields.get("epochs")
    if epochs is None:
        shard = fields.get("shard", "")
        if not isinstance(shard, str):
            raise ValueError(f"shard must be a string, got {shard!r}")
        return {shard: epoch}
    if (
        not isinstance(epochs, dict)
        or not epochs
        or not all(isinstance(shard, str) and type(value) is int for shard, value in epochs.items())
        or epoch not in epochs.values()
    ):
        raise ValueError(f"epochs must be an object of shard -> epoch with {epoch}")
    return epochs


def _checked_entry(
    symbol: object, entry: object, reply_epoch: int, epochs: set[int]
) -> dict[str, Any]:
    """One snapshot entry as ``{"seq", "tick", "epoch"}``; ValueError if it is not a valid one."""
    problem = symbol_problem(symbol)
    if problem is not None:
        raise ValueError(f"snapshot symbol {str(symbol)[:80]!r} {problem}")
    if not isinstance(entry, dict):
        raise ValueError(f"the entry of {symbol!r} is not an object")
    seq, tick, epoch = entry.get("seq"), entry.get("tick"), entry.get("epoch", reply_epoch)
    if epoch not in epochs:
        raise ValueError(f"the epoch of {symbol!r} is not one of the reply's, got {epoch!r}")
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
    return {"seq": seq, "tick": tick, "epoch": epoch}
