"""`feedsvc relay` across simulated hosts: a publisher in one network namespace, a relay in a
second, clients in a third, linked by veth pairs (tests/integration/netns.py; removed after
each test, also when it fails). Every process is real and is stopped by its own pid.

What a desk relies on: the relay's stream is the publisher's, frame for frame, heartbeats
included; a client that connects only to the relay syncs and recovers through it; a relay
restart, an upstream restart and a cut link each end with the client receiving again on its
own, with no tick of an epoch missing; an upstream that is down gets a clear error, not silence.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
import zmq

from feedsvc.bench.procs import free_tcp_port, kill_process
from feedsvc.client import Subscriber
from feedsvc.curve import CurveClientKeys, create_key_pair
from feedsvc.curve import connect as curve_connect
from feedsvc.protocol.recovery import ERROR_UPSTREAM_UNAVAILABLE
from tests.conftest import http_get, wait_for
from tests.integration.netns import Hosts

HERE = Path(__file__).parent
PUBLISH_PORT, SYNC_PORT, RECOVERY_PORT = 5556, 5558, 5559
RELAY_PORT, RELAY_SYNC_PORT, RELAY_RECOVERY_PORT, RELAY_METRICS_PORT = 5656, 5658, 5659, 9109
RATE = 2_000


class Processes:
    """Processes started by a test, each stopped (by its pid) at the end."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._started: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, argv: Sequence[str]) -> subprocess.Popen[bytes]:
        log = (self.folder / f"{name}-{len(self._started)}.log").open("wb")
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self._started.append(process)
        return process

    def log(self, name: str) -> str:
        return "\n".join(
            path.read_text(errors="replace")[-3000:]
            for path in sorted(self.folder.glob(f"{name}-*.log"))
        )

    def stop_all(self) -> None:
        for process in self._started:
            kill_process(process)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    started = Processes(tmp_path)
    try:
        yield started
    finally:
        started.stop_all()


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    with Hosts(["pub", "relay", "sub"], [("pub", "relay"), ("relay", "sub")]) as created:
        yield created


def feedsvc(*args: str) -> list[str]:
    return [sys.executable, "-m", "feedsvc.cli", *args]


def serve_command(hosts: Hosts) -> list[str]:
    address = hosts.address("pub", "relay")
    settings = [
        f"publisher.endpoints=[tcp://{address}:{PUBLISH_PORT}]",
        f"sync.endpoint=tcp://{address}:{SYNC_PORT}",
        f"recovery.endpoint=tcp://{address}:{RECOVERY_PORT}",
        "ingest.endpoint=",
        "metrics.port=0",
        "kafka.enabled=false",
        "publisher.heartbeat_interval_s=0.1",
        f"synthetic.rate={RATE}",
        "synthetic.symbols=20",
    ]
    return hosts.command("pub", feedsvc("serve", *_sets(settings)))


def relay_command(hosts: Hosts) -> list[str]:
    upstream = hosts.address("pub", "relay")
    address = hosts.address("relay", "sub")
    settings = [
        "relay.upstreams=[{"
        f"publisher: 'tcp://{upstream}:{PUBLISH_PORT}', sync: 'tcp://{upstream}:{SYNC_PORT}', "
        f"recovery: 'tcp://{upstream}:{RECOVERY_PORT}'"
        "}]",
        f"relay.endpoints=[tcp://{address}:{RELAY_PORT}]",
        f"relay.sync_endpoint=tcp://{address}:{RELAY_SYNC_PORT}",
        f"relay.recovery_endpoint=tcp://{address}:{RELAY_RECOVERY_PORT}",
        f"relay.metrics_port={RELAY_METRICS_PORT}",
        "relay.upstream_timeout_s=1",
    ]
    return hosts.command("relay", feedsvc("relay", *_sets(settings)))


def _sets(settings: Sequence[str]) -> list[str]:
    return [part for setting in settings for part in ("--set", setting)]


def relay_endpoint(hosts: Hosts, port: int = RELAY_PORT) -> str:
    return f"tcp://{hosts.address('relay', 'sub')}:{port}"


def in_relay_host(hosts: Hosts, code: str) -> bytes:
    """Run Python in the relay's namespace (its metrics listen on its own loopback)."""
    command = hosts.command("relay", [sys.executable, "-c", code])
    return subprocess.run(command, capture_output=True, check=True, timeout=30).stdout


