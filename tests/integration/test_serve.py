"""`feedsvc serve` as a real process, seen by plain pyzmq sockets over ipc and tcp."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path

import jsonschema
import orjson
import pytest
import zmq

from tests.conftest import (
    SCHEMAS,
    ServeProcess,
    free_tcp_port,
    serve_settings,
    wait_for_first_message,
)

Serve = Callable[..., ServeProcess]
GOOD = {"bid": 10.0, "ask": 10.01, "bid_size": 100, "ask_size": 200}


def _validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads((SCHEMAS / name).read_text()))


def _sub(context: zmq.Context, endpoint: str, *prefixes: bytes) -> zmq.Socket:
    subscriber = context.socket(zmq.SUB)
    subscriber.setsockopt(zmq.LINGER, 0)
    subscriber.setsockopt(zmq.RCVHWM, 0)  # the test must not drop: it checks contiguity
    for prefix in prefixes:
        subscriber.setsockopt(zmq.SUBSCRIBE, prefix)
    subscriber.connect(endpoint)
    return subscriber


def _receive(subscriber: zmq.Socket, count: int, timeout_s: float = 30.0) -> list[bytes]:
    frames: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    while len(frames) < count and time.monotonic() < deadline:
        if subscriber.poll(100):
            frames.append(subscriber.recv())
    return frames


def _drain(subscriber: zmq.Socket, quiet_s: float = 0.5, timeout_s: float = 10.0) -> list[bytes]:
    """Everything that arrives until no tick (heartbeats aside) has for quiet_s."""
    frames: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    last_tick_at = time.monotonic()
    while time.monotonic() < min(deadline, last_tick_at + quiet_s):
        if subscriber.poll(50):
            frames.append(subscriber.recv())
            if not frames[-1].startswith(b"_"):
                last_tick_at = time.monotonic()
    return frames


def _ticks(frames: list[bytes]) -> list[dict[str, object]]:
    """Decode frames, keep ticks (not control topics), and check topic == sym on each."""
    ticks = []
    for frame in frames:
        topic, _, payload = frame.partition(b" ")
        if topic.startswith(b"_"):
            continue
        tick = orjson.loads(payload)
        assert tick["sym"] == topic.decode()
        ticks.append(tick)
    return ticks


@pytest.mark.parametrize("transport", ["ipc", "tcp"])
def test_plain_pyzmq_sub_gets_schema_valid_contiguous_ticks(
    transport: str, serve: Serve, ipc_endpoint: str, tcp_endpoint: str, zmq_context: zmq.Context
) -> None:
    process = serve(
        *serve_settings([ipc_endpoint, tcp_endpoint], "synthetic.rate=5000", "synthetic.symbols=20")
    )
    endpoint = ipc_endpoint if transport == "ipc" else tcp_endpoint
    subscriber = _sub(zmq_context, endpoint, b"")
    wait_for_first_message(subscriber, process)
    frames = _receive(subscriber, 3000)
    assert len(frames) == 3000, process.log

    tick_schema, heartbeat_schema = (
        _validator("tick.schema.json"),
        _validator("heartbeat.schema.json"),
    )
    last_seq: dict[str, int] = {}
    epochs = set()
    heartbeats = 0
    for frame in frames:
        topic, _, payload = frame.partition(b" ")
        message = orjson.loads(payload)
        if topic == b"_hb":
            heartbeat_schema.validate(message)
            heartbeats += 1
            continue
        tick_schema.validate(message)
        symbol = message["sym"]
        assert topic.decode() == symbol
        if symbol in last_seq:
            assert message["seq"] == last_seq[symbol] + 1, f"{symbol} not contiguous"
        last_seq[symbol] = message["seq"]
        epochs.add(message["epoch"])
        assert abs(message["ts"] - time.time_ns()) < 60e9
    assert len(last_seq) == 20
    assert len(epochs) == 1
    assert heartbeats >= 1  # 3000 ticks at 5000/s take 0.6 s; heartbeats every 0.1 s


def test_exact_symbol_subscription_and_ingest(
    serve: Serve, ipc_endpoint: str, zmq_context: zmq.Context
) -> None:
    ingest_endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    process = serve(
        *serve_settings(
            [ipc_endpoint], "synthetic.enabled=false", f"ingest.endpoint={ingest_endpoint}"
        )
    )
    exact = _sub(zmq_context, ipc_endpoint, b"AAPL ", b"_hb ")
    everything = _sub(zmq_context, ipc_endpoint, b"")
    wait_for_first_message(exact, process)
    wait_for_first_message(everything, process)
    push = zmq_context.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 1000)
    push.connect(ingest_endpoint)
    batch = [{"sym": sym, **GOOD, "venue": "XNAS"} for sym in ["AAPL", "AAPLX", "AAP", "AAPL"]]
    push.send(orjson.dumps(batch))
    push.send(orjson.dumps({"sym": "AAPLX", **GOOD}))
    push.send(orjson.dumps({"sym": "AAPL", **GOOD}))

    exact_ticks = _ticks(_drain(exact))
    all_ticks = _ticks(_drain(everything))
    assert [(t["sym"], t["seq"]) for t in exact_ticks] == [("AAPL", 1), ("AAPL", 2), ("AAPL", 3)]
    assert [(t["sym"], t["seq"]) for t in all_ticks] == [
        ("AAPL", 1),
        ("AAPLX", 1),
        ("AAP", 1),
        ("AAPL", 2),
        ("AAPLX", 2),
        ("AAPL", 3),
    ]
    assert all(t["venue"] == "XNAS" for t in all_ticks[:4])


def test_bad_ingest_is_rejected_and_counted_while_good_ticks_flow(
    serve: Serve, ipc_endpoint: str, zmq_context: zmq.Context
) -> None:
    ingest_endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    process = serve(
        *serve_settings([ipc_endpoint], "synthetic.enabled=false"),
        f"ingest.endpoint={ingest_endpoint}",
        "ingest.max_message_bytes=4096",
        "ingest.reject_log_interval_s=0",
    )
    subscriber = _sub(zmq_context, ipc_endpoint, b"")
    wait_for_first_message(subscriber, process)
    push = zmq_context.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 1000)
    push.connect(ingest_endpoint)
    for index in range(100):
        push.send(orjson.dumps({"sym": "GOOD", **GOOD, "n": index}))
        push.send(b"{this is not json")
        push.send(orjson.dumps([{"sym": "GOOD", **GOOD, "n": index}, {"sym": "_hb", **GOOD}]))
        push.send(orjson.dumps({"sym": "GOOD", "bid": "cheap"}))
        push.send(b"[" + b" " * 5000 + b"]")

    ticks = _ticks(_drain(subscriber))
    assert [t["seq"] for t in ticks] == list(range(1, 201))
    assert [t["n"] for t in ticks] == [n for n in range(100) for _ in (0, 1)]
    assert process.terminate() == 0
    # The shutdown line reports the totals by reason.
    stopped = [line for line in process.log.splitlines() if "stopped:" in line]
    assert stopped, process.log
    for reason, count in [
        ("not_json", 100),
        ("bad_symbol", 100),
        ("missing_field", 100),
        ("too_large", 100),
    ]:
        assert re.search(rf"'{reason}': {count}\b", stopped[-1]), stopped[-1]
    assert "rejected" in process.log and "WARNING" in process.log
    # Bounded logging: never a line per rejected tick.
    assert len(process.log.splitlines()) < 100


def test_heartbeats_tell_a_quiet_market_from_a_dead_publisher(
    serve: Serve, ipc_endpoint: str, zmq_context: zmq.Context
) -> None:
    process = serve(
        *serve_settings([ipc_endpoint], "synthetic.enabled=false"),
        "publisher.heartbeat_interval_s=0.2",
    )
    subscriber = _sub(zmq_context, ipc_endpoint, b"_hb ")
    wait_for_first_message(subscriber, process)
    started = time.monotonic()
    heartbeats = [orjson.loads(frame.partition(b" ")[2]) for frame in _receive(subscriber, 5)]
    elapsed = time.monotonic() - started
    assert len(heartbeats) == 5
    assert 0.6 < elapsed < 5.0  # about 5 x 0.2 s
    assert {hb["interval_s"] for hb in heartbeats} == {0.2}
    assert process.terminate() == 0
    assert not subscriber.poll(1000)  # dead publisher: heartbeats stop


def test_each_start_has_a_new_epoch(
    serve: Serve, ipc_endpoint: str, zmq_context: zmq.Context
) -> None:
    epochs = []
    for _ in range(2):
        process = serve(*serve_settings([ipc_endpoint], "synthetic.enabled=false"))
        subscriber = _sub(zmq_context, ipc_endpoint, b"_hb ")
        epochs.append(
            orjson.loads(wait_for_first_message(subscriber, process).partition(b" ")[2])["epoch"]
        )
        subscriber.close()
        assert process.terminate() == 0
    assert epochs[0] != epochs[1]


def test_sigterm_publishes_what_was_accepted_and_exits_0(
    serve: Serve, ipc_endpoint: str, zmq_context: zmq.Context
) -> None:
    ingest_endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    process = serve(
        *serve_settings(
            [ipc_endpoint], "synthetic.enabled=false", f"ingest.endpoint={ingest_endpoint}"
        )
    )
    subscriber = _sub(zmq_context, ipc_endpoint, b"BURST ")
    subscriber.setsockopt(zmq.SUBSCRIBE, b"_hb ")
    wait_for_first_message(subscriber, process)
    push = zmq_context.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 2000)
    push.connect(ingest_endpoint)
    batch = orjson.dumps([{"sym": "BURST", **GOOD}] * 100)
    for _ in range(50):
        push.send(batch)
    # Wait until the service has taken the first ticks, then stop it with the rest in flight.
    assert _receive(subscriber, 2, timeout_s=10)
    assert process.terminate() == 0
    seqs = [t["seq"] for t in _ticks(_drain(subscriber, quiet_s=1.0))]
    assert seqs[-1] == 5000, "ticks accepted before SIGTERM were lost"
    assert "stopped: published 5000 ticks" in process.log


def test_bad_config_exits_2_with_one_line_naming_the_key(serve: Serve) -> None:
    process = serve("synthetic.rate=-1", "ingest.endpoint=", "metrics.port=0")
    assert process.popen.wait(timeout=30) == 2
    lines = process.log.strip().splitlines()
    assert lines == ["feedsvc: config error: synthetic.rate: must be >= 0.0, got -1"]


def test_a_config_key_is_named_as_written(serve: Serve, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("0E0: 1\n")  # YAML reads the key as the number 0.0
    process = serve(extra_args=("--config", str(config)))
    assert process.popen.wait(timeout=30) == 2
    lines = process.log.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("feedsvc: config error: 0E0: unknown key"), lines


def test_bad_config_file_key_is_named(serve: Serve, tmp_path: object) -> None:
    process = serve("publisher.sndhwm=lots")
    assert process.popen.wait(timeout=30) == 2
    assert (
        process.log.strip().splitlines()[-1].startswith("feedsvc: config error: publisher.sndhwm:")
    )


def test_unbindable_endpoint_is_named(serve: Serve, ipc_endpoint: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as occupied:
        occupied.bind(("127.0.0.1", 0))
        occupied.listen()
        taken = f"tcp://127.0.0.1:{occupied.getsockname()[1]}"
        process = serve(*serve_settings([ipc_endpoint, taken]))
        assert process.popen.wait(timeout=30) == 2
    line = process.log.strip().splitlines()[-1]
    assert f"publisher.endpoints[1]: cannot bind {taken}" in line
    assert "Address already in use" in line
