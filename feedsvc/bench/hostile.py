"""Hostile peers and a well-behaved victim: what one unauthenticated peer can do to `feedsvc serve`.

Each attack is a function ``attack(endpoints, *, duration_s, stop, **sizes) -> dict`` that runs
against the service's loopback endpoints for at most `duration_s` (and at most its counts), closes
its sockets and returns what it did: messages sent, bytes, connections, replies, errors by kind.
Its defaults are the sizes the outside check used; `scaled_parameters` scales the volume ones
(how many peers, connections, batches ...) for quick runs, never the shape that makes a message
hostile (a nesting depth, a size near a limit). `ATTACKS` names them all; ``python -m
feedsvc.bench.hostile NAME`` runs one in its own process (so its CPU and GIL are not the victim's).

Peers that must not read (idle subscribers, snapshot hoarders) speak ZMTP 3.0 over a raw TCP
socket with a small receive buffer: a libzmq socket would keep reading into its own queue and
hold the data in the attacker instead of leaving it queued in the service.

`Victim` is a plain pyzmq SUB measuring the feed; `RssSampler` watches the service's memory;
`sigterm_exit_seconds` times its shutdown. The pure parts (frame gaps, /proc parsing,
percentiles, ZMTP framing) have no sockets and are unit-tested.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import inspect
import itertools
import json
import math
import os
import resource
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import orjson
import zmq

NS_PER_US: Final = 1_000
# Symbols of the synthetic feed start with this; the victim subscribes to it.
SYNTHETIC_PREFIX: Final = b"SYN"
HEARTBEAT_PREFIX: Final = b"_hb "
LATENCY_HIGHEST_US: Final = 60_000_000
# A raw peer's kernel receive buffer: small, so what it does not read stays in the service.
RAW_RCVBUF: Final = 4_096
CONNECT_TIMEOUT_S: Final = 3.0
# Descriptors kept free for everything else a process opens (libraries, pipes, the probe).
FD_RESERVE: Final = 256
# The service's limits, as of this writing; requests are built to sit just inside them.
MAX_MESSAGE_BYTES: Final = 1_048_576
MAX_SYMBOLS_PER_REQUEST: Final = 10_000
_VALID_TICK: Final = b'"bid":100.0,"ask":100.01,"bid_size":100,"ask_size":100'


@dataclass(frozen=True)
class Endpoints:
    """Where the service listens (tcp on loopback)."""

    publisher: str
    ingest: str
    sync: str
    metrics_port: int
    metrics_host: str = "127.0.0.1"


@dataclass
class AttackTally:
    """What an attack did; `as_dict` is its result."""

    sent: int = 0
    bytes_sent: int = 0
    connections: int = 0
    replies: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        result = asdict(self)
        result.update(result.pop("extra"))
        return result


class _Budget:
    """An attack's time bound and stop signal: every loop asks it whether to go on."""

    def __init__(self, duration_s: float, stop: threading.Event | None) -> None:
        self.started = time.monotonic()
        self.deadline = self.started + duration_s
        self._stop = stop if stop is not None else threading.Event()

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def over(self) -> bool:
        return self._stop.is_set() or time.monotonic() >= self.deadline

    def sleep(self, seconds: float) -> bool:
        """Sleep up to `seconds` (cut at the deadline or a stop); False once the budget is over."""
        timeout = min(seconds, self.remaining())
        if timeout > 0:
            self._stop.wait(timeout)
        return not self.over()

    def hold(self) -> None:
        """Keep what the attack holds open until the budget is over."""
        while self.sleep(0.1):
            pass


class _Pacer:
    """Spaces events `1 / rate` seconds apart from the start; rate 0 = no spacing."""

    def __init__(self, rate_per_s: float) -> None:
        self.rate = rate_per_s
        self.count = 0
        self.started = time.monotonic()

    def wait_turn(self, budget: _Budget) -> bool:
        """Sleep until the next event is due; False once the budget is over."""
        self.count += 1
        if self.rate <= 0:
            return not budget.over()
        wait_s = self.started + (self.count - 1) / self.rate - time.monotonic()
        return budget.sleep(wait_s) if wait_s > 0 else not budget.over()

    def take_if_due(self) -> bool:
        """Count the next event if it is due now, without sleeping (for a select loop)."""
        if self.rate > 0 and self.started + self.count / self.rate > time.monotonic():
            return False
        self.count += 1
        return True


def tcp_address(endpoint: str) -> tuple[str, int]:
    """("127.0.0.1", 5556) from "tcp://127.0.0.1:5556"."""
    if not endpoint.startswith("tcp://"):
        raise ValueError(f"not a tcp endpoint: {endpoint!r}")
    host, _, port = endpoint.removeprefix("tcp://").rpartition(":")
    return host, int(port)


def free_tcp_port() -> int:
    """A loopback port free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def raise_fd_limit() -> int:
    """Raise this process's open-file limit to its hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1_048_576)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return soft


def zmtp_greeting() -> bytes:
    """The 64-byte ZMTP 3.0 greeting of a client with the NULL mechanism."""
    return b"\xff" + bytes(8) + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\x00") + bytes(32)


def zmtp_frame(body: bytes, *, more: bool = False, command: bool = False) -> bytes:
    """One ZMTP 3.0 frame: flags, a 1-byte size (short) or an 8-byte one (long), the body."""
    flags = (0x01 if more else 0) | (0x04 if command else 0)
    if len(body) <= 255:
        return bytes((flags, len(body))) + body
    return bytes((flags | 0x02,)) + struct.pack(">Q", len(body)) + body