def relay_http(hosts: Hosts, path: str) -> tuple[int, bytes]:
    code = (
        "import sys, urllib.request, urllib.error\n"
        "try:\n"
        f"    url = 'http://127.0.0.1:{RELAY_METRICS_PORT}{path}'\n"
        "    r = urllib.request.urlopen(url, timeout=5)\n"
        "    status, body = r.status, r.read()\n"
        "except urllib.error.HTTPError as e:\n"
        "    status, body = e.code, e.read()\n"
        "except OSError:\n"
        "    status, body = 0, b''\n"
        "sys.stdout.buffer.write(str(status).encode() + b' ' + body)\n"
    )
    status, _, body = in_relay_host(hosts, code).partition(b" ")
    return int(status), body


def relay_client_command(hosts: Hosts, out: Path, symbols: Sequence[str] = ()) -> list[str]:
    """relay_client.py in the subscribers' namespace, on the relay's three endpoints, for at
    most 40 s, writing its status lines to `out`."""
    command = [
        sys.executable,
        str(HERE / "relay_client.py"),
        *("--endpoint", relay_endpoint(hosts)),
        *("--sync", relay_endpoint(hosts, RELAY_SYNC_PORT)),
        *("--recover", relay_endpoint(hosts, RELAY_RECOVERY_PORT)),
        *("--duration", "40", "--out", str(out)),
        *(part for symbol in symbols for part in ("--symbol", symbol)),
    ]
    return hosts.command("sub", command)


