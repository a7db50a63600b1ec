"""Sync and recovery requests through the relay: a ROUTER for the relay's clients, a DEALER to
the upstream, one Python step per request (never per tick).

Each forwarded request is pending until the upstream answers or `request_timeout_s` passes; an
upstream that is not connected, or too slow, gets the client a clear error
(`upstream_unavailable`, which clients retry) instead of silence. Ticks and sync markers do not
come this way: a marker travels the tick path (XSUB -> proxy -> PUB) behind the ticks it
follows, so the handshake through the relay stays exact.

- Sync (REQ/REP): a request is [client, b"", body]; it goes upstream under the relay's own
  envelope id (the upstream's REP echoes it), so a late reply to an attempt that timed out is
  never taken for the answer to the next. With several upstreams (shards) it goes to every one,
  and the replies are merged into one (`merge_sync_replies`): a snapshot of every shard, each
  entry with its shard's epoch, and "epochs" naming them; each shard sends the marker on its own
  tick path.
- Recovery: a request is [client, body] or [client, b"", body]. The upstream's ROUTER takes one
  frame after its own peer id, so the relay sends the body with its own request id and puts the
  client's id back into the reply's header; the reply's tick frames pass unchanged. With several
  upstreams it goes to the one publishing the request's epoch now (from its heartbeats).
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
# What `upstream_for_epoch` says while some upstream's epoch is not known yet (no heartbeat):
# the request may be that one's, so it is worth a retry.
EPOCH_NOT_KNOWN_YET: Final = -1


class _Refusal(Exception):
    """The relay answers the request itself: (error code, detail)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class _Pending:
    """A request forwarded upstream and not answered yet."""

    __slots__ = ("deadline", "expected", "replies", "request_id", "route")

    def __init__(
        self, deadline: float, route: list[bytes], request_id: Any, expected: int = 1
    ) -> None:
        self.deadline = deadline
        self.route = route
        self.request_id = request_id
        self.replies: list[bytes] = []
        self.expected = expected