def zmtp_ready(socket_type: str) -> bytes:
    """The READY command announcing `socket_type` (e.g. "REQ", "SUB")."""
    name, value = b"Socket-Type", socket_type.encode()
    body = b"\x05READY" + bytes((len(name),)) + name + struct.pack(">I", len(value)) + value
    return zmtp_frame(body, command=True)


def zmtp_request(body: bytes) -> bytes:
    """A REQ socket's message on the wire: the empty delimiter frame, then the body."""
    return zmtp_frame(b"", more=True) + zmtp_frame(body)


def zmtp_subscription(prefix: bytes) -> bytes:
    """A ZMTP 3.0 subscription message (0x01 + prefix), as a SUB sends it to a PUB."""
    return zmtp_frame(b"\x01" + prefix)


def open_raw_zmtp(
    endpoint: str, socket_type: str, rcvbuf: int = RAW_RCVBUF, timeout_s: float = CONNECT_TIMEOUT_S
) -> socket.socket:
    """A TCP connection through the ZMTP handshake as `socket_type` that reads nothing after it:
    what the service sends it stays queued on the service's side."""
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        # Before connect, so the advertised window is small from the first segment.
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        raw.settimeout(timeout_s)
        raw.connect(tcp_address(endpoint))
        raw.sendall(zmtp_greeting() + zmtp_ready(socket_type))
        # libzmq takes every frame as a handshake command until it has sent its own READY:
        # a message sent before that ends the connection.
        _receive_exactly(raw, len(zmtp_greeting()))
        flags, size = _receive_exactly(raw, 2)
        if not flags & 0x04:
            raise ConnectionError(f"expected the peer's READY command, got flags {flags:#x}")
        if flags & 0x02:
            size = struct.unpack(">Q", bytes((size,)) + _receive_exactly(raw, 7))[0]
        _receive_exactly(raw, size)
    except OSError:
        raw.close()
        raise
    return raw


