"""The sync handshake served by a real `feedsvc serve`, spoken with plain pyzmq sockets as any
client in any language would (docs/sync-protocol.md)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson
import zmq

from tests.conftest import ServeProcess, free_tcp_port, serve_settings, wait_for_first_message

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


def test_joining_at_full_speed_misses_nothing_from_the_snapshot_on(
    serve: Serve, ipc_endpoint: str, zmq_context: zmq.Context
) -> None:
    sync_endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    process = serve(
        *serve_settings([ipc_endpoint], "synthetic.rate=20000", "synthetic.symbols=50"),
        f"sync.endpoint={sync_endpoint}",
    )
    probe = zmq_context.socket(zmq.SUB)
    probe.setsockopt(zmq.SUBSCRIBE, b"_hb ")
    probe.connect(ipc_endpoint)
    wait_for_first_message(probe, process)
    time.sleep(0.5)  # the feed runs: the snapshot is mid-stream
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
        f"ingest.endpoint={ingest_endpoint}",
    )
    probe = zmq_context.socket(zmq.SUB)
    probe.setsockopt(zmq.SUBSCRIBE, b"RARE ")
    probe.setsockopt(zmq.SUBSCRIBE, b"_hb ")
    probe.connect(ipc_endpoint)
    wait_for_first_message(probe, process)
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
        "sync.max_symbols_per_request=5",
        "sync.max_request_bytes=1024",
    )
    probe = zmq_context.socket(zmq.SUB)
    probe.setsockopt(zmq.SUBSCRIBE, b"_hb ")
    probe.connect(ipc_endpoint)
    wait_for_first_message(probe, process)
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
        extra_args=("--wait-subscribers", "2"),
    )
    probe = zmq_context.socket(zmq.SUB)
    probe.setsockopt(zmq.SUBSCRIBE, b"")
    probe.connect(ipc_endpoint)
    wait_for_first_message(probe, process)
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