class RequestForwarder:
    """Forwards one kind of request (`KIND_SYNC` or `KIND_RECOVERY`) to the upstreams' endpoints
    of that kind ("" = that upstream has none; none at all: every request gets
    upstream_unavailable).

    `upstream_for_epoch` says which upstream (index into `upstreams`) publishes an epoch now
    (None: none does; EPOCH_NOT_KNOWN_YET: some upstream has not told its epoch yet); recovery
    requests go there when there are several.
    """

    def __init__(
        self,
        context: zmq.Context,
        kind: str,
        bind: Callable[[zmq.Socket], None],
        upstreams: list[str],
        connect: Callable[[zmq.Socket, str], None],
        timeout_s: float,
        max_pending: int,
        clock: Callable[[], float] = time.monotonic,
        upstream_for_epoch: Callable[[int], int | None] = lambda _epoch: None,
    ) -> None:
        self.kind = kind
        self.upstreams = upstreams
        self._upstream_for_epoch = upstream_for_epoch
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
        # (upstream index, DEALER) of each upstream with an endpoint of this kind.
        self.backs: list[tuple[int, zmq.Socket]] = []
        for index, upstream in enumerate(upstreams):
            if not upstream:
                continue
            back = context.socket(zmq.DEALER)
            back.setsockopt(zmq.LINGER, 0)
            # No connection, no queue: a request finds out at once that the upstream is down.
            back.setsockopt(zmq.IMMEDIATE, 1)
            back.setsockopt(zmq.SNDHWM, max_pending)
            connect(back, upstream)
            self.backs.append((index, back))
        # relay key -> the request waiting for its reply (or replies); oldest first.
        self._pending: collections.OrderedDict[bytes, _Pending] = collections.OrderedDict()
        self._ids = itertools.count(1)
        self.outcomes: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        self._log_limiter = RateLimiter(LOG_INTERVAL_S, time.monotonic)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def sockets(self) -> list[zmq.Socket]:
        return [self.front, *(back for _index, back in self.backs)]

    def serve(self, ready: dict[zmq.Socket, int]) -> None:
        """Forward what the poll found ready: requests from clients, replies from upstream."""
        if self.front in ready:
            for _ in range(MESSAGES_PER_PASS):
                try:
                    message = self.front.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._contained(self._forward_request, message)
        for _index, back in self.backs:
            if back not in ready:
                continue
            for _ in range(MESSAGES_PER_PASS):
                try:
                    reply = back.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                self._contained(self._forward_reply, reply)

    def expire(self) -> None:
        """Answer requests the upstream left unanswered past the timeout."""
        now, pending = self._clock(), self._pending
        while pending:
            key, request = next(iter(pending.items()))
            if request.deadline > now:
                return
            del pending[key]
            self.outcomes[OUTCOME_TIMEOUT] += 1
            detail = f"the upstream {self.kind} endpoint did not answer in {self._timeout_s:g} s"
            self._send_error(request.route, request.request_id, UNAVAILABLE, detail)

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
        request_id = None
        try:
            if body is None:
                raise _Refusal(sync_protocol.ERROR_BAD_REQUEST, "a request is one frame")
            key, upstream_frames, request_id, epoch = self._upstream_request(body)
            backs = self._backs_for(epoch)
        except _Refusal as refusal:
            self.outcomes[OUTCOME_REFUSED] += 1
            self._send_error(route, request_id, refusal.code, refusal.detail)
            return
        if not backs:
            self.outcomes[OUTCOME_UNAVAILABLE] += 1
            detail = f"this relay has no upstream {self.kind} endpoint"
            self._send_error(route, request_id, UNAVAILABLE, detail)
            return
        if len(self._pending) >= self._max_pending:
            self.outcomes[OUTCOME_BUSY] += 1
            detail = f"{self._max_pending} requests are waiting for the upstream; retry later"
            self._send_error(route, request_id, recovery_protocol.ERROR_BUSY, detail)
            return
        sent, down = 0, []
        for index, back in backs:
            try:
                back.send_multipart(upstream_frames, zmq.NOBLOCK)
                sent += 1
            except zmq.Again:
                down.append(self.upstreams[index])
        if not sent:
            self.outcomes[OUTCOME_UNAVAILABLE] += 1
            detail = f"the upstream {self.kind} endpoint {', '.join(down)} is not connected"
            self._send_error(route, request_id, UNAVAILABLE, detail)
            return
        # A shard that is down is left out of a sync: the others' snapshots are still exact, and
        # its symbols come as it ticks again (a new epoch for the client).
        deadline = self._clock() + self._timeout_s
        self._pending[key] = _Pending(deadline, route, request_id, sent)

    def _backs_for(self, epoch: int | None) -> list[tuple[int, zmq.Socket]]:
        """The upstreams a request goes to: a sync request to all, a recovery request to the
        one publishing its epoch (with one upstream, that one: it answers for itself)."""
        backs = self.backs
        if self.kind == KIND_SYNC or len(backs) <= 1:
            return backs
        index = self._upstream_for_epoch(epoch) if type(epoch) is int else None
        if index == EPOCH_NOT_KNOWN_YET:
            raise _Refusal(UNAVAILABLE, "this relay has not heard from every upstream yet")
        chosen = [(i, back) for i, back in backs if i == index]
        if not chosen:
            raise _Refusal(
                recovery_protocol.ERROR_UNKNOWN_EPOCH,
                f"no upstream of this relay publishes epoch {str(epoch)[:80]} now",
            )
        return chosen

    def _upstream_request(self, body: bytes) -> tuple[bytes, list[bytes], Any, Any]:
        """(pending key, frames to send upstream, the client's request id, the epoch asked)."""
        if self.kind == KIND_SYNC:
            # The upstream REP echoes the envelope: the relay's key comes back with the reply.
            key = b"s.%d" % next(self._ids)
            return key, [key, b"", body], None, None
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
        return relay_id.encode(), [orjson.dumps(fields)], request_id, fields.get("epoch")

    def _forward_reply(self, frames: list[zmq.Frame]) -> None:
        if self.kind == KIND_SYNC:
            # [relay key, b"", reply] as the upstream's REP echoed it.
            if len(frames) != 3:
                return
            key = frames[0].bytes
            request = self._pending.get(key)
            if request is None:
                return  # answered already (timed out): the client has moved on
            if request.expected == 1:
                del self._pending[key]
                self.outcomes[OUTCOME_ANSWERED] += 1
                self.front.send_multipart([*request.route, frames[2]], zmq.NOBLOCK, copy=False)
                return
            request.replies.append(frames[2].bytes)
            if len(request.replies) < request.expected:
                return
            del self._pending[key]
            self.outcomes[OUTCOME_ANSWERED] += 1
            merged = merge_sync_replies(request.replies)
            self.front.send_multipart([*request.route, merged], zmq.NOBLOCK)
            return
        header = orjson.loads(frames[0].bytes)
        relay_id = header.get("id") if isinstance(header, dict) else None
        if not isinstance(relay_id, str):
            return
        entry = self._pending.pop(relay_id.encode(), None)
        if entry is None:
            return
        header["id"] = entry.request_id
        self.outcomes[OUTCOME_ANSWERED] += 1
        self.front.send_multipart(
            [*entry.route, orjson.dumps(header), *frames[1:]], zmq.NOBLOCK, copy=False
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


def merge_sync_replies(replies: list[bytes]) -> bytes:
    """One reply for the client from the replies of several shards to the same sync request.

    A refusal from any shard is the answer (the same request would be refused again). Ready
    replies merge into ``{"ok": true}``. Snapshots merge into one: "epoch" is the first shard's,
    "epochs" names every shard's (a relay behind this one already merged some), and each entry
    carries its shard's epoch; a symbol that several shards list takes the entry with a tick
    (each symbol belongs to one shard; the others answer seq 0 for a symbol they never had).
    A reply that is none of these is answered ``internal_error``, never passed on half-merged.
    """
    try:
        decoded = [orjson.loads(reply) for reply in replies]
    except orjson.JSONDecodeError:
        return _merge_error("an upstream's sync reply is not JSON")
    for index, fields in enumerate(decoded):
        if not isinstance(fields, dict) or fields.get("ok") is not True:
            return replies[index]
    if not any("snapshot" in fields for fields in decoded):
        return orjson.dumps({"ok": True})
    epoch_by_shard: dict[str, int] = {}
    snapshot: dict[str, Any] = {}
    for fields in decoded:
        epoch, entries, shard = fields.get("epoch"), fields.get("snapshot"), fields.get("shard", "")
        if type(epoch) is not int or not isinstance(entries, dict) or not isinstance(shard, str):
            return _merge_error("an upstream's sync reply is not a snapshot")
        shards = fields.get("epochs") or {shard: epoch}
        if not isinstance(shards, dict):
            return _merge_error("an upstream's sync reply names its shards wrongly")
        for shard, shard_epoch in shards.items():
            if not isinstance(shard, str) or type(shard_epoch) is not int:
                return _merge_error("an upstream's sync reply names its shards wrongly")
            if epoch_by_shard.setdefault(shard, shard_epoch) != shard_epoch:
                return _merge_error(
                    f"two upstreams of this relay call themselves shard {shard[:80]!r} "
                    "(publisher.shard must differ)"
                )
        for symbol, entry in entries.items():
            if not isinstance(entry, dict):
                return _merge_error("an upstream's snapshot entry is not an object")
            entry.setdefault("epoch", epoch)
            held = snapshot.get(symbol)
            if held is None or (held.get("tick") is None and entry.get("tick") is not None):
                snapshot[symbol] = entry
    first = decoded[0]
    merged = {
        "ok": True,
        "epoch": first["epoch"],
        "epochs": epoch_by_shard,
        "marker": first.get("marker"),
        "snapshot": snapshot,
    }
    return orjson.dumps(merged)


def _merge_error(detail: str) -> bytes:
    return orjson.dumps({"ok": False, "error": sync_protocol.ERROR_INTERNAL, "detail": detail})


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