def _receive_exactly(raw: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = raw.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the peer closed the connection during the ZMTP handshake")
        data += chunk
    return data


def _send_within(raw: socket.socket, data: bytes, budget: _Budget) -> int:
    """Send as much of `data` as the budget allows (the peer may be slow to read); returns bytes
    sent. A blocking sendall with a timeout would leave an unknown part sent."""
    view, sent = memoryview(data), 0
    raw.setblocking(False)
    try:
        while sent < len(view) and not budget.over():
            try:
                sent += raw.send(view[sent:])
            except BlockingIOError:
                _wait_writable(raw, min(0.1, budget.remaining()))
    finally:
        raw.setblocking(True)
    return sent


def _wait_writable(raw: socket.socket, timeout_s: float) -> None:
    with selectors.DefaultSelector() as selector:
        selector.register(raw, selectors.EVENT_WRITE)
        selector.select(timeout_s)


def _close_all(sockets: Iterable[socket.socket]) -> None:
    for raw in sockets:
        with contextlib.suppress(OSError):
            raw.close()


def nested_tick_frame(numbers: int = 400, depth: int = 300, symbol: str = "NESTED") -> bytes:
    """An ingest batch: `numbers` zeros (each a rejected non-object), then one valid tick whose
    pass-through field is a list nested `depth` deep (deeper than orjson writes back)."""
    tick = b'{"sym":"' + symbol.encode() + b'",' + _VALID_TICK + b',"extra":'
    return b"[" + b"0," * numbers + tick + b"[" * depth + b"]" * depth + b"}]"


def nested_sync_request(depth: int = 1_000) -> bytes:
    """A snapshot request whose one symbol is a list nested `depth` deep."""
    nested = b"[" * depth + b"]" * depth
    return b'{"op":"snapshot","client":"c1","marker":"m1","symbols":[' + nested + b"]}"


def bad_symbol_request(
    request_bytes: int = MAX_MESSAGE_BYTES - 512,
    shape: str = "nested_zeros",
    entries: int = MAX_SYMBOLS_PER_REQUEST,
) -> bytes:
    """A snapshot request of about `request_bytes` whose symbols are invalid, few enough to pass
    the count check (so the answer is bad_symbol).

    shape "nested_zeros": one entry, a list of zeros filling the request (the costliest found:
    the error detail renders the entry); "strings": `entries` strings that begin with "_".
    """
    overhead = len(b'{"op":"snapshot","client":"flood","marker":"m1","symbols":[[]]}')
    if shape == "nested_zeros":
        symbols: list[Any] = [[0] * max(1, (request_bytes - overhead) // 2)]
    elif shape == "strings":
        entry_length = max(2, (request_bytes - overhead) // max(1, entries) - 3)
        symbols = ["_" + "x" * (entry_length - 1)] * entries
    else:
        raise ValueError(f'shape must be "nested_zeros" or "strings", got {shape!r}')
    return orjson.dumps({"op": "snapshot", "client": "flood", "marker": "m1", "symbols": symbols})


def big_tick_frame(symbol: str, tick_bytes: int = 1_000_000) -> bytes:
    """One valid tick with a pass-through string field of `tick_bytes` bytes."""
    return (
        b'{"sym":"'
        + symbol.encode()
        + b'",'
        + _VALID_TICK
        + b',"note":"'
        + b"x" * tick_bytes
        + (b'"}')
    )


def valid_batch(batch_bytes: int = 984_000, symbols: Sequence[str] = ("FLOOD0",)) -> bytes:
    """A JSON array of valid ticks, about `batch_bytes` long, cycling over `symbols`."""
    ticks = []
    size = 1
    index = 0
    while True:
        tick = b'{"sym":"' + symbols[index % len(symbols)].encode() + b'",' + _VALID_TICK + b"}"
        if size + len(tick) + 1 > batch_bytes:
            break
        ticks.append(tick)
        size += len(tick) + 1
        index += 1
    return b"[" + b",".join(ticks) + b"]"


def _zmq_context() -> zmq.Context:
    # Its own context per attack, so closing it cannot touch anyone else's sockets.
    return zmq.Context()


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
    budget, tally = _Budget(duration_s, stop), AttackTally()
    frame = nested_tick_frame(numbers, depth)
    context = _zmq_context()
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
    budget, tally = _Budget(duration_s, stop), AttackTally()
    request = nested_sync_request(depth)
    context = _zmq_context()
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


def slowloris(
    endpoints: Endpoints,
    *,
    duration_s: float = 10.0,
    stop: threading.Event | None = None,
    connections: int = 5_000,
    trickle_interval_s: float = 2.0,
    connect_rate_per_s: float = 1_000.0,
    path: str = "/metrics",
) -> dict[str, Any]:
    """Open `connections` HTTP requests to the metrics port that never end: the request line
    and one header, then a byte of an unfinished header line every `trickle_interval_s`."""
    budget, tally = _Budget(duration_s, stop), AttackTally()
    raise_fd_limit()
    address = (endpoints.metrics_host, endpoints.metrics_port)
    head = f"GET {path} HTTP/1.1\r\nHost: {endpoints.metrics_host}\r\nX-Slow: ".encode()
    selector = selectors.DefaultSelector()
    pending: dict[socket.socket, float] = {}
    established: list[socket.socket] = []
    pacer = _Pacer(connect_rate_per_s)
    next_trickle = time.monotonic() + trickle_interval_s
    try:
        while not budget.over():
            now = time.monotonic()
            # Start the connections due by now, without waiting for any to complete.
            while tally.connections + len(pending) < connections and pacer.take_if_due():
                raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                raw.setblocking(False)
                if raw.connect_ex(address) not in (0, errno.EINPROGRESS):
                    tally.error("connect")
                    raw.close()
                    continue
                pending[raw] = now
                selector.register(raw, selectors.EVENT_WRITE)
            for key, _events in selector.select(timeout=0.05):
                raw = key.fileobj  # type: ignore[assignment]
                selector.unregister(raw)
                pending.pop(raw, None)
                if raw.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0:
                    tally.error("connect")
                    raw.close()
                    continue
                try:
                    tally.bytes_sent += raw.send(head)
                except OSError:
                    tally.error("send")
                    raw.close()
                    continue
                tally.connections += 1
                established.append(raw)
            for raw, started in list(pending.items()):
                if now - started > CONNECT_TIMEOUT_S:
                    selector.unregister(raw)
                    del pending[raw]
                    raw.close()
                    tally.error("connect_timeout")
            if now >= next_trickle:
                next_trickle = now + trickle_interval_s
                still_open = []
                for raw in established:
                    try:
                        tally.bytes_sent += raw.send(b"a")
                        tally.sent += 1
                        still_open.append(raw)
                    except BlockingIOError:
                        still_open.append(raw)
                    except OSError:
                        tally.error("closed_by_server")
                        raw.close()
                established = still_open
            if tally.connections >= connections and not pending:
                budget.sleep(min(0.05, max(0.0, next_trickle - time.monotonic())))
    finally:
        selector.close()
        _close_all(established)
        _close_all(pending)
    tally.extra["open_at_end"] = len(established)
    return tally.as_dict()


def subscriptions(
    endpoints: Endpoints,
    *,
    duration_s: float = 10.0,
    stop: threading.Event | None = None,
    prefixes: int = 20_000,
    prefix_bytes: int = 1_000,
    churn_per_s: float = 2.0,
    churn_hold_s: float = 0.2,
) -> dict[str, Any]:
    """One raw SUB sends `prefixes` distinct random prefixes of `prefix_bytes` (they match
    nothing); meanwhile other SUBs connect, subscribe, and close, `churn_per_s` a second."""
    budget, tally = _Budget(duration_s, stop), AttackTally()
    context = _zmq_context()
    subscriber = None
    churned = 0
    try:
        subscriber = open_raw_zmtp(endpoints.publisher, "SUB")
        tally.connections += 1
        chunk = 100
        sent = 0
        while sent < prefixes and not budget.over():
            count = min(chunk, prefixes - sent)
            # urandom: distinct prefixes that share (almost) no trie path, byte after byte.
            data = b"".join(zmtp_subscription(os.urandom(prefix_bytes)) for _ in range(count))
            written = _send_within(subscriber, data, budget)
            tally.bytes_sent += written
            if written < len(data):
                break
            sent += count
        tally.sent = sent
        pacer = _Pacer(churn_per_s)
        while pacer.wait_turn(budget):
            churner = context.socket(zmq.SUB)
            churner.linger = 0
            try:
                churner.subscribe(b"CHURN ")
                churner.connect(endpoints.publisher)
                budget.sleep(churn_hold_s)
            finally:
                churner.close()
            churned += 1
    except OSError as error:
        tally.error(type(error).__name__)
    finally:
        if subscriber is not None:
            subscriber.close()
        context.term()
    tally.extra["churn_connections"] = churned
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
    budget, tally = _Budget(duration_s, stop), AttackTally()
    request = bad_symbol_request(request_bytes, shape)
    context = _zmq_context()
    sockets = []
    try:
        for _ in range(dealers):
            dealer = context.socket(zmq.DEALER)
            dealer.linger = 0
            # A few requests queued per dealer at most: the attacker holds no backlog itself.
            dealer.sndhwm = 4
            dealer.connect(endpoints.sync)
            sockets.append(dealer)
        pacer = _Pacer(rate_per_s)
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
    budget, tally = _Budget(duration_s, stop), AttackTally()
    batch = valid_batch(batch_bytes, [f"FLOOD{index}" for index in range(10)])
    context = _zmq_context()
    push = context.socket(zmq.PUSH)
    push.linger = 0
    # A short queue here: the flood's backlog must build up in the service, not the attacker.
    push.sndhwm = 8
    try:
        push.connect(endpoints.ingest)
        pacer = _Pacer(rate_per_s)
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


def _push_big_ticks(
    push: zmq.Socket,
    symbols: Sequence[str],
    tick_bytes: int,
    rate_per_s: float,
    budget: _Budget,
    tally: AttackTally,
) -> None:
    pacer = _Pacer(rate_per_s)
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
    budget, tally = _Budget(duration_s, stop), AttackTally()
    context = _zmq_context()
    push = context.socket(zmq.PUSH)
    push.linger = 2_000
    push.sndhwm = 8
    try:
        push.connect(endpoints.ingest)
        names = [f"BIG{index:05d}" for index in range(symbols)]
        _push_big_ticks(push, names, tick_bytes, rate_per_s, budget, tally)
    finally:
        push.close()
        context.term()
    return tally.as_dict()


def snapshot_hoard(
    endpoints: Endpoints,
    *,
    duration_s: float = 10.0,
    stop: threading.Event | None = None,
    peers: int = 40,
    prime_symbols: int = 55,
    prime_tick_bytes: int = 1_000_000,
    prime_wait_s: float = 3.0,
) -> dict[str, Any]:
    """Make the last-value cache large (`prime_symbols` ticks of `prime_tick_bytes`, together
    under sync.max_snapshot_bytes), then `peers` raw REQs each ask for every symbol's snapshot
    and never read the reply, until the budget is over."""
    budget, tally = _Budget(duration_s, stop), AttackTally()
    raise_fd_limit()
    context = _zmq_context()
    push = context.socket(zmq.PUSH)
    push.linger = 2_000
    push.sndhwm = 8
    names = [f"HOARD{index:04d}" for index in range(prime_symbols)]
    hoarders: list[socket.socket] = []
    try:
        push.connect(endpoints.ingest)
        priming = AttackTally()
        _push_big_ticks(push, names, prime_tick_bytes, 0.0, budget, priming)
        tally.extra["prime_ticks"] = priming.sent
        tally.extra["prime_bytes"] = priming.bytes_sent
        primed = _wait_primed(
            context, endpoints.sync, names[-1], min(prime_wait_s, budget.remaining())
        )
        tally.extra["cache_primed"] = primed
        for index in range(peers):
            if budget.over():
                break
            request = orjson.dumps(
                {
                    "op": "snapshot",
                    "client": f"hoard{index}",
                    "marker": f"h{index}",
                    "symbols": None,
                }
            )
            try:
                hoarder = open_raw_zmtp(endpoints.sync, "REQ")
                hoarder.sendall(zmtp_request(request))
            except OSError as error:
                tally.error(type(error).__name__)
                continue
            hoarders.append(hoarder)
            tally.connections += 1
            tally.sent += 1
            tally.bytes_sent += len(request)
        budget.hold()
    finally:
        _close_all(hoarders)
        push.close()
        context.term()
    return tally.as_dict()


def _wait_primed(context: zmq.Context, sync_endpoint: str, symbol: str, timeout_s: float) -> bool:
    """Whether `symbol` shows in the cache within `timeout_s` (asked over a real REQ)."""
    deadline = time.monotonic() + timeout_s
    request = orjson.dumps(
        {"op": "snapshot", "client": "primer", "marker": "p1", "symbols": [symbol]}
    )
    while time.monotonic() < deadline:
        req = context.socket(zmq.REQ)
        req.linger = 0
        try:
            req.connect(sync_endpoint)
            req.send(request)
            if req.poll(int(1000 * max(0.1, deadline - time.monotonic()))):
                reply = orjson.loads(req.recv())
                if reply.get("ok") and reply["snapshot"][symbol]["seq"] > 0:
                    return True
        finally:
            req.close()
        time.sleep(0.1)
    return False


def connect_flood(
    endpoints: Endpoints,
    *,
    duration_s: float = 10.0,
    stop: threading.Event | None = None,
    connections: int = 22_000,
    rate_per_s: float = 800.0,
    probe: bool = True,
    probe_s: float = 1.0,
    workers: int = 0,
) -> dict[str, Any]:
    """Open `connections` raw TCP connections to the PUB port at `rate_per_s`, send nothing,
    keep them open to the end. With `probe`, a new plain SUB then tries to receive for
    `probe_s`. More connections than this process may open go to worker processes (`workers`
    0 = as many as needed)."""
    budget, tally = _Budget(duration_s, stop), AttackTally()
    fd_budget = raise_fd_limit() - FD_RESERVE
    workers = workers or max(1, math.ceil(connections / fd_budget))
    helpers: list[subprocess.Popen[bytes]] = []
    if workers > 1:
        share = math.ceil(connections / workers)
        for _ in range(workers - 1):
            helpers.append(
                subprocess.Popen(
                    attack_command(
                        "connect_flood",
                        endpoints,
                        budget.remaining(),
                        {
                            "connections": share,
                            "rate_per_s": rate_per_s / workers,
                            "probe": False,
                            "workers": 1,
                        },
                    ),
                    stdout=subprocess.PIPE,
                )
            )
        connections -= share * (workers - 1)
        rate_per_s /= workers
    address = tcp_address(endpoints.publisher)
    opened: list[socket.socket] = []
    pacer = _Pacer(rate_per_s)
    try:
        while len(opened) < connections and pacer.wait_turn(budget):
            raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            raw.setblocking(False)
            if raw.connect_ex(address) not in (0, errno.EINPROGRESS):
                tally.error("connect")
                raw.close()
                continue
            opened.append(raw)
            tally.connections += 1
        if probe:
            budget.sleep(max(0.0, budget.remaining() - probe_s - 0.2))
            tally.extra["probe_received"] = _probe_subscriber(endpoints.publisher, probe_s)
        tally.extra["established"] = sum(_is_connected(raw) for raw in opened)
        budget.hold()
    finally:
        _close_all(opened)
        for helper in helpers:
            result = collect_attack(helper, timeout_s=budget.remaining() + 30)
            tally.connections += result.get("connections", 0)
            tally.extra["established"] = tally.extra.get("established", 0) + result.get(
                "established", 0
            )
            for kind, count in result.get("errors", {}).items():
                tally.errors[kind] = tally.errors.get(kind, 0) + count
    tally.extra["workers"] = workers
    return tally.as_dict()


def _is_connected(raw: socket.socket) -> bool:
    try:
        raw.getpeername()
    except OSError:
        return False
    return raw.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0


def _probe_subscriber(endpoint: str, seconds: float) -> int:
    """How many frames a new SUB of everything receives in `seconds`."""
    context = _zmq_context()
    sub = context.socket(zmq.SUB)
    sub.linger = 0
    received = 0
    try:
        sub.subscribe(b"")
        sub.connect(endpoint)
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if sub.poll(int(left * 1000) + 1):
                sub.recv()
                received += 1
    finally:
        sub.close()
        context.term()
    return received


def idle_subs(
    endpoints: Endpoints,
    *,
    duration_s: float = 10.0,
    stop: threading.Event | None = None,
    subscribers: int = 1_000,
    connect_rate_per_s: float = 500.0,
) -> dict[str, Any]:
    """`subscribers` raw SUBs subscribe to everything and never read, until the budget is over."""
    budget, tally = _Budget(duration_s, stop), AttackTally()
    raise_fd_limit()
    idle: list[socket.socket] = []
    pacer = _Pacer(connect_rate_per_s)
    try:
        while len(idle) < subscribers and pacer.wait_turn(budget):
            try:
                subscriber = open_raw_zmtp(endpoints.publisher, "SUB")
                subscriber.sendall(zmtp_subscription(b""))
            except OSError as error:
                tally.error(type(error).__name__)
                continue
            idle.append(subscriber)
            tally.connections += 1
            tally.sent += 1
        budget.hold()
    finally:
        _close_all(idle)
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
    budget, tally = _Budget(duration_s, stop), AttackTally()
    context = _zmq_context()
    sockets: list[zmq.Socket] = []
    poller = zmq.Poller()
    pacer = _Pacer(max_rate_per_s)

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


def http_reset(
    endpoints: Endpoints,
    *,
    duration_s: float = 10.0,
    stop: threading.Event | None = None,
    requests: int = 500,
    rate_per_s: float = 50.0,
    path: str = "/metrics",
) -> dict[str, Any]:
    """Send complete HTTP requests and reset each connection right after (SO_LINGER 0)."""
    budget, tally = _Budget(duration_s, stop), AttackTally()
    address = (endpoints.metrics_host, endpoints.metrics_port)
    request = f"GET {path} HTTP/1.1\r\nHost: {endpoints.metrics_host}\r\n\r\n".encode()
    reset = struct.pack("ii", 1, 0)
    pacer = _Pacer(rate_per_s)
    while tally.sent < requests and pacer.wait_turn(budget):
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            raw.settimeout(CONNECT_TIMEOUT_S)
            raw.connect(address)
            tally.connections += 1
            raw.sendall(request)
            tally.sent += 1
            tally.bytes_sent += len(request)
            # Linger on with a 0 timeout: close() sends RST instead of FIN.
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, reset)
        except OSError as error:
            tally.error(type(error).__name__)
        finally:
            raw.close()
    return tally.as_dict()


Attack = Callable[..., dict[str, Any]]
ATTACKS: Final[Mapping[str, Attack]] = MappingProxyType(
    {
        "nested_tick": nested_tick,
        "nested_sync": nested_sync,
        "slowloris": slowloris,
        "subscriptions": subscriptions,
        "sync_flood": sync_flood,
        "ingest_flood": ingest_flood,
        "big_symbols": big_symbols,
        "snapshot_hoard": snapshot_hoard,
        "connect_flood": connect_flood,
        "idle_subs": idle_subs,
        "sync_inflight": sync_inflight,
        "http_reset": http_reset,
    }
)
# What --scale multiplies: the volume that costs the service memory, descriptors or log lines.
# The shape of a message stays (a depth, a size near a limit), and so do the rates of the
# attacks that cost CPU only (sync_flood, sync_inflight): scaled down they would show nothing,
# and they take no more than their duration.
SCALED_PARAMETERS: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType(
    {
        "nested_tick": (),
        "nested_sync": (),
        "slowloris": ("connections",),
        "subscriptions": ("prefixes",),
        "sync_flood": (),
        "ingest_flood": ("max_batches",),
        "big_symbols": ("symbols",),
        "snapshot_hoard": ("peers",),
        "connect_flood": ("connections",),
        "idle_subs": ("subscribers",),
        "sync_inflight": (),
        "http_reset": ("requests",),
    }
)


def attack_defaults(name: str) -> dict[str, Any]:
    """The size parameters of attack `name` and their defaults (the outside check's sizes)."""
    parameters = inspect.signature(ATTACKS[name]).parameters.values()
    return {
        parameter.name: parameter.default
        for parameter in parameters
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
        and parameter.name not in ("duration_s", "stop")
    }


def scaled_parameters(name: str, scale: float) -> dict[str, Any]:
    """Attack `name`'s defaults with its volume parameters times `scale` (counts at least 1)."""
    parameters = attack_defaults(name)
    for key in SCALED_PARAMETERS[name]:
        value = parameters[key] * scale
        parameters[key] = max(1, round(value)) if isinstance(parameters[key], int) else value
    return parameters


def run_attack(
    name: str,
    endpoints: Endpoints,
    *,
    duration_s: float,
    stop: threading.Event | None = None,
    **parameters: Any,
) -> dict[str, Any]:
    """Run attack `name` in this process; its result with the name, parameters, time taken and
    the attacker's own peak RSS (an exception ends up in "failed", not raised)."""
    started = time.monotonic()
    result: dict[str, Any] = {"attack": name, "parameters": parameters}
    try:
        result.update(ATTACKS[name](endpoints, duration_s=duration_s, stop=stop, **parameters))
    except Exception as error:  # reported in the result: one attack must not end the run
        result["failed"] = f"{type(error).__name__}: {error}"
    result["elapsed_s"] = round(time.monotonic() - started, 3)
    result["attacker_max_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return result


def attack_command(
    name: str, endpoints: Endpoints, duration_s: float, parameters: Mapping[str, Any]
) -> list[str]:
    """The command line that runs attack `name` in its own process (see `main`)."""
    return [
        sys.executable,
        "-m",
        "feedsvc.bench.hostile",
        name,
        "--endpoints",
        json.dumps(asdict(endpoints)),
        "--duration",
        f"{duration_s:.3f}",
        "--parameters",
        json.dumps(dict(parameters)),
    ]


def start_attack(
    name: str,
    endpoints: Endpoints,
    duration_s: float,
    parameters: Mapping[str, Any],
    ready_timeout_s: float = 10.0,
) -> subprocess.Popen[bytes]:
    """Start attack `name` in its own process; returns once it reports ready (imports done)."""
    process = subprocess.Popen(
        attack_command(name, endpoints, duration_s, parameters),
        stdout=subprocess.PIPE,
        # Relative to the project, whatever the caller's directory.
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        ready = process.stdout.readline() if _readable(process.stdout, ready_timeout_s) else b""
    except BaseException:
        process.kill()
        process.wait()
        raise
    if not ready.startswith(b'{"ready"'):
        process.kill()
        process.wait()
        raise RuntimeError(f"attack {name}: its process did not start (exit {process.poll()})")
    return process


def _readable(stream: Any, timeout_s: float) -> bool:
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        return bool(selector.select(timeout_s))


def collect_attack(process: subprocess.Popen[bytes], timeout_s: float) -> dict[str, Any]:
    """The result of an attack process: waits up to `timeout_s`, then stops it (SIGTERM, its
    budget's stop), then kills it; always by its own pid."""
    try:
        output, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)
        try:
            output, _ = process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
    lines = [line for line in output.splitlines() if line.strip()]
    try:
        return json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        return {"failed": f"no result from the attack process (exit {process.returncode})"}


def parse_proc_status(text: str) -> dict[str, int]:
    """VmRSS (as "rss_bytes") and Threads from the text of /proc/PID/status; missing = absent."""
    figures: dict[str, int] = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        fields = value.split()
        if name == "VmRSS" and fields:
            unit = fields[1].lower() if len(fields) > 1 else "kb"
            figures["rss_bytes"] = int(fields[0]) * {"kb": 1024, "mb": 1024**2, "b": 1}.get(
                unit, 1024
            )
        elif name == "Threads" and fields:
            figures["threads"] = int(fields[0])
    return figures


def process_status(pid: int) -> dict[str, int]:
    """`parse_proc_status` of a live process; {} if it is gone."""
    try:
        return parse_proc_status(Path(f"/proc/{pid}/status").read_text())
    except (OSError, ValueError):
        return {}


def open_fd_count(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


class RssSampler:
    """Samples a process's VmRSS (and threads, open files) every `interval_s` in a thread.

    Parameters
    ----------
    pid:
        The process to watch.
    limit_bytes:
        When a sample passes it, `on_limit(rss_bytes)` is called once and `limit_hit` is set.
    """

    def __init__(
        self,
        pid: int,
        interval_s: float = 0.2,
        limit_bytes: int | None = None,
        on_limit: Callable[[int], None] | None = None,
        fd_every: int = 5,
    ) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.limit_bytes = limit_bytes
        self.on_limit = on_limit
        self.fd_every = fd_every
        self.limit_hit = threading.Event()
        self.peak_bytes: int | None = None
        self.last_bytes: int | None = None
        self.peak_threads: int | None = None
        self.peak_fds: int | None = None
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def sample(self) -> None:
        status = process_status(self.pid)
        rss = status.get("rss_bytes")
        if rss is None:
            return
        self.samples += 1
        self.last_bytes = rss
        self.peak_bytes = max(rss, self.peak_bytes or 0)
        self.peak_threads = max(status.get("threads", 0), self.peak_threads or 0)
        if self.samples % self.fd_every == 1:
            fds = open_fd_count(self.pid)
            if fds is not None:
                self.peak_fds = max(fds, self.peak_fds or 0)
        if self.limit_bytes is not None and rss > self.limit_bytes and not self.limit_hit.is_set():
            self.limit_hit.set()
            if self.on_limit is not None:
                self.on_limit(rss)

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        return {
            "peak_rss_bytes": self.peak_bytes,
            "last_rss_bytes": self.last_bytes,
            "peak_threads": self.peak_threads,
            "peak_fds": self.peak_fds,
            "samples": self.samples,
            "limit_hit": self.limit_hit.is_set(),
        }


def sigterm_exit_seconds(process: subprocess.Popen[bytes], timeout_s: float = 60.0) -> float | None:
    """Send SIGTERM to `process` and time its exit; None if it had exited already or did not
    exit within `timeout_s` (then it is killed, by its pid)."""
    if process.poll() is not None:
        return None
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return None
    return time.monotonic() - started


class SequenceGaps:
    """Per-symbol seq jumps within one epoch: a jump from 41 to 45 is one gap of 3 missed."""

    def __init__(self) -> None:
        self.last_seq: dict[str, int] = {}
        self.epoch: int | None = None
        self.gaps = 0
        self.missed = 0
        self.backwards = 0
        self.epochs = 0

    def observe(self, symbol: str, epoch: int, seq: int) -> int:
        """One tick; returns how many ticks of `symbol` were missed just before it."""
        if epoch != self.epoch:
            # A new epoch restarts every seq: a publisher restart, not a gap.
            self.epoch = epoch
            self.epochs += 1
            self.last_seq.clear()
        last = self.last_seq.get(symbol)
        self.last_seq[symbol] = seq
        if last is None:
            return 0
        if seq <= last:
            self.backwards += 1
            return 0
        missed = seq - last - 1
        if missed:
            self.gaps += 1
            self.missed += missed
        return missed

    def summary(self) -> dict[str, int]:
        return {
            "gaps": self.gaps,
            "missed": self.missed,
            "duplicates_or_backwards": self.backwards,
            "epochs": self.epochs,
            "symbols": len(self.last_seq),
        }


def count_gaps(frames: Iterable[bytes]) -> dict[str, int]:
    """`SequenceGaps.summary` over wire frames (topic, space, JSON); control frames skipped."""
    tracker = SequenceGaps()
    for frame in frames:
        topic, _, body = frame.partition(b" ")
        if topic.startswith(b"_"):
            continue
        tick = orjson.loads(body)
        tracker.observe(tick["sym"], tick["epoch"], tick["seq"])
    return tracker.summary()


def longest_gap(arrivals: Sequence[float], start: float | None, end: float | None) -> float | None:
    """The longest time without an arrival between `start` and `end` (both optional bounds,
    so a stream that stopped shows the silence up to `end`); None without arrivals or bounds."""
    points = sorted(arrivals)
    if start is not None:
        points = [start, *(point for point in points if point >= start)]
    if end is not None:
        points = [*(point for point in points if point <= end), end]
    if len(points) < 2:
        return None
    return max(later - earlier for earlier, later in itertools.pairwise(points))


def percentiles(
    values: Sequence[float], fractions: Sequence[float] = (0.5, 0.99)
) -> dict[str, float | None]:
    """Nearest-rank percentiles ("p50", "p99", "p99.9" ...) of `values`, None when empty."""
    ordered = sorted(values)
    result: dict[str, float | None] = {}
    for fraction in fractions:
        key = f"p{fraction * 100:g}"
        if not ordered:
            result[key] = None
            continue
        rank = max(1, math.ceil(fraction * len(ordered)))
        result[key] = ordered[min(rank, len(ordered)) - 1]
    return result


class LatencyRecorder:
    """Latencies in microseconds: an HdrHistogram when hdrh is installed, else a list."""

    def __init__(self) -> None:
        try:
            from hdrh.histogram import HdrHistogram
        except ImportError:
            self._histogram = None
            self._values: list[int] = []
            self.method = "sorted list"
        else:
            self._histogram = HdrHistogram(1, LATENCY_HIGHEST_US, 3)
            self.method = "hdrhistogram"
        self.count = 0

    def record(self, microseconds: int) -> None:
        self.count += 1
        if self._histogram is not None:
            self._histogram.record_value(min(max(microseconds, 1), LATENCY_HIGHEST_US))
        else:
            self._values.append(microseconds)

    def summary_ms(self) -> dict[str, float | None]:
        """p50, p99 and max in milliseconds."""
        if self.count == 0:
            return {"p50": None, "p99": None, "max": None}
        if self._histogram is not None:
            figures = {
                "p50": self._histogram.get_value_at_percentile(50.0),
                "p99": self._histogram.get_value_at_percentile(99.0),
                "max": self._histogram.get_max_value(),
            }
        else:
            figures = {**percentiles(self._values), "max": max(self._values)}
        return {key: None if value is None else value / 1000 for key, value in figures.items()}


class _VictimWindow:
    """What the victim measured since its last mark (owned by the victim's thread)."""

    def __init__(self, started: float, last_heartbeat: float | None) -> None:
        self.started = started
        self.received = 0
        self.per_second: list[int] = []
        self.sequence = SequenceGaps()
        self.latency = LatencyRecorder()
        self.heartbeats: list[float] = []
        self.last_heartbeat_before = last_heartbeat
        self.malformed = 0

    def count_at(self, now: float) -> None:
        second = int(now - self.started)
        per_second = self.per_second
        while len(per_second) <= second:
            per_second.append(0)
        per_second[second] += 1
        self.received += 1

    def report(self, ended: float) -> dict[str, Any]:
        window_s = ended - self.started
        seconds = max(1, math.ceil(window_s))
        # Silence from the last heartbeat before the mark counts: a gap that spans it is one gap.
        start = self.last_heartbeat_before
        gap = longest_gap(self.heartbeats, self.started if start is None else start, ended)
        return {
            "window_s": round(window_s, 3),
            "received": self.received,
            "rate_per_s": self.received / window_s if window_s > 0 else None,
            # Every second of the window, silent ones too (a dead feed ends in zeros); the last
            # one may be a fraction of a second.
            "per_second": [*self.per_second, *[0] * seconds][:seconds],
            **self.sequence.summary(),
            "heartbeats": len(self.heartbeats),
            "max_heartbeat_gap_s": None if gap is None else round(gap, 3),
            "latency_ms": self.latency.summary_ms(),
            "latency_method": self.latency.method,
            "malformed": self.malformed,
        }


class Victim:
    """A well-behaved plain pyzmq SUB measuring the feed from its own thread.

    It subscribes to `prefixes` (the synthetic symbols and heartbeats) and records per-second
    tick counts, per-symbol seq gaps, heartbeat silences and latency (receive time minus the
    tick's "ts"). `mark()` starts a new measured window; `stop()` returns the window's report.
    """

    def __init__(
        self,
        endpoint: str,
        prefixes: Sequence[bytes] = (SYNTHETIC_PREFIX, HEARTBEAT_PREFIX),
        rcvhwm: int = 100_000,
    ) -> None:
        self.endpoint = endpoint
        self.prefixes = tuple(prefixes)
        self.rcvhwm = rcvhwm
        self.first_tick = threading.Event()
        self._mark_at = time.monotonic()
        # Ticks arriving after stop() was called are not the window's.
        self._ended = math.inf
        self._stop = threading.Event()
        self._window = _VictimWindow(self._mark_at, None)
        self._error: str | None = None
        self._thread = threading.Thread(target=self._run, name="victim", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wait_receiving(self, timeout_s: float) -> bool:
        """Whether a tick arrived within `timeout_s`."""
        return self.first_tick.wait(timeout_s)

    @property
    def received(self) -> int:
        """Ticks received in the current window so far (read while the thread runs)."""
        return self._window.received

    def mark(self) -> None:
        """Start a new window now (the thread drops what it counted before)."""
        self._mark_at = time.monotonic()

    def stop(self) -> dict[str, Any]:
        ended = self._ended = min(self._ended, time.monotonic())
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        report = self._window.report(ended)
        if self._error:
            report["error"] = self._error
        return report

    def _run(self) -> None:
        context = _zmq_context()
        sub = context.socket(zmq.SUB)
        sub.linger = 0
        sub.rcvhwm = self.rcvhwm
        try:
            for prefix in self.prefixes:
                sub.subscribe(prefix)
            sub.connect(self.endpoint)
            self._receive(sub)
        except Exception as error:  # reported; the window so far stays valid
            self._error = f"{type(error).__name__}: {error}"
        finally:
            sub.close()
            context.term()

    def _receive(self, sub: zmq.Socket) -> None:
        monotonic, time_ns, loads = time.monotonic, time.time_ns, orjson.loads
        recv, again = sub.recv, zmq.Again
        window = self._window
        while not self._stop.is_set():
            if window.started != self._mark_at:
                last = window.heartbeats[-1] if window.heartbeats else window.last_heartbeat_before
                window = self._window = _VictimWindow(self._mark_at, last)
            if not sub.poll(100):
                continue
            for _ in range(10_000):
                try:
                    frame = recv(zmq.NOBLOCK)
                except again:
                    break
                received_ns, now = time_ns(), monotonic()
                if now >= self._ended:
                    return
                topic, _, body = frame.partition(b" ")
                if topic == b"_hb":
                    window.heartbeats.append(now)
                    continue
                try:
                    tick = loads(body)
                    window.sequence.observe(tick["sym"], tick["epoch"], tick["seq"])
                    window.latency.record((received_ns - tick["ts"]) // NS_PER_US)
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    window.malformed += 1
                    continue
                window.count_at(now)
                if not self.first_tick.is_set():
                    self.first_tick.set()


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m feedsvc.bench.hostile",
        description="Run one hostile peer against feedsvc serve; prints its result as JSON.",
    )
    parser.add_argument("attack", choices=sorted(ATTACKS))
    parser.add_argument("--endpoints", required=True, help="JSON object of Endpoints fields")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds, at most")
    parser.add_argument("--parameters", default="{}", help="JSON object of the attack's sizes")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run one attack; stdout gets {"ready": true} once started, then the result, one JSON line
    each. SIGTERM ends the attack early (it still closes its sockets and reports)."""
    args = _parse_args(argv)
    endpoints = Endpoints(**json.loads(args.endpoints))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda _signum, _frame: stop.set())
    print(json.dumps({"ready": True}), flush=True)
    result = run_attack(
        args.attack, endpoints, duration_s=args.duration, stop=stop, **json.loads(args.parameters)
    )
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
