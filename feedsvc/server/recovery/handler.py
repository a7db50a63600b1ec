"""Gap recovery's server side: a request for (symbol, epoch, first seq, last seq) answered from
the recovery window (docs/recovery-protocol.md).

No sockets: `RecoveryHandler.handle()` turns a client id and request bytes into the reply's
frames, so it is fuzzed directly; the service owns the ROUTER socket.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Final, NamedTuple

import orjson

from feedsvc.config import RecoveryConfig
from feedsvc.protocol.recovery import (
    ERROR_BAD_REQUEST,
    ERROR_BAD_SYMBOL,
    ERROR_BUSY,
    ERROR_NOT_IN_WINDOW,
    ERROR_NOT_JSON,
    ERROR_NOT_PUBLISHED,
    ERROR_RANGE_TOO_LARGE,
    ERROR_RATE_LIMITED,
    ERROR_TOO_LARGE,
    ERROR_UNKNOWN_EPOCH,
    ERRORS,
    MAX_REQUEST_BYTES,
    OP_RECOVER,
    REQUEST_ID_PATTERN,
    SOURCE_KAFKA,
    SOURCE_MEMORY,
)
from feedsvc.protocol.ticks import symbol_problem
from feedsvc.server.recovery.limits import ClientLimits
from feedsvc.server.recovery.window import RecoveryWindow
from feedsvc.server.sync import describe_value

# Frames of a reply body are joined by this byte: a broadcast frame never holds it (a topic has
# no whitespace, orjson writes none outside strings and escapes it inside).
TICK_SEPARATOR: Final = b"\n"


class Fallback(NamedTuple):
    """The error a forwarded request gets if Kafka cannot answer."""

    code: str
    detail: str
    fields: dict[str, Any]


class RecoveryReply(NamedTuple):
    """The header frame and the body frames (`pieces`: each holds whole tick frames joined by
    TICK_SEPARATOR; None for an error). With `forward` the request goes to the recovery reader
    (Kafka) instead, and `fallback` is its answer if Kafka cannot give one."""

    header: bytes
    pieces: list[bytes | memoryview] | None
    forward: dict[str, Any] | None = None
    fallback: Fallback | None = None

    @property
    def body(self) -> bytes | None:
        """Every tick frame joined by TICK_SEPARATOR (for tests and tools: the service sends
        the pieces as they are)."""
        if self.pieces is None:
            return None
        return TICK_SEPARATOR.join(bytes(piece) for piece in self.pieces)

    @property
    def size(self) -> int:
        return sum(len(piece) for piece in self.pieces) if self.pieces is not None else 0


class _Refused(Exception):
    def __init__(self, code: str, detail: str, **fields: Any) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.fields = fields


def _seq(fields: dict[str, Any], name: str) -> int:
    value = fields.get(name)
    if type(value) is not int or value < 1:
        raise _Refused(
            ERROR_BAD_REQUEST, f"{name} must be an integer >= 1, got {describe_value(value)}"
        )
    return value


class RecoveryHandler:
    """Answers recovery requests; counts requests, ticks served and refusals by reason.

    Parameters
    ----------
    window:
        The frames held.
    epoch:
        This run's epoch (a request for another one gets ``unknown_epoch``).
    config:
        The recovery section: per-request and per-client limits.
    archive_available:
        Whether the recovery reader (Kafka) takes a request now; None: no Kafka mirror.
    inflight_room:
        Bytes of replies that may still be queued now (recovery.max_inflight_bytes less the
        replies not yet written out); a reply that does not fit gets ``busy``.
    clock:
        Monotonic seconds.
    """

    def __init__(
        self,
        window: RecoveryWindow,
        epoch: int,
        config: RecoveryConfig,
        inflight_room: Callable[[], int] | None = None,
        clock: Callable[[], float] = time.monotonic,
        archive_available: Callable[[], bool] | None = None,
    ) -> None:
        self.window = window
        self.epoch = epoch
        self.config = config
        self._inflight_room = inflight_room
        self._archive_available = archive_available
        self.forwarded = 0
        self._clock = clock
        self.limits = ClientLimits(
            config.client_requests_per_s,
            config.client_bytes_per_s,
            config.max_bytes_per_s,
            config.max_reply_bytes,
            clock(),
        )
        self.requests = 0
        self.served_ticks = 0
        self.served_bytes = 0
        self.served_by_source: dict[str, int] = {SOURCE_MEMORY: 0, SOURCE_KAFKA: 0}
        self.rejected_by_reason: dict[str, int] = dict.fromkeys(ERRORS, 0)

    def handle(self, client: bytes, request: bytes) -> RecoveryReply:
        """One request in, one reply out (never raises for bad input)."""
        self.requests += 1
        request_id: str | None = None
        try:
            fields = self._parse(request)
            request_id = fields["id"]
            return self._answer(client, fields)
        except _Refused as refused:
            return self.error_reply(refused.code, refused.detail, request_id, **refused.fields)

    def error_reply(
        self, code: str, detail: str, request_id: str | None = None, **fields: Any
    ) -> RecoveryReply:
        """An error reply, counted under `code` (one of ERRORS)."""
        self.rejected_by_reason[code] += 1
        header = {"ok": False, "id": request_id, "error": code, "detail": detail, **fields}
        return RecoveryReply(orjson.dumps(header), None)

    def _parse(self, request: bytes) -> dict[str, Any]:
        if len(request) > MAX_REQUEST_BYTES:
            raise _Refused(ERROR_TOO_LARGE, f"requests are at most {MAX_REQUEST_BYTES} bytes")
        try:
            fields = orjson.loads(request)
        except orjson.JSONDecodeError:
            raise _Refused(ERROR_NOT_JSON, "the request must be one JSON object") from None
        if not isinstance(fields, dict):
            raise _Refused(ERROR_BAD_REQUEST, "the request must be a JSON object")
        request_id = fields.get("id")
        if not isinstance(request_id, str) or REQUEST_ID_PATTERN.fullmatch(request_id) is None:
            raise _Refused(ERROR_BAD_REQUEST, "id must be 1 to 64 characters of [0-9A-Za-z_.:-]")
        return fields

    def _answer(self, client: bytes, fields: dict[str, Any]) -> RecoveryReply:
        if fields.get("op") != OP_RECOVER:
            raise _Refused(ERROR_BAD_REQUEST, f'op must be "{OP_RECOVER}"')
        symbol, epoch = fields.get("symbol"), fields.get("epoch")
        problem = symbol_problem(symbol)
        if problem is not None:
            raise _Refused(ERROR_BAD_SYMBOL, f"symbol {describe_value(symbol)}: {problem}")
        if type(epoch) is not int:
            raise _Refused(
                ERROR_BAD_REQUEST, f"epoch must be an integer, got {describe_value(epoch)}"
            )
        first, last = _seq(fields, "first"), _seq(fields, "last")
        if last < first:
            raise _Refused(ERROR_BAD_REQUEST, f"last ({last}) must be >= first ({first})")
        max_ticks = self.config.max_ticks_per_request
        if last - first + 1 > max_ticks:
            raise _Refused(
                ERROR_RANGE_TOO_LARGE,
                f"at most {max_ticks} ticks per request (recovery.max_ticks_per_request), "
                f"asked {last - first + 1}",
                max_ticks=max_ticks,
            )
        now = self._clock()
        wait_s = self.limits.wait_s(client, now)
        if wait_s > 0:
            raise _Refused(
                ERROR_RATE_LIMITED,
                "over this client's or the service's recovery rate; retry after retry_after_ms",
                retry_after_ms=max(1, round(wait_s * 1000)),
            )
        if epoch != self.epoch:
            return self._miss(
                fields,
                ERROR_UNKNOWN_EPOCH,
                f"this publisher's epoch is {self.epoch}; ticks of other epochs are not held",
                epoch=self.epoch,
            )
        lookup = self.window.lookup(symbol, first, last, self.config.max_reply_bytes)
        if lookup.latest is not None and last > lookup.latest:
            raise _Refused(
                ERROR_NOT_PUBLISHED,
                f"{symbol} is published up to seq {lookup.latest}",
                oldest=lookup.oldest,
                latest=lookup.latest,
            )
        if lookup.pieces is None:
            return self._miss(
                fields,
                ERROR_NOT_IN_WINDOW,
                "not every tick of the range is held any more (recovery.window_s, "
                "recovery.max_bytes); oldest is the oldest seq held (null: none)",
                oldest=lookup.oldest,
                latest=lookup.latest,
            )
        pieces, count = lookup.pieces, lookup.count
        size = sum(len(piece) for piece in pieces)
        if self._inflight_room is not None and size > self._inflight_room():
            raise _Refused(
                ERROR_BUSY,
                "replies to other clients are still on their way (recovery.max_inflight_bytes); "
                "retry after a backoff",
                retry_after_ms=100,
            )
        self.limits.spend_bytes(client, size, now)
        self.served_ticks += count
        self.served_bytes += size
        self.served_by_source[SOURCE_MEMORY] += count
        header = {
            "ok": True,
            "id": fields["id"],
            "symbol": symbol,
            "epoch": epoch,
            "first": first,
            "last": first + count - 1,
            "count": count,
            "source": SOURCE_MEMORY,
        }
        return RecoveryReply(orjson.dumps(header), pieces)

    def _miss(self, fields: dict[str, Any], code: str, detail: str, **extra: Any) -> RecoveryReply:
        """Not in memory: to the recovery reader (Kafka) when it takes requests, else the
        error."""
        if self._archive_available is None or not self._archive_available():
            raise _Refused(code, detail, **extra)
        self.forwarded += 1
        request = {name: fields[name] for name in ("id", "symbol", "epoch", "first", "last")}
        return RecoveryReply(b"", None, request, Fallback(code, detail, extra))

    def archive_answer(
        self, client: bytes, request: dict[str, Any], parts: list[bytes], fallback: Fallback
    ) -> RecoveryReply:
        """The reply to a forwarded request, from the reader's answer `parts` ([] or a bad
        answer: the fallback error)."""
        try:
            header = orjson.loads(parts[0]) if parts else None
        except orjson.JSONDecodeError:
            header = None
        if not isinstance(header, dict):
            return self.error_reply(
                fallback.code, fallback.detail, request["id"], **fallback.fields
            )
        if header.get("ok") is True and len(parts) == 2:
            count = header.get("count", 0)
            self.served_ticks += count
            self.served_bytes += len(parts[1])
            self.served_by_source[SOURCE_KAFKA] += count
            self.limits.spend_bytes(client, len(parts[1]), self._clock())
            return RecoveryReply(parts[0], [parts[1]])
        code = header.get("error")
        self.rejected_by_reason[
            code if code in self.rejected_by_reason else ERROR_NOT_IN_WINDOW
        ] += 1
        return RecoveryReply(parts[0], None)
