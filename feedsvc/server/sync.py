"""The sync handshake's server side: snapshot requests answered from the last-value cache.

Protocol (docs/sync-protocol.md): a client subscribes, sends ``{"op": "snapshot", ...}`` on REQ,
gets the epoch and per symbol the latest seq and last tick, and waits for a marker frame on the
PUB socket that the service sends right after taking the snapshot. Then it sends
``{"op": "ready", ...}``; those are the completed handshakes ``--wait-subscribers`` counts.

This module has no sockets: `SyncHandler.handle()` turns request bytes into reply bytes and the
marker frame to publish, so it is fuzzed directly. The service owns the REP socket.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Final, NamedTuple

import orjson

from feedsvc.protocol.sync import (
    CLIENT_PATTERN,
    ERROR_BAD_REQUEST,
    ERROR_BAD_SYMBOL,
    ERROR_BUSY,
    ERROR_NOT_JSON,
    ERROR_SNAPSHOT_TOO_LARGE,
    ERROR_TOO_LARGE,
    ERROR_TOO_MANY_SYMBOLS,
    ERROR_UNKNOWN_MARKER,
    ERRORS,
    MARKER_PATTERN,
    marker_topic,
)
from feedsvc.protocol.ticks import encode_frame, symbol_problem

DEFAULT_MAX_SNAPSHOT_BYTES: Final = 64 * 1024 * 1024
# Reply bytes per symbol besides its payload: the symbol key, "seq", "tick" and punctuation.
_SNAPSHOT_BYTES_PER_SYMBOL: Final = 112
# A reply's bytes besides its snapshot entries: ok, epoch, marker (an empty snapshot is not free).
_SNAPSHOT_REPLY_BYTES: Final = 160

# symbols (None = all) -> {symbol: (last seq, last payload bytes or None)}
SnapshotSource = Callable[[Iterable[str] | None], dict[str, tuple[int, bytes | None]]]
# Longest piece of a client's value quoted back in an error's detail.
_QUOTED_CHARACTERS: Final = 80


def describe_value(value: object) -> str:
    """A short, bounded description of a value from a peer, for error details and logs: a
    string quoted and cut, a scalar as it is, a list or object only by its type (repr() of a
    nested value can be unbounded, or recurse past the interpreter's limit)."""
    if isinstance(value, str):
        return repr(value[:_QUOTED_CHARACTERS])
    if value is None or isinstance(value, bool | float) or type(value) is int:
        # orjson decodes integers of at most 64 bits: short.
        return repr(value)
    if isinstance(value, list):
        return "a list"
    return "an object" if isinstance(value, dict) else f"a {type(value).__name__}"


class SyncReply(NamedTuple):
    reply: bytes
    # The frame to send on the PUB socket right after the reply's snapshot was taken, or None.
    marker_frame: bytes | None


class _BadRequest(Exception):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class SyncHandler:
    """Answers sync requests; counts what it served, rejected (by reason) and completed.

    Parameters
    ----------
    snapshot_source:
        Returns the last-value cache for the given symbols (None = all symbols).
    epoch:
        This run's epoch.
    max_symbols_per_request:
        Larger requests get a ``too_many_symbols`` error (bounds the work and the reply size).
    max_request_bytes:
        Larger requests get a ``too_large`` error.
    max_snapshot_bytes:
        A snapshot that would be larger gets a ``snapshot_too_large`` error before it is built
        (bounds the reply's memory: payloads can be up to ingest.max_tick_bytes each).
    snapshot_room:
        Bytes of snapshot replies that may still be sent now (sync.max_inflight_bytes less the
        replies not yet gone); a snapshot that does not fit gets a ``busy`` error.
    all_symbols_bytes:
        An upper bound of the payload bytes of every symbol's last value (the cache's
        reservation), so that a request for all symbols is refused before any work.
    """

    def __init__(
        self,
        snapshot_source: SnapshotSource,
        epoch: int,
        max_symbols_per_request: int,
        max_request_bytes: int,
        max_snapshot_bytes: int = DEFAULT_MAX_SNAPSHOT_BYTES,
        snapshot_room: Callable[[], int] | None = None,
        all_symbols_bytes: Callable[[], tuple[int, int]] | None = None,
        shard: str = "",
    ) -> None:
        self._snapshot_source = snapshot_source
        self.epoch = epoch
        self.shard = shard
        self.max_symbols_per_request = max_symbols_per_request
        self.max_request_bytes = max_request_bytes
        self.max_snapshot_bytes = max_snapshot_bytes
        self._snapshot_room = snapshot_room
        self._all_symbols_bytes = all_symbols_bytes
        self.snapshots_served = 0
        self.rejected_by_reason: dict[str, int] = dict.fromkeys(ERRORS, 0)
        self.ready_clients: set[str] = set()
        # Bounds the set of client ids a stream of made-up ids could grow.
        self.max_ready_clients = 100_000
        # (client, marker) of the snapshots served and not yet confirmed by a ready; the oldest
        # are forgotten first beyond the bound.
        self._served: dict[tuple[str, str], None] = {}
        self.max_unconfirmed_snapshots = 100_000

    @property
    def completed_handshakes(self) -> int:
        return len(self.ready_clients)

    def handle(self, request: bytes) -> SyncReply:
        """One request in, one reply out (never raises for bad input)."""
        try:
            fields = self._parse(request)
            if fields["op"] == "ready":
                return self._ready(fields)
            return self._snapshot(fields)
        except _BadRequest as error:
            return self.error_reply(error.code, error.detail)

    def error_reply(self, code: str, detail: str) -> SyncReply:
        """An error reply, counted under `code` (one of ERRORS)."""
        self.rejected_by_reason[code] += 1
        reply = {"ok": False, "error": code, "detail": detail}
        return SyncReply(orjson.dumps(reply), None)

    def _parse(self, request: bytes) -> dict[str, Any]:
        if len(request) > self.max_request_bytes:
            raise _BadRequest(
                ERROR_TOO_LARGE, f"requests are at most {self.max_request_bytes} bytes"
            )
        try:
            fields = orjson.loads(request)
        except orjson.JSONDecodeError:
            raise _BadRequest(ERROR_NOT_JSON, "the request must be one JSON object") from None
        if not isinstance(fields, dict):
            raise _BadRequest(ERROR_BAD_REQUEST, "the request must be a JSON object")
        if fields.get("op") not in ("snapshot", "ready"):
            raise _BadRequest(ERROR_BAD_REQUEST, 'op must be "snapshot" or "ready"')
        for name, pattern in (("client", CLIENT_PATTERN), ("marker", MARKER_PATTERN)):
            value = fields.get(name)
            if not isinstance(value, str) or pattern.fullmatch(value) is None:
                raise _BadRequest(
                    ERROR_BAD_REQUEST, f"{name} must be 1 to 64 characters of [0-9A-Za-z_-]"
                )
        return fields

    def _check_snapshot_size(self, symbol_count: int, estimated_bytes: int) -> None:
        if estimated_bytes > self.max_snapshot_bytes:
            raise _BadRequest(
                ERROR_SNAPSHOT_TOO_LARGE,
                f"the snapshot of {symbol_count} symbols would be about {estimated_bytes} bytes, "
                f"over sync.max_snapshot_bytes ({self.max_snapshot_bytes})",
            )
        if self._snapshot_room is not None and estimated_bytes > self._snapshot_room():
            raise _BadRequest(
                ERROR_BUSY,
                "snapshot replies to other clients are still on their way "
                "(sync.max_inflight_bytes); retry after a backoff",
            )

    def _ready(self, fields: dict[str, Any]) -> SyncReply:
        # Only a client that got its snapshot has completed the handshake.
        served = (fields["client"], fields["marker"])
        if served not in self._served:
            raise _BadRequest(
                ERROR_UNKNOWN_MARKER,
                "no snapshot was served to this client with this marker; ready follows the "
                "snapshot reply and its marker",
            )
        del self._served[served]
        if len(self.ready_clients) < self.max_ready_clients:
            self.ready_clients.add(fields["client"])
        return SyncReply(b'{"ok":true}', None)

    def _snapshot(self, fields: dict[str, Any]) -> SyncReply:
        symbols = fields.get("symbols")
        if symbols is not None:
            if not isinstance(symbols, list):
                raise _BadRequest(ERROR_BAD_REQUEST, "symbols must be a list or null")
            if len(symbols) > self.max_symbols_per_request:
                raise _BadRequest(
                    ERROR_TOO_MANY_SYMBOLS,
                    f"at most {self.max_symbols_per_request} symbols per request, "
                    f"got {len(symbols)}",
                )
            for symbol in symbols:
                problem = symbol_problem(symbol)
                if problem is not None:
                    raise _BadRequest(ERROR_BAD_SYMBOL, f"{describe_value(symbol)}: {problem}")
        elif self._all_symbols_bytes is not None:
            # Every symbol: refuse on the cache's own bound before reading a single entry.
            symbol_count, payload_bytes = self._all_symbols_bytes()
            self._check_snapshot_size(
                symbol_count,
                _SNAPSHOT_REPLY_BYTES + payload_bytes + _SNAPSHOT_BYTES_PER_SYMBOL * symbol_count,
            )
        cache = self._snapshot_source(symbols)
        estimated_bytes = sum(
            len(symbol) + (len(payload) if payload is not None else 4)
            for symbol, (_seq, payload) in cache.items()
        ) + (_SNAPSHOT_REPLY_BYTES + _SNAPSHOT_BYTES_PER_SYMBOL * len(cache))
        self._check_snapshot_size(len(cache), estimated_bytes)
        snapshot = {
            symbol: {
                "seq": seq,
                # The payload as broadcast, embedded without decoding and re-encoding.
                "tick": orjson.Fragment(payload) if payload is not None else None,
            }
            for symbol, (seq, payload) in cache.items()
        }
        marker = fields["marker"]
        reply = {
            "ok": True,
            "epoch": self.epoch,
            "shard": self.shard,
            "marker": marker_topic(marker),
            "snapshot": snapshot,
        }
        self.snapshots_served += 1
        while self._served and len(self._served) >= self.max_unconfirmed_snapshots:
            del self._served[next(iter(self._served))]
        self._served[fields["client"], marker] = None
        marker_frame = encode_frame(marker_topic(marker), {"epoch": self.epoch, "marker": marker})
        return SyncReply(orjson.dumps(reply), marker_frame)