def statuses(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    lines = path.read_bytes().splitlines()
    # The last line may be half written.
    return [orjson.loads(line) for line in lines[:-1]] + _complete(lines[-1:])


def _complete(lines: list[bytes]) -> list[dict[str, Any]]:
    try:
        return [orjson.loads(line) for line in lines]
    except orjson.JSONDecodeError:
        return []


def latest(path: Path) -> dict[str, Any]:
    found = statuses(path)
    return found[-1] if found else {"delivered_by_epoch": {}, "last_tick_at": None, "stats": {}}


def receiving_since(path: Path, since: float) -> Callable[[], bool]:
    """True once the client delivered a tick after `since` (monotonic, the same clock)."""

    def check() -> bool:
        last = latest(path).get("last_tick_at")
        return last is not None and last > since

    return check


def settled_since(path: Path, since: float) -> Callable[[], bool]:
    """True once the client delivered a tick after `since` and has no recovery under way: the
    point to disturb the next tier. (Restarting the upstream while a recovery waits would lose
    that recovery's ticks for real: the new upstream never had them.)"""
    receiving = receiving_since(path, since)
    return lambda: receiving() and latest(path).get("recovering") is False


def test_the_relays_stream_is_the_publishers_frame_for_frame(
    hosts: Hosts, processes: Processes, tmp_path: Path
) -> None:
    processes.start("serve", serve_command(hosts))
    processes.start("relay", relay_command(hosts))
    direct_out, relayed_out = tmp_path / "direct.b64", tmp_path / "relayed.b64"
    capture = [sys.executable, str(HERE / "raw_capture.py"), "--prefix", "SYN0001 "]
    capture += ["--prefix", "_hb ", "--duration", "6"]
    upstream = f"tcp://{hosts.address('pub', 'relay')}:{PUBLISH_PORT}"
    direct = processes.start(
        "direct",
        hosts.command("relay", [*capture, "--endpoint", upstream, "--out", str(direct_out)]),
    )
    relayed = processes.start(
        "relayed",
        hosts.command(
            "sub", [*capture, "--endpoint", relay_endpoint(hosts), "--out", str(relayed_out)]
        ),
    )
    assert direct.wait(timeout=30) == 0 and relayed.wait(timeout=30) == 0
    direct_frames = [base64.b64decode(line) for line in direct_out.read_bytes().split()]
    relayed_frames = [base64.b64decode(line) for line in relayed_out.read_bytes().split()]
    ticks = [frame for frame in relayed_frames if frame.startswith(b"SYN0001 ")]
    heartbeats = [frame for frame in relayed_frames if frame.startswith(b"_hb ")]
    assert len(ticks) > 100, processes.log("relay")
    assert len(heartbeats) >= 10  # 0.1 s heartbeats, passed through
    # One frame per tick, contiguous seqs, the publisher's epoch, and every frame byte for byte
    # one the publisher sent.
    seqs = [orjson.loads(frame.partition(b" ")[2])["seq"] for frame in ticks]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    direct_ticks = {frame for frame in direct_frames if frame.startswith(b"SYN0001 ")}
    common = [frame for frame in ticks if frame in direct_ticks]
    assert len(common) > 0.5 * len(ticks)
    epochs = {orjson.loads(frame.partition(b" ")[2])["epoch"] for frame in ticks + heartbeats}
    assert len(epochs) == 1


def test_a_client_behind_the_relay_rides_out_relay_and_upstream_restarts_and_a_cut_link(
    hosts: Hosts, processes: Processes, tmp_path: Path
) -> None:
    serve = processes.start("serve", serve_command(hosts))
    relay = processes.start("relay", relay_command(hosts))
    out = tmp_path / "client.jsonl"
    client = processes.start("client", relay_client_command(hosts, out))

    def details() -> str:
        return (
            f"client: {latest(out)}\nrelay log:\n{processes.log('relay')}\n"
            f"client log:\n{processes.log('client')}\nserve log:\n{processes.log('serve')}"
        )

    wait_for(lambda: latest(out).get("stats", {}).get("syncs") == 1, 20, "synced", details)
    wait_for(receiving_since(out, time.monotonic()), 10, "ticks through the relay", details)

    # The relay's health and metrics (checked by a real promtool).
    status, body = relay_http(hosts, "/healthz")
    health = orjson.loads(body)
    assert status == 200 and health["status"] == "ok", body
    assert health["upstreams"][0]["up"] is True and health["upstreams"][0]["epoch"] is not None
    status, metrics = relay_http(hosts, "/metrics")
    check = subprocess.run(
        ["promtool", "check", "metrics"], input=metrics, capture_output=True, timeout=30
    )
    assert check.returncode == 0, check.stderr + check.stdout
    assert b'feedsvc_relay_messages_total{direction="in"}' in metrics
    assert b"feedsvc_relay_subscribers_connected 1.0" in metrics

    # 1. The relay restarts: SIGTERM exits 0, and the client receives again on its own.
    relay.send_signal(signal.SIGTERM)
    assert relay.wait(timeout=10) == 0, processes.log("relay")
    time.sleep(0.5)
    restarted_at = time.monotonic()
    processes.start("relay", relay_command(hosts))
    wait_for(receiving_since(out, restarted_at), 15, "ticks after the relay restart", details)
    wait_for(lambda: latest(out)["stats"]["recovered"] > 0, 15, "missed ticks recovered", details)
    wait_for(settled_since(out, restarted_at), 15, "recoveries finished", details)

    # 2. The link between relay and clients is cut for 2.5 s: the client sees the feed dead (no
    # heartbeat), then alive again when the link returns.
    dead_before = latest(out)["dead_events"]
    hosts.link_down("relay", "sub")
    time.sleep(2.5)
    hosts.link_up("relay", "sub")
    back_at = time.monotonic()
    wait_for(lambda: latest(out)["dead_events"] > dead_before, 5, "dead feed noticed", details)
    wait_for(receiving_since(out, back_at), 20, "ticks after the link came back", details)
    wait_for(settled_since(out, back_at), 15, "recoveries finished", details)

    # 3. The upstream restarts (a new epoch): the client resyncs through the relay.
    serve.send_signal(signal.SIGTERM)
    assert serve.wait(timeout=20) == 0
    processes.start("serve", serve_command(hosts))
    wait_for(lambda: len(latest(out)["delivered_by_epoch"]) == 2, 20, "the new epoch", details)
    wait_for(lambda: latest(out)["stats"]["syncs"] >= 2, 20, "a resync", details)

    client.send_signal(signal.SIGTERM)
    client.wait(timeout=10)
    final = latest(out)
    # Nothing missing or out of order within an epoch, across all of it.
    assert final["out_of_order"] == 0, details()
    assert final["stats"]["unrecoverable_gaps"] == 0, details()
    assert final["stats"]["duplicates"] == 0


def test_with_its_upstream_down_a_relay_answers_requests_with_a_clear_error(
    processes: Processes, zmq_context: zmq.Context
) -> None:
    # On loopback: nothing listens at the upstream's ports.
    metrics_port, relay_port, recovery_port = free_tcp_port(), free_tcp_port(), free_tcp_port()
    upstream = f"tcp://127.0.0.1:{free_tcp_port()}"
    settings = [
        f"relay.upstreams=[{{publisher: '{upstream}', recovery: 'tcp://127.0.0.1:{free_tcp_port()}'}}]",
        f"relay.endpoints=[tcp://127.0.0.1:{relay_port}]",
        "relay.sync_endpoint=",
        f"relay.recovery_endpoint=tcp://127.0.0.1:{recovery_port}",
        f"relay.metrics_port={metrics_port}",
        "relay.upstream_timeout_s=0.5",
    ]
    relay = processes.start("relay", feedsvc("relay", *_sets(settings)))
    client = zmq_context.socket(zmq.DEALER)
    client.setsockopt(zmq.LINGER, 0)
    client.connect(f"tcp://127.0.0.1:{recovery_port}")
    client.send(b'{"op":"recover","id":"gap.1","symbol":"AAPL","epoch":1,"first":1,"last":2}')
    assert client.poll(10_000), processes.log("relay")
    reply = orjson.loads(client.recv())
    assert (reply["ok"], reply["id"], reply["error"]) == (
        False,
        "gap.1",
        ERROR_UPSTREAM_UNAVAILABLE,
    )
    status, body = http_get(metrics_port, "/healthz")
    health = orjson.loads(body)
    assert status == 200 and health["status"] == "degraded" and upstream in health["reason"]
    relay.send_signal(signal.SIGTERM)
    assert relay.wait(timeout=10) == 0


@pytest.mark.parametrize(
    ("setting", "key"),
    [
        ("relay.sndhwm=-1", "relay.sndhwm"),
        ("relay.upstreams=[{publisher: 'tcp://x:1', sink: ''}]", "relay.upstreams"),
        ("relay.endpoints=[]", "relay.endpoints"),
    ],
)
def test_bad_relay_config_stops_start_up_with_one_line_naming_the_key(
    setting: str, key: str
) -> None:
    result = subprocess.run(
        feedsvc("relay", "--set", setting), capture_output=True, timeout=30, env=os.environ
    )
    assert result.returncode == 2
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and key in lines[0], result.stderr


def test_hostile_requests_to_the_relay_do_not_stop_it_serving_a_real_client(
    serve: Callable[..., Any], processes: Processes, zmq_context: zmq.Context
) -> None:
    """Garbage, oversized and malformed frames from many peers at the relay's recovery and sync
    endpoints, while a real client recovers through it: the client is answered, the relay
    stays up and healthy, and nothing malformed reaches the upstream as a request."""
    publish, sync, recovery = start_loopback_upstream(serve)
    relay, (relay_publish, relay_sync, relay_recovery), metrics_port = start_loopback_relay(
        processes, (publish, sync, recovery)
    )
    hostile_frames: list[list[bytes]] = [
        [b"\xff\xfe garbage"],
        [b"{"],
        [b"[]"],
        [b"a", b"b", b"c", b"d"],
        [b"x" * 5_000],  # over the recovery request limit (libzmq drops the peer beyond 4x)
        [b'{"op":"recover","id":{"nested":[1,2,3]}}'],
        [b'{"op":"snapshot","symbols":"' + b"A" * 2_000 + b'"}'],
    ]
    attackers = []
    for endpoint in (relay_recovery, relay_sync):
        for _ in range(10):
            attacker = zmq_context.socket(zmq.DEALER)
            attacker.setsockopt(zmq.LINGER, 0)
            attacker.connect(endpoint)
            attackers.append(attacker)
    # A subscription far longer than any topic: libzmq drops that subscriber (ZMQ_MAXMSGSIZE).
    greedy = zmq_context.socket(zmq.SUB)
    greedy.setsockopt(zmq.LINGER, 0)
    greedy.setsockopt(zmq.SUBSCRIBE, b"X" * 4_000)
    greedy.connect(relay_publish)
    attackers.append(greedy)
    for _round in range(20):
        for attacker in attackers[:-1]:
            for frames in hostile_frames:
                attacker.send_multipart(frames, zmq.NOBLOCK)
    # A real client, through the relay only: learns the epoch from a heartbeat, then recovers.
    probe = zmq_context.socket(zmq.SUB)
    probe.setsockopt(zmq.SUBSCRIBE, b"SYN0001 ")
    probe.connect(relay_publish)
    assert probe.poll(20_000), processes.log("relay")
    tick = orjson.loads(probe.recv().partition(b" ")[2])
    client = zmq_context.socket(zmq.DEALER)
    client.setsockopt(zmq.LINGER, 0)
    client.connect(relay_recovery)
    request = {"op": "recover", "id": "real.1", "symbol": "SYN0001", "epoch": tick["epoch"]}
    client.send(orjson.dumps({**request, "first": 1, "last": tick["seq"]}))
    assert client.poll(10_000), processes.log("relay")
    header, *body = client.recv_multipart()
    reply = orjson.loads(header)
    assert reply["ok"] is True and reply["id"] == "real.1", reply
    frames = b"\n".join(body).split(b"\n")
    assert [orjson.loads(frame.partition(b" ")[2])["seq"] for frame in frames] == list(
        range(1, tick["seq"] + 1)
    )
    assert relay.poll() is None and _health(metrics_port)["status"] == "ok"
    _status, metrics = http_get(metrics_port, "/metrics")
    assert metrics.count(b'outcome="internal_error"} 0.0') == 2  # sync and recovery
    refused = re.search(
        rb'feedsvc_relay_requests_total\{kind="recovery",outcome="refused"\} (\S+)', metrics
    )
    assert refused is not None and float(refused.group(1)) > 0
    for peer in (*attackers, probe, client):
        peer.close(linger=0)


def start_loopback_upstream(serve: Callable[..., Any], *extra: str) -> tuple[str, str, str]:
    """A `feedsvc serve` on loopback for a relay: its (publisher, sync, recovery) endpoints."""
    publish, sync, recovery = (f"tcp://127.0.0.1:{free_tcp_port()}" for _ in range(3))
    upstream = serve(
        f"publisher.endpoints=[{publish}]",
        f"sync.endpoint={sync}",
        f"recovery.endpoint={recovery}",
        "ingest.endpoint=",
        "metrics.port=0",
        "kafka.enabled=false",
        "publisher.heartbeat_interval_s=0.1",
        "synthetic.rate=1000",
        *extra,
    )
    upstream.wait_until_serving()
    return publish, sync, recovery


def start_loopback_relay(
    processes: Processes, upstream: tuple[str, str, str], *extra: str
) -> tuple[subprocess.Popen[bytes], tuple[str, str, str], int]:
    """A `feedsvc relay` on loopback in front of `upstream` (publisher, sync, recovery), once
    its /healthz says ok: (process, its (publisher, sync, recovery) endpoints, metrics port)."""
    publish, sync, recovery = upstream
    endpoints = relay_publish, relay_sync, relay_recovery = tuple(
        f"tcp://127.0.0.1:{free_tcp_port()}" for _ in range(3)
    )
    metrics_port = free_tcp_port()
    settings = [
        f"relay.upstreams=[{{publisher: '{publish}', sync: '{sync}', recovery: '{recovery}'}}]",
        f"relay.endpoints=[{relay_publish}]",
        f"relay.sync_endpoint={relay_sync}",
        f"relay.recovery_endpoint={relay_recovery}",
        f"relay.metrics_port={metrics_port}",
        *extra,
    ]
    relay = processes.start("relay", feedsvc("relay", *_sets(settings)))
    wait_for(
        lambda: _health(metrics_port).get("status") == "ok",
        20,
        "the relay up and hearing its upstream",
        lambda: processes.log("relay"),
    )
    return relay, endpoints, metrics_port


def _health(port: int) -> dict[str, Any]:
    try:
        _status, body = http_get(port, "/healthz")
    except OSError:
        return {}
    return orjson.loads(body)


def test_curve_on_both_sides_of_the_relay(
    serve: Callable[..., Any], processes: Processes, tmp_path: Path, zmq_context: zmq.Context
) -> None:
    """A Curve publisher lets the relay in by its key; the relay's own endpoints let in only
    its listed clients: alice receives, syncs and recovers through it, a stranger gets nothing."""
    keys, publisher_clients, relay_clients = (tmp_path / name for name in ("k", "pa", "ra"))
    for folder in (keys, publisher_clients, relay_clients):
        folder.mkdir()
    for name in ("server", "relay-server", "relay", "alice", "mallory"):
        create_key_pair(keys, name)
    shutil.copy(keys / "relay.key", publisher_clients)
    shutil.copy(keys / "alice.key", relay_clients)
    publish, sync, recovery = start_loopback_upstream(
        serve,
        "curve.enabled=true",
        f"curve.server_secret={keys / 'server.key_secret'}",
        f"curve.authorized_keys={publisher_clients}",
    )
    relay, (relay_publish, relay_sync, relay_recovery), _ = start_loopback_relay(
        processes,
        (publish, sync, recovery),
        f"relay.upstream_server_key={keys / 'server.key'}",
        f"relay.upstream_client_cert={keys / 'relay.key_secret'}",
        "curve.enabled=true",
        f"curve.server_secret={keys / 'relay-server.key_secret'}",
        f"curve.authorized_keys={relay_clients}",
    )
    alice = CurveClientKeys.from_files(keys / "relay-server.key", keys / "alice.key_secret")
    mallory = CurveClientKeys.from_files(keys / "relay-server.key", keys / "mallory.key_secret")
    with Subscriber(
        relay_publish,
        symbols=["SYN0001"],
        sync_endpoint=relay_sync,
        recovery_endpoint=relay_recovery,
        curve=alice,
    ) as subscriber:
        ticks = [subscriber.recv(timeout=10) for _ in range(5)]
        assert all(tick is not None for tick in ticks), processes.log("relay")
        assert subscriber.stats.syncs == 1
    stranger = zmq_context.socket(zmq.SUB)
    stranger.setsockopt(zmq.LINGER, 0)
    stranger.setsockopt(zmq.SUBSCRIBE, b"")
    curve_connect(stranger, relay_publish, mallory)
    assert not stranger.poll(1_500)
    stranger.close()
    relay.send_signal(signal.SIGTERM)
    assert relay.wait(timeout=10) == 0


def test_a_relay_key_file_that_is_missing_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    create_key_pair(tmp_path, "server")
    result = subprocess.run(
        feedsvc(
            "relay",
            "--set",
            f"relay.upstream_server_key={tmp_path / 'server.key'}",
            "--set",
            f"relay.upstream_client_cert={tmp_path / 'absent.key_secret'}",
        ),
        capture_output=True,
        timeout=30,
    )
    lines = result.stderr.decode().strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1
    assert "relay.upstream_client_cert" in lines[0], lines


def test_hostile_http_clients_on_the_relays_metrics_port_do_not_stop_it(
    serve: Callable[..., Any], processes: Processes, zmq_context: zmq.Context
) -> None:
    """Garbage, oversized heads, resets and held-open half requests on /metrics and /healthz:
    refused and counted by the relay's bounded HTTP server, while ticks keep flowing through
    the relay and /healthz still answers."""
    upstream = start_loopback_upstream(serve)
    relay, (relay_publish, _, _), metrics_port = start_loopback_relay(processes, upstream)
    probe = zmq_context.socket(zmq.SUB)
    probe.setsockopt(zmq.LINGER, 0)
    probe.setsockopt(zmq.SUBSCRIBE, b"SYN")
    probe.connect(relay_publish)
    assert probe.poll(20_000), processes.log("relay")
    garbage = os.urandom(20_000).replace(b"\r", b"?")
    held: list[socket.socket] = []
    try:
        for kind in ("garbage", "too_large", "reset", "slow") * 10:
            peer = socket.create_connection(("127.0.0.1", metrics_port), timeout=5)
            if kind == "garbage":
                peer.sendall(b"\x16\x03\x01 not http\r\n\r\n" + garbage)
            elif kind == "too_large":
                peer.sendall(garbage)  # a head that never ends
            elif kind == "reset":
                peer.sendall(b"GET /metrics HTTP/1.1\r\nHost: relay\r\n\r\n")
                peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                peer.sendall(b"GET /metrics HTTP/1.1\r\nHost: relay\r\nX-Slow: a")
                held.append(peer)
                continue
            peer.close()
        status, body = http_get(metrics_port, "/healthz")
        assert status == 200 and orjson.loads(body)["status"] == "ok"
        while probe.poll(0):  # what arrived during the attack
            probe.recv()
        assert probe.poll(5_000), "no tick through the relay after the attack"
        _status, metrics = http_get(metrics_port, "/metrics")
        refused = re.findall(
            rb'feedsvc_http_requests_rejected_total\{reason="(\w+)"\} (\S+)', metrics
        )
        assert sum(float(count) for _reason, count in refused) > 0, metrics
        assert relay.poll() is None
    finally:
        for peer in held:
            peer.close()
        probe.close()
    relay.send_signal(signal.SIGTERM)
    assert relay.wait(timeout=10) == 0
