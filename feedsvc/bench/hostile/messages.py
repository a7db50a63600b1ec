"""Attacks by what they send: nested JSON, floods of snapshot requests and ingest batches, big
ticks for new symbols, snapshot requests kept in flight. Each runs for at most its budget and
returns its tally (see feedsvc.bench.hostile.attacks for the registry)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from typing import Any

import orjson
import zmq

from feedsvc.bench.hostile.payloads import (
    MAX_MESSAGE_BYTES,
    bad_symbol_request,
    big_tick_frame,
    nested_sync_request,
    nested_tick_frame,
    valid_batch,
)
from feedsvc.bench.hostile.peer import AttackTally, Budget, Endpoints, Pacer, zmq_context


def nested_tick(
    endpoints: Endpoints,
    *,
    duration_s: float = 10.0,
    stop: threading.Event | None = None,
    numbers: int = 400,
    depth: int = 300,
    frames: int = 1,
    interval_s: float = 1.0,
) -> dict[str, Any]:
    """PUSH `frames` ingest frames (`nested_tick_frame`), `interval_s` apart."""
    budget, tally = Budget(duration_s, stop), AttackTally()
    frame = nested_tick_frame(numbers, depth)
    context = zmq_context()
    push = context.socket(zmq.PUSH)
    push.linger = 1_000
    push.sndtimeo = 1_000
    try:
        push.connect(endpoints.ingest)
        for index in range(frames):
            if index and not budget.sleep(interval_s):
                break
            try:
                push.send(frame)
            except zmq.Again:
                tally.error("send_timeout")
                continue
            tally.sent += 1
            tally.bytes_sent += len(frame)
    finally:
        push.close()
        context.term()
    tally.extra["frame_bytes"] = len(frame)
    return tally.as_dict()


def nested_sync(
    endpoints: Endpoints,
    *,
    duration_s: float = 10.0,
    stop: threading.Event | None = None,
    depth: int = 1_000,
    requests: int = 1,
    reply_timeout_s: float = 2.0,
) -> dict[str, Any]:
    """Send `requests` snapshot requests (`nested_sync_request`) on a REQ, one at a time."""
    budget, tally = Budget(duration_s, stop), AttackTally()
    request = nested_sync_request(depth)
    context = zmq_context()
    try:
        for _ in range(requests):
            if budget.over():
                break
            # A REQ without its reply cannot send again: a fresh one per request.
            req = context.socket(zmq.REQ)
            req.linger = 0
            try:
                req.connect(endpoints.sync)
                req.send(request)
                tally.sent += 1
                tally.bytes_sent += len(request)
                if req.poll(int(1000 * min(reply_timeout_s, budget.remaining() + 0.1))):
                    reply = orjson.loads(req.recv())
                    tally.replies += 1
                    if not reply.get("ok"):
                        tally.error(str(reply.get("error")))
                else:
                    tally.error("no_reply")
            finally:
                req.close()
    finally:
        context.term()
    tally.extra["request_bytes"] = len(request)
    return tally.as_dict()


def sync_flood(
    endpoints: Endpoints,
    *,
    duration_s: float = 10.0,
    stop: threading.Event | None = None,
    dealers: int = 2,
    rate_per_s: float = 21.0,
    request_bytes: int = MAX_MESSAGE_BYTES - 512,
    shape: str = "nested_zeros",
) -> dict[str, Any]:
    """`dealers` DEALERs send `bad_symbol_request`s round-robin, `rate_per_s` in total, without
    waiting for replies (replies are read as they come)."""
    budget, tally = Budget(duration_s, stop), AttackTally()
    request = bad_symbol_request(request_bytes, shape)
    context = zmq_context()
    sockets = []
    try:
        for _ in range(dealers):
            dealer = context.socket(zmq.DEALER)
            dealer.linger = 0
            # A few requests queued per dealer at most: the attacker holds no backlog itself.
            dealer.sndhwm = 4
            dealer.connect(endpoints.sync)
            sockets.append(dealer)
        pacer = Pacer(rate_per_s)
        while pacer.wait_turn(budget):
            dealer = sockets[pacer.count % len(sockets)]
            try:
                # Zero-copy: every send shares the one request buffer.
                dealer.send_multipart([b"", request], zmq.NOBLOCK, copy=False)
                tally.sent += 1
                tally.bytes_sent += len(request)
            except zmq.Again:
                tally.error("queue_full")
            for reader in sockets:
                _drain_replies(reader, tally)
        for reader in sockets:
            _drain_replies(reader, tally)
    finally:
        for dealer in sockets:
            dealer.close()
        context.term()
    tally.extra["request_bytes"] = len(request)
    return tally.as_dict()


def _drain_replies(dealer: zmq.Socket, tally: AttackTally) -> None:
    while True:
        try:
            parts = dealer.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return
        tally.replies += 1
        if len(parts[-1]) < 4_096 and b'"ok":false' in parts[-1]:
            with contextlib.suppress(orjson.JSONDecodeError):
                tally.error(str(orjson.loads(parts[-1]).get("error")))


def ingest_flood(
    endpoints: Endpoints,
    *,
    duration_s: float = 10.0,
    stop: threading.Event | None = None,
    batch_bytes: int = 984_000,
    max_batches: int = 6_500,
    rate_per_s: float = 0.0,
) -> dict[str, Any]:
    """One PUSH sends the same valid batch of about `batch_bytes` (`valid_batch`), as fast as
    the connection takes it (rate 0) or `rate_per_s`, at most `max_batches` times."""
    budget, tally = Budget(duration_s, stop), AttackTally()
    batch = valid_batch(batch_bytes, [f"FLOOD{index}" for index in range(10)])
    context = zmq_context()
    push = context.socket(zmq.PUSH)
    push.linger = 0
    # A short queue here: the flood's backlog must build up in the service, not the attacker.
    push.sndhwm = 8
    try:
        push.connect(endpoints.ingest)
        pacer = Pacer(rate_per_s)
        while tally.sent < max_batches and pacer.wait_turn(budget):
            while not budget.over():
                try:
                    push.send(batch, zmq.NOBLOCK, copy=False)
                    tally.sent += 1
                    tally.bytes_sent += len(batch)
                    break
                except zmq.Again:
                    push.poll(50, zmq.POLLOUT)
    finally:
        push.close()
        context.term()
    tally.extra["batch_bytes"] = len(batch)
    tally.extra["ticks_per_batch"] = batch.count(b'"sym"')
    return tally.as_dict()


def push_big_ticks(
    push: zmq.Socket,
    symbols: Sequence[str],
    tick_bytes: int,
    rate_per_s: float,
    budget: Budget,
    tally: AttackTally,
) -> None:
    pacer = Pacer(rate_per_s)
    for symbol in symbols:
        if not pacer.wait_turn(budget):
            return
        frame = big_tick_frame(symbol, tick_bytes)
        while not budget.over():
            try:
                push.send(frame, zmq.NOBLOCK, copy=False)
                tally.sent += 1
                tally.bytes_sent += len(frame)
                break
            except zmq.Again:
                push.poll(50, zmq.POLLOUT)


def big_symbols(
    endpoints: Endpoints,
    *,
    duration_s: float = 10.0,
    stop: threading.Event | None = None,
    symbols: int = 2_000,
    tick_bytes: int = 1_000_000,
    rate_per_s: float = 400.0,
) -> dict[str, Any]:
    """PUSH one `big_tick_frame` for each of `symbols` new symbols (BIG00000, ...)."""
    budget, tally = Budget(duration_s, stop), AttackTally()
    context = zmq_context()
    push = context.socket(zmq.PUSH)
    push.linger = 2_000
    push.sndhwm = 8
    try:
        push.connect(endpoints.ingest)
        names = [f"BIG{index:05d}" for index in range(symbols)]
        push_big_ticks(push, names, tick_bytes, rate_per_s, budget, tally)
    finally:
        push.close()
        context.term()
    return tally.as_dict()


def sync_inflight(
    endpoints: Endpoints,
    *,
    duration_s: float = 10.0,
    stop: threading.Event | None = None,
    dealers: int = 10,
    in_flight: int = 200,
    max_rate_per_s: float = 0.0,
) -> dict[str, Any]:
    """`dealers` DEALERs keep `in_flight` valid snapshot requests (every symbol) outstanding each:
    a new one for every reply, at most `max_rate_per_s` in total (0 = as fast as answered)."""
    budget, tally = Budget(duration_s, stop), AttackTally()
    context = zmq_context()
    sockets: list[zmq.Socket] = []
    poller = zmq.Poller()
    pacer = Pacer(max_rate_per_s)

    def send(dealer: zmq.Socket, index: int) -> None:
        request = orjson.dumps(
            {
                "op": "snapshot",
                "client": f"inflight{index}",
                "marker": f"i{index}n{tally.sent}",
                "symbols": None,
            }
        )
        dealer.send_multipart([b"", request])
        tally.sent += 1
        tally.bytes_sent += len(request)

    try:
        for index in range(dealers):
            dealer = context.socket(zmq.DEALER)
            dealer.linger = 0
            dealer.sndhwm = dealer.rcvhwm = in_flight * 2
            dealer.connect(endpoints.sync)
            sockets.append(dealer)
            poller.register(dealer, zmq.POLLIN)
            tally.connections += 1
            for _ in range(in_flight):
                send(dealer, index)
        while not budget.over():
            for dealer, _event in poller.poll(100):
                index = sockets.index(dealer)
                for _ in range(in_flight):
                    try:
                        parts = dealer.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    tally.replies += 1
                    if parts[-1].startswith(b'{"ok":false'):
                        tally.error("error_reply")
                    if not pacer.wait_turn(budget):
                        break
                    send(dealer, index)
    finally:
        for dealer in sockets:
            dealer.close()
        context.term()
    return tally.as_dict()
