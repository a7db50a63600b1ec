"""Sync and recovery requests through the relay: a ROUTER for the relay's clients, a DEALER to
the upstream, one Python step per request (never per tick).

Each forwarded request is pending until the upstream answers or `request_timeout_s` passes; an
upstream that is not connected, or too slow, gets the client a clear error
(`upstream_unavailable`, which clients retry) instead of silence. Ticks and sync markers do not
come this way: a marker travels the tick path (XSUB -> proxy -> PUB) behind the ticks it
follows, so the handshake through the relay stays exact.

- Sync (REQ/REP): a request is [client, b"", body]; it goes upstream as it is (the upstream's REP
  echoes the envelope), and one request per client is pending (REQ is lock-step).
- Recovery: a request is [client, body] or [client, b"", body]. The upstream's ROUTER takes one
  frame after its own peer id, so the relay sends the body with its own request id and puts the
  client's id back into the reply's header; the reply's tick frames pass unchanged.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import time
from collections.abc import Callable
from typing import Any, Final

import orjson
import zmq

from feedsvc.logs import RateLimiter
from feedsvc.protocol import recovery as recovery_protocol
from feedsvc.protocol import sync as sync_protocol

log = logging.getLogger("feedsvc.relay")

KIND_SYNC: Final = "sync"
KIND_RECOVERY: Final = "recovery"
# Outcomes of a request, the label values of feedsvc_relay_requests_total.
OUTCOME_ANSWERED: Final = "answered"
OUTCOME_UNAVAILABLE: Final = "upstream_unavailable"
OUTCOME_TIMEOUT: Final = "timeout"
OUTCOME_REFUSED: Final = "refused"
OUTCOME_BUSY: Final = "busy"
OUTCOME_INTERNAL_ERROR: Final = "internal_error"
OUTCOMES: Final = (
    OUTCOME_ANSWERED,
    OUTCOME_UNAVAILABLE,
    OUTCOME_TIMEOUT,
    OUTCOME_REFUSED,
    OUTCOME_BUSY,
    OUTCOME_INTERNAL_ERROR,
)
# The same code in both protocols.
UNAVAILABLE: Final = recovery_protocol.ERROR_UPSTREAM_UNAVAILABLE
assert UNAVAILABLE == sync_protocol.ERROR_UPSTREAM_UNAVAILABLE
MESSAGES_PER_PASS: Final = 100
# What the relay queues per client and towards the upstream before it refuses.
QUEUED_PER_PEER: Final = 100
RETRY_AFTER_MS: Final = 500
LOG_INTERVAL_S: Final = 10.0


class _Refusal(Exception):
    """The relay answers the request itself: (error code, detail)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class RequestForwarder:
    """Forwards one kind of request (`KIND_SYNC` or `KIND_RECOVERY`) to one upstream endpoint
    ("" = none: every request gets upstream_unavailable)."""

    def __init__(
        self,
        context: zmq.Context,
        kind: str,
        bind: Callable[[zmq.Socket], None],
        upstream: str,
        connect: Callable[[zmq.Socket, str], None],
        timeout_s: float,
        max_pending: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kind = kind
        self.upstream = upstream
        self._timeout_s = timeout_s
        self._max_pending = max_pending
        self._clock = clock
        self.front = context.socket(zmq.ROUTER)
        self.front.setsockopt(zmq.LINGER, 0)
        self.front.setsockopt(zmq.RCVHWM, QUEUED_PER_PEER)
        self.front.setsockopt(zmq.SNDHWM, QUEUED_PER_PEER)
        self.front.setsockopt(zmq.MAXMSGSIZE, 4 * _max_request_bytes(kind))
        # A reply for a client that has gone is dropped, not queued.
        self.front.setsockopt(zmq.ROUTER_MANDATORY, 0)
        bind(self.front)
        self.back: zmq.Socket | None = None
        if upstream:
            self.back = context.socket(zmq.DEALER)
            self.back.setsockopt(zmq.LINGER, 0)
            # No connection, no queue: a request finds out at once that the upstream is down.
            self.back.setsockopt(zmq.IMMEDIATE, 1)
            self.back.setsockopt(zmq.SNDHWM, max_pending)
            connect(self.back, upstream)
        # key -> (deadline, client route, the client's request id or None); oldest first.
        self._pending: collections.OrderedDict[bytes, tuple[float, list[bytes], Any]] = (
            collections.OrderedDict()
        )
        self._ids = itertools.count(1)
        self.outcomes: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        self._log_limiter = RateLimiter(LOG_INTERVAL_S, time.monotonic)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def sockets(self) -> list[zmq.Socket]:
        return [self.front] if self.back is None else [self.front, self.back]

    def serve(self, ready: dict[zmq.Socket, int]) -> None:
        """Forward what the poll found ready: requests from clients, replies from upstream."""
        if self.front in ready:
            for _ in range(MESSAGES_PER_PASS):
                try:
                    message = self.front.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._contained(self._forward_request, message)
        if self.back is not None and self.back in ready:
            for _ in range(MESSAGES_PER_PASS):
                try:
                    reply = self.back.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                self._contained(self._forward_reply, reply)

    def expire(self) -> None:
        """Answer requests the upstream left unanswered past the timeout."""
        now, pending = self._clock(), self._pending
        while pending:
            key, (deadline, route, request_id) = next(iter(pending.items()))
            if deadline > now:
                return
            del pending[key]
            self.outcomes[OUTCOME_TIMEOUT] += 1
            detail = f"the upstream {self.kind} endpoint did not answer in {self._timeout_s:g} s"
            self._send_error(route, request_id, UNAVAILABLE, detail)

    def close(self) -> None:
        for socket in self.sockets():
            socket.close(linger=0)

    def _contained(self, handle: Callable[[list[Any]], None], message: list[Any]) -> None:
        # One peer's bad message must not stop the relay's loop for every other client.
        try:
            handle(message)
        except Exception:
            self.outcomes[OUTCOME_INTERNAL_ERROR] += 1
            if self._log_limiter.allow():
                log.exception("relay: a %s message could not be handled (dropped)", self.kind)

    def _forward_request(self, message: list[bytes]) -> None:
        route, body = _split_request(self.kind, message)
        if route is None:
            self.outcomes[OUTCOME_REFUSED] += 1  # no envelope to answer to: dropped
            return
        try:
            if body is None:
                raise _Refusal(sync_protocol.ERROR_BAD_REQUEST, "a request is one frame")
            key, upstream_frames, request_id = self._upstream_request(route, body)
        except _Refusal as refusal:
            self.outcomes[OUTCOME_REFUSED] += 1
            self._send_error(route, None, refusal.code, refusal.detail)
            return
        if self.back is None:
            self.outcomes[OUTCOME_UNAVAILABLE] += 1
            detail = f"this relay has no upstream {self.kind} endpoint"
            self._send_error(route, request_id, UNAVAILABLE, detail)
            return
        if len(self._pending) >= self._max_pending and key not in self._pending:
            self.outcomes[OUTCOME_BUSY] += 1
            detail = f"{self._max_pending} requests are waiting for the upstream; retry later"
            self._send_error(route, request_id, recovery_protocol.ERROR_BUSY, detail)
            return
        try:
            self.back.send_multipart(upstream_frames, zmq.NOBLOCK)
        except zmq.Again:
            self.outcomes[OUTCOME_UNAVAILABLE] += 1
            detail = f"the upstream {self.kind} endpoint {self.upstream} is not connected"
            self._send_error(route, request_id, UNAVAILABLE, detail)
            return
        self._pending.pop(key, None)
        self._pending[key] = (self._clock() + self._timeout_s, route, request_id)

    def _upstream_request(self, route: list[bytes], body: bytes) -> tuple[bytes, list[bytes], Any]:
        """(pending key, frames to send upstream, the client's request id)."""
        if self.kind == KIND_SYNC:
            # REQ is lock-step: the client's identity is the key; REP echoes the envelope.
            return route[0], [route[0], b"", body], None
        if len(body) > recovery_protocol.MAX_REQUEST_BYTES:
            limit = recovery_protocol.MAX_REQUEST_BYTES
            raise _Refusal(recovery_protocol.ERROR_TOO_LARGE, f"requests are at most {limit} bytes")
        try:
            fields = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise _Refusal(
                recovery_protocol.ERROR_NOT_JSON, "the request must be one JSON object"
            ) from None
        if not isinstance(fields, dict) or not isinstance(fields.get("id"), str):
            raise _Refusal(recovery_protocol.ERROR_BAD_REQUEST, "a request needs a string id")
        request_id = fields["id"]
        relay_id = f"relay.{next(self._ids)}"
        fields["id"] = relay_id
        return relay_id.encode(), [orjson.dumps(fields)], request_id

    def _forward_reply(self, frames: list[zmq.Frame]) -> None:
        if self.kind == KIND_SYNC:
            # [client, b"", reply] as the upstream's REP echoed it.
            if len(frames) != 3:
                return
            key = frames[0].bytes
            if self._pending.pop(key, None) is None:
                return  # answered already (timed out): the client has moved on
            self.outcomes[OUTCOME_ANSWERED] += 1
            self.front.send_multipart(frames, zmq.NOBLOCK, copy=False)
            return
        header = orjson.loads(frames[0].bytes)
        relay_id = header.get("id") if isinstance(header, dict) else None
        if not isinstance(relay_id, str):
            return
        entry = self._pending.pop(relay_id.encode(), None)
        if entry is None:
            return
        _deadline, route, request_id = entry
        header["id"] = request_id
        self.outcomes[OUTCOME_ANSWERED] += 1
        self.front.send_multipart(
            [*route, orjson.dumps(header), *frames[1:]], zmq.NOBLOCK, copy=False
        )

    def _send_error(self, route: list[bytes], request_id: Any, code: str, detail: str) -> None:
        reply: dict[str, Any] = {"ok": False, "error": code, "detail": detail}
        if self.kind == KIND_RECOVERY:
            reply = {"ok": False, "id": request_id, "error": code, "detail": detail}
            if code in recovery_protocol.RETRYABLE_ERRORS:
                reply["retry_after_ms"] = RETRY_AFTER_MS
        # A client that is gone or does not read has nothing to be told.
        with contextlib.suppress(zmq.ZMQError):
            self.front.send_multipart([*route, orjson.dumps(reply)], zmq.NOBLOCK)


def _max_request_bytes(kind: str) -> int:
    return 1_048_576 if kind == KIND_SYNC else recovery_protocol.MAX_REQUEST_BYTES


def _split_request(kind: str, message: list[bytes]) -> tuple[list[bytes] | None, bytes | None]:
    """(the client's route, the request body): the route is what a reply is sent back with."""
    if len(message) < 2:
        return None, None
    if kind == KIND_SYNC:
        # REQ: [client, b"", body]; anything else is answered as a bad request.
        if len(message) == 3 and not message[1]:
            return message[:2], message[2]
        return (message[:2], None) if not message[1] else (message[:1], None)
    if len(message) == 2:
        return message[:1], message[1]
    if len(message) == 3 and not message[1]:
        return message[:2], message[2]
    return message[:1], None
