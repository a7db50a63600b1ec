"""The sync handshake served by a real `feedsvc serve`, spoken with plain pyzmq sockets as any
client in any language would (docs/sync-protocol.md)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson
import zmq

from feedsvc.client import Subscriber
from tests.conftest import (
    ServeProcess,
    free_tcp_port,
    serve_settings,
    subscribed_probe,
)

Serve = Callable[..., ServeProcess]


def _request(context: zmq.Context, endpoint: str, message: bytes, timeout_s: float = 10) -> Any:
    req = context.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    req.connect(endpoint)
    try:
        req.send(message)
        assert req.poll(int(timeout_s * 1000)), "no reply from the sync endpoint"
        return orjson.loads(req.recv())
    finally:
        req.close()


def _handshake(
    context: zmq.Context, pub_endpoint: str, sync_endpoint: str, symbols: list[str] | None
) -> tuple[zmq.Socket, dict[str, Any], list[bytes]]:
    """Subscribe, request a snapshot, read until the marker (a new marker per attempt: the first
    request can overtake the subscription). Returns the SUB socket, the reply and the tick
    frames read before the marker."""
    client = uuid.uuid4().hex
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVHWM, 0)  # the test checks contiguity: no drops on its side
    for symbol in symbols or [""]:
        sub.setsockopt(zmq.SUBSCRIBE, f"{symbol} ".encode() if symbol else b"")
    sub.connect(pub_endpoint)
    for _attempt in range(10):
        marker = uuid.uuid4().hex
        marker_prefix = f"_sync.{marker} ".encode()
        sub.setsockopt(zmq.SUBSCRIBE, marker_prefix)
        request = {"op": "snapshot", "client": client, "marker": marker, "symbols": symbols}
        reply = _request(context, sync_endpoint, orjson.dumps(request))
        assert reply["ok"], reply
        before_marker: list[bytes] = []
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and sub.poll(100):
            frame = sub.recv()
            if frame.startswith(marker_prefix):
                ready = {"op": "ready", "client": client, "marker": marker}
                assert _request(context, sync_endpoint, orjson.dumps(ready)) == {"ok": True}
                sub.setsockopt(zmq.UNSUBSCRIBE, marker_prefix)
                return sub, reply, before_marker
            if not frame.startswith(b"_"):
                before_marker.append(frame)
        sub.setsockopt(zmq.UNSUBSCRIBE, marker_prefix)
    raise AssertionError("the marker never arrived in 10 attempts")


def _seqs_after(sub: zmq.Socket, count: int) -> dict[str, list[int]]:
    seqs: dict[str, list[int]] = {}
    received = 0
    deadline = time.monotonic() + 30
    while received < count and time.monotonic() < deadline:
        if sub.poll(200):
            topic, _, payload = sub.recv().partition(b" ")
            if topic.startswith(b"_"):
                continue
            seqs.setdefault(topic.decode(), []).append(orjson.loads(payload)["seq"])
            received += 1
    assert received == count
    return seqs


def _sync_service_mid_stream(
    serve: Serve, zmq_context: zmq.Context, endpoints: list[str], symbols: int
) -> str:
    """Start a service at 20k ticks/s with a sync endpoint and let the feed run for 0.5 s, so a
    snapshot is taken mid-stream; returns the sync endpoint."""
    sync_endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    process = serve(
        *serve_settings(endpoints, "synthetic.rate=20000", f"synthetic.symbols={symbols}"),
        f"sync.endpoint={sync_endpoint}",
        "recovery.endpoint=",
    )
    subscribed_probe(zmq_context, endpoints[0], process, b"_hb ")
    time.sleep(0.5)
    return sync_endpoint


def test_joining_at_full_speed_misses_nothing_from_the_snapshot_on(
    serve: Serve, ipc_endpoint: str, zmq_context: zmq.Context
) -> None:
    sync_endpoint = _sync_service_mid_stream(serve, zmq_context, [ipc_endpoint], 50)
    for _ in range(3):  # several joins while the feed runs
        sub, reply, before_marker = _handshake(zmq_context, ipc_endpoint, sync_endpoint, None)
        snapshot = reply["snapshot"]
        assert len(snapshot) == 50
        for symbol, entry in snapshot.items():
            assert entry["seq"] >= 1 and entry["tick"]["seq"] == entry["seq"]
            assert entry["tick"]["sym"] == symbol
        # Everything published before the marker is at or below the snapshot.
        for frame in before_marker:
            tick = orjson.loads(frame.partition(b" ")[2])
            assert tick["seq"] <= snapshot[tick["sym"]]["seq"]
        # Everything after continues each symbol from snapshot seq + 1, without a gap.
        for symbol, seqs in _seqs_after(sub, 10_000).items():
            first = snapshot[symbol]["seq"] + 1
            assert seqs == list(range(first, first + len(seqs))), symbol
        sub.close()


def test_rare_symbol_has_a_snapshot_value(
    serve: Serve, ipc_endpoint: str, zmq_context: zmq.Context
) -> None:
    sync_endpoint = f"ipc://{ipc_endpoint.removeprefix('ipc://')}-sync"
    ingest_endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    process = serve(
        *serve_settings([ipc_endpoint], "synthetic.enabled=false"),
        f"sync.endpoint={sync_endpoint}",
        "recovery.endpoint=",
        f"ingest.endpoint={ingest_endpoint}",
    )
    probe = subscribed_probe(zmq_context, ipc_endpoint, process, b"RARE ", b"_hb ")
    probe.setsockopt(zmq.UNSUBSCRIBE, b"_hb ")
    quiet_until = time.monotonic() + 0.5
    while time.monotonic() < quiet_until:
        if probe.poll(100):
            probe.recv()
    push = zmq_context.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 1000)
    push.connect(ingest_endpoint)
    tick = {"sym": "RARE", "bid": 5.0, "ask": 5.1, "bid_size": 1, "ask_size": 2, "venue": "X"}
    push.send(orjson.dumps(tick))
    assert probe.poll(10_000)
    broadcast = probe.recv().partition(b" ")[2]
    _, reply, _ = _handshake(zmq_context, ipc_endpoint, sync_endpoint, ["RARE", "NEVER"])
    assert orjson.dumps(reply["snapshot"]["RARE"]["tick"]) == broadcast
    assert reply["snapshot"]["RARE"]["seq"] == 1
    assert reply["snapshot"]["NEVER"] == {"seq": 0, "tick": None}


def test_bad_requests_get_error_replies_and_the_socket_stays_usable(
    serve: Serve, ipc_endpoint: str, zmq_context: zmq.Context
) -> None:
    sync_endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    process = serve(
        *serve_settings([ipc_endpoint], "synthetic.rate=1000"),
        f"sync.endpoint={sync_endpoint}",
        "recovery.endpoint=",
        "sync.max_symbols_per_request=5",
        "sync.max_request_bytes=1024",
    )
    subscribed_probe(zmq_context, ipc_endpoint, process, b"_hb ")
    base = {"op": "snapshot", "client": "c", "marker": "m"}
    cases = [
        (b"\x00\xffgarbage", "not_json"),
        (orjson.dumps({"op": "x"}), "bad_request"),
        (orjson.dumps({**base, "symbols": ["_hb"]}), "bad_symbol"),
        (orjson.dumps({**base, "symbols": [f"S{i}" for i in range(6)]}), "too_many_symbols"),
        (orjson.dumps({**base, "symbols": ["X" * 60] * 5, "pad": "y" * 800}), "too_large"),
    ]
    for request, error in cases:
        reply = _request(zmq_context, sync_endpoint, request)
        assert reply["ok"] is False and reply["error"] == error, reply
    assert _request(zmq_context, sync_endpoint, orjson.dumps({**base, "symbols": ["SYN0001"]}))[
        "ok"
    ]
    assert process.popen.poll() is None
    assert process.terminate() == 0


def test_wait_subscribers_gives_each_client_seq_1_of_every_symbol(
    serve: Serve, ipc_endpoint: str, tcp_endpoint: str, zmq_context: zmq.Context
) -> None:
    sync_endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    process = serve(
        *serve_settings(
            [ipc_endpoint, tcp_endpoint], "synthetic.rate=20000", "synthetic.symbols=20"
        ),
        f"sync.endpoint={sync_endpoint}",
        "recovery.endpoint=",
        extra_args=("--wait-subscribers", "2"),
    )
    probe = subscribed_probe(zmq_context, ipc_endpoint, process, b"")
    time.sleep(0.5)
    # Held: heartbeats only, no ticks.
    held_until = time.monotonic() + 1.0
    while time.monotonic() < held_until:
        if probe.poll(100):
            assert probe.recv().startswith(b"_")
    symbols = [f"SYN{index:04d}" for index in range(20)]
    clients = [
        _handshake(zmq_context, endpoint, sync_endpoint, symbols[:10] if n else None)
        for n, endpoint in enumerate([ipc_endpoint, tcp_endpoint])
    ]
    for n, (sub, reply, before_marker) in enumerate(clients):
        assert before_marker == []
        assert all(entry == {"seq": 0, "tick": None} for entry in reply["snapshot"].values())
        wanted = symbols[:10] if n else symbols
        seqs = _seqs_after(sub, 4000)
        assert set(seqs) == set(wanted)
        for symbol, seen in seqs.items():
            assert seen == list(range(1, len(seen) + 1)), symbol


def test_client_library_joins_a_running_service_without_gaps_or_duplicates(
    serve: Serve, ipc_endpoint: str, tcp_endpoint: str, zmq_context: zmq.Context
) -> None:
    sync_endpoint = _sync_service_mid_stream(serve, zmq_context, [ipc_endpoint, tcp_endpoint], 50)
    for endpoint in (ipc_endpoint, tcp_endpoint, ipc_endpoint, tcp_endpoint):
        symbols = ["SYN0003", "SYN0017", "SYN0042"]
        with Subscriber(
            endpoint, symbols=symbols, sync_endpoint=sync_endpoint, rcvhwm=0
        ) as subscriber:
            seqs: dict[str, list[int]] = {}
            deadline = time.monotonic() + 30
            while sum(map(len, seqs.values())) < 1500 and time.monotonic() < deadline:
                tick = subscriber.recv(timeout=1.0)
                if tick is not None:
                    seqs.setdefault(tick["sym"], []).append(tick["seq"])
            assert set(seqs) == set(symbols)
            for symbol, seen in seqs.items():
                # The snapshot's last value first, then every later tick.
                assert seen[0] == subscriber.snapshot[symbol]["seq"]
                assert seen == list(range(seen[0], seen[0] + len(seen))), symbol
            assert subscriber.stats.gaps == 0 and subscriber.stats.duplicates == 0


def test_subscribe_cli_with_sync_prints_contiguous_seqs_from_the_snapshot(
    serve: Serve, ipc_endpoint: str, zmq_context: zmq.Context
) -> None:
    sync_endpoint = _sync_service_mid_stream(serve, zmq_context, [ipc_endpoint], 20)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "feedsvc.cli",
            "subscribe",
            "--endpoint",
            ipc_endpoint,
            "--sync",
            sync_endpoint,
            "--json",
            "--count",
            "3000",
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    ticks = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert len(ticks) == 3000
    by_symbol: dict[str, list[int]] = {}
    for tick in ticks:
        by_symbol.setdefault(tick["sym"], []).append(tick["seq"])
    assert len(by_symbol) == 20
    # The first 20 lines are the snapshot's last values, one per symbol.
    assert len({tick["sym"] for tick in ticks[:20]}) == 20
    for symbol, seen in by_symbol.items():
        assert seen == list(range(seen[0], seen[0] + len(seen))), symbol
    summary = orjson.loads(result.stderr.splitlines()[-1])
    assert summary["gaps"] == 0 and summary["missed"] == 0


def test_many_clients_joining_at_once_each_get_contiguous_ticks(
    serve: Serve, ipc_endpoint: str, tcp_endpoint: str, zmq_context: zmq.Context
) -> None:
    sync_endpoint = _sync_service_mid_stream(serve, zmq_context, [ipc_endpoint, tcp_endpoint], 50)
    problems: list[str] = []

    def join(index: int) -> None:
        endpoint = ipc_endpoint if index % 2 else tcp_endpoint
        symbols = [f"SYN{(index * 7 + offset) % 50:04d}" for offset in range(5)]
        try:
            with Subscriber(
                endpoint,
                symbols=symbols,
                sync_endpoint=sync_endpoint,
                rcvhwm=0,
                context=zmq_context,
            ) as subscriber:
                seqs: dict[str, list[int]] = {}
                deadline = time.monotonic() + 30
                while sum(map(len, seqs.values())) < 1000 and time.monotonic() < deadline:
                    tick = subscriber.recv(timeout=1.0)
                    if tick is not None:
                        seqs.setdefault(tick["sym"], []).append(tick["seq"])
                if set(seqs) != set(symbols):
                    problems.append(f"client {index}: symbols {sorted(seqs)}")
                for symbol, seen in seqs.items():
                    if seen[0] != subscriber.snapshot[symbol]["seq"]:
                        problems.append(f"client {index} {symbol}: did not start at snapshot")
                    if seen != list(range(seen[0], seen[0] + len(seen))):
                        problems.append(f"client {index} {symbol}: not contiguous")
        except Exception as error:  # reported below with the client's index
            problems.append(f"client {index}: {error!r}")

    clients = [threading.Thread(target=join, args=(index,)) for index in range(8)]
    for client in clients:
        client.start()
    for client in clients:
        client.join(timeout=60)
    assert not any(client.is_alive() for client in clients)
    assert problems == []


def test_a_bare_ready_does_not_release_wait_subscribers(
    serve: Serve, ipc_endpoint: str, zmq_context: zmq.Context
) -> None:
    sync_endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    process = serve(
        *serve_settings([ipc_endpoint], "synthetic.rate=5000"),
        f"sync.endpoint={sync_endpoint}",
        "recovery.endpoint=",
        extra_args=("--wait-subscribers", "1"),
    )
    probe = subscribed_probe(zmq_context, ipc_endpoint, process, b"")
    # Readies from clients that never asked for a snapshot, and for a marker never served.
    for client in ("c1", "c2", "c3"):
        ready = {"op": "ready", "client": client, "marker": "never-served"}
        reply = _request(zmq_context, sync_endpoint, orjson.dumps(ready))
        assert reply["ok"] is False and reply["error"] == "unknown_marker", reply
    held_until = time.monotonic() + 1.5
    while time.monotonic() < held_until:
        if probe.poll(100):
            assert probe.recv().startswith(b"_"), "ticks published before a real handshake"
    # One client that received its snapshot (and confirms that marker) releases the feed.
    sub, _reply, _before = _handshake(zmq_context, ipc_endpoint, sync_endpoint, None)
    seqs = _seqs_after(sub, 500)
    assert seqs and all(seen[0] == 1 for seen in seqs.values()), seqs
