"""CurveZMQ on tcp endpoints, the key allow-list, ipc file modes and secrets kept out of sight.

Every test runs a real `feedsvc serve` (or Service) and real sockets on 127.0.0.1 and ipc.
"""

from __future__ import annotations

import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
import zmq

from feedsvc.client import Subscriber
from feedsvc.config import load_config
from feedsvc.curve import CurveClientKeys
from feedsvc.curve import connect as curve_connect
from feedsvc.server.service import Service
from tests.conftest import (
    ServeProcess,
    free_tcp_port,
    http_get,
    metric_samples,
    subscribed_probe,
    wait_for,
)

Serve = Callable[..., ServeProcess]
# How long a refused client is watched for anything arriving (ticks flow at 500/s meanwhile).
NOTHING_WINDOW_S = 2.0
# A peer without Curve or with the wrong server key is counted as `protocol`, or as `other`
# when it hangs up first (it sees the mismatch too): which one is a race inside libzmq.
NOT_CURVE_TO_THIS_SERVER = ("protocol", "other")


def _feedsvc(*args: str, timeout_s: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "feedsvc.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


@dataclass
class CurveService:
    process: ServeProcess
    keys: Path
    authorized: Path
    ipc: str
    publisher: str
    ingest: str
    sync: str
    metrics_port: int
    recovery: str

    def client_keys(self, name: str, server: str = "server") -> CurveClientKeys:
        return CurveClientKeys.from_files(
            self.keys / f"{server}.key", self.keys / f"{name}.key_secret"
        )

    def rejected(self, socket_name: str, *reasons: str) -> float:
        """Refused handshakes on one socket, summed over the given reasons."""
        samples = metric_samples(http_get(self.metrics_port, "/metrics")[1])
        return sum(
            samples[
                f'feedsvc_handshakes_rejected_total{{reason="{reason}",socket="{socket_name}"}}'
            ]
            for reason in reasons
        )


@pytest.fixture
def curve_service(
    serve: Serve, tmp_path: Path, ipc_dir: Path, zmq_context: zmq.Context
) -> CurveService:
    keys, authorized = tmp_path / "keys", tmp_path / "authorized"
    for name in ("server", "alice", "mallory"):
        result = _feedsvc("keygen", str(keys), name)
        assert result.returncode == 0, result.stderr
    authorized.mkdir()
    shutil.copy(keys / "alice.key", authorized)
    ipc = f"ipc://{ipc_dir}/ticks"
    publisher, ingest, sync, recovery = (f"tcp://127.0.0.1:{free_tcp_port()}" for _ in range(4))
    metrics_port = free_tcp_port()
    process = serve(
        f"publisher.endpoints=[{ipc}, {publisher}]",
        f"ingest.endpoint={ingest}",
        f"sync.endpoint={sync}",
        f"recovery.endpoint={recovery}",
        f"metrics.port={metrics_port}",
        "kafka.enabled=false",
        "publisher.heartbeat_interval_s=0.1",
        "synthetic.symbols=5",
        "synthetic.rate=500",
        "curve.enabled=true",
        f"curve.server_secret={keys / 'server.key_secret'}",
        f"curve.authorized_keys={authorized}",
    )
    # ipc stays plain: a SUB without keys is served there (and tells us the service is up).
    subscribed_probe(zmq_context, ipc, process, b"_hb").close()
    return CurveService(
        process, keys, authorized, ipc, publisher, ingest, sync, metrics_port, recovery
    )


def _sub(context: zmq.Context, endpoint: str, keys: CurveClientKeys | None) -> zmq.Socket:
    socket = context.socket(zmq.SUB)
    socket.setsockopt(zmq.LINGER, 0)
    socket.subscribe(b"")
    curve_connect(socket, endpoint, keys)
    return socket


def _frames_within(socket: zmq.Socket, seconds: float) -> list[bytes]:
    frames, deadline = [], time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0 and len(frames) < 10_000:
        if socket.poll(max(1, int(left * 1000))):
            frames.append(socket.recv())
    return frames


def test_an_authorized_client_syncs_and_receives_over_tcp(curve_service: CurveService) -> None:
    """The whole client path works with Curve: the sync handshake and live ticks, no gaps."""
    with Subscriber(
        curve_service.publisher,
        sync_endpoint=curve_service.sync,
        curve=curve_service.client_keys("alice"),
    ) as subscriber:
        subscriber.sync()
        assert subscriber.synced
        ticks = [subscriber.recv(timeout=5.0) for _ in range(200)]
    assert all(tick is not None for tick in ticks)
    assert {tick["sym"] for tick in ticks} <= {f"SYN{index:04d}" for index in range(5)}
    # The snapshot holds every symbol that ticked before the sync (at most the 5 there are).
    assert subscriber.stats.gaps == 0 and 1 <= subscriber.stats.snapshot_ticks <= 5


def test_unlisted_keys_and_plain_clients_receive_nothing_and_are_counted(
    curve_service: CurveService, zmq_context: zmq.Context
) -> None:
    """Ticks on tcp only reach listed keys; every refusal is counted by reason."""
    refused = {
        "unlisted key": _sub(
            zmq_context, curve_service.publisher, curve_service.client_keys("mallory")
        ),
        "no Curve": _sub(zmq_context, curve_service.publisher, None),
        # A listed key, but the wrong server key: the client cannot prove who it talks to.
        "wrong server key": _sub(
            zmq_context, curve_service.publisher, curve_service.client_keys("alice", "mallory")
        ),
    }
    allowed = _sub(zmq_context, curve_service.publisher, curve_service.client_keys("alice"))
    assert _frames_within(allowed, NOTHING_WINDOW_S), "the listed client got nothing"
    for name, socket in refused.items():
        assert _frames_within(socket, 0.2) == [], f"{name} received ticks"

    # The sync socket refuses an unlisted key too: no snapshot comes back.
    request = zmq_context.socket(zmq.REQ)
    request.setsockopt(zmq.LINGER, 0)
    curve_connect(request, curve_service.sync, curve_service.client_keys("mallory"))
    request.send(orjson.dumps({"op": "snapshot", "client": "m", "marker": "m"}))
    assert not request.poll(int(NOTHING_WINDOW_S * 1000)), "an unlisted key got a snapshot"

    assert curve_service.rejected("publisher", "auth") >= 1
    assert curve_service.rejected("publisher", *NOT_CURVE_TO_THIS_SERVER) >= 2
    assert curve_service.rejected("sync", "auth") >= 1
    assert curve_service.rejected("ingest", "auth") == 0


def test_recovery_over_tcp_answers_listed_keys_only(
    curve_service: CurveService, zmq_context: zmq.Context
) -> None:
    """The recovery socket is behind Curve like the others: a listed key gets its ticks back,
    an unlisted one nothing, counted."""
    with Subscriber(curve_service.ipc, symbols=["SYN0001"]) as subscriber:
        tick = subscriber.recv(timeout=10.0)
    assert tick is not None
    request = {"op": "recover", "symbol": "SYN0001", "epoch": tick["epoch"]}
    request |= {"first": tick["seq"], "last": tick["seq"], "id": "r1"}
    replies = {}
    for name in ("alice", "mallory"):
        dealer = zmq_context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        curve_connect(dealer, curve_service.recovery, curve_service.client_keys(name))
        dealer.send(orjson.dumps(request))
        replies[name] = dealer.recv_multipart() if dealer.poll(3_000) else None
    assert replies["alice"] is not None, "the listed key got no reply"
    assert orjson.loads(replies["alice"][0])["ok"] is True
    assert orjson.loads(replies["alice"][1].split(b" ", 1)[1])["seq"] == tick["seq"]
    assert replies["mallory"] is None, "an unlisted key got a recovery reply"
    assert curve_service.rejected("recovery", "auth") >= 1


def test_ticks_pushed_by_an_unauthorized_feed_never_reach_subscribers(
    curve_service: CurveService, zmq_context: zmq.Context
) -> None:
    """Only listed feed handlers move prices; the refused ones' ticks are never published."""
    watcher = _sub(zmq_context, curve_service.publisher, curve_service.client_keys("alice"))
    wait_for(lambda: watcher.poll(100) and watcher.recv() is not None, 10, "first tick")

    def push(keys: CurveClientKeys | None, symbol: str, count: int) -> zmq.Socket:
        socket = zmq_context.socket(zmq.PUSH)
        socket.setsockopt(zmq.LINGER, 0)
        curve_connect(socket, curve_service.ingest, keys)
        # Queued for the connection: a refused handshake means they are never delivered.
        for _ in range(count):
            tick = {"sym": symbol, "bid": 1.0, "ask": 1.1, "bid_size": 1, "ask_size": 1}
            socket.send(orjson.dumps(tick), zmq.NOBLOCK)
        return socket

    pushers = [
        push(curve_service.client_keys("mallory"), "EVIL1", 50),
        push(None, "EVIL2", 50),
    ]
    wait_for(lambda: curve_service.rejected("ingest", "auth") >= 1, 10, "ingest refusal")
    pushers.append(push(curve_service.client_keys("alice"), "GOOD", 50))
    seen: dict[str, int] = {}
    deadline = time.monotonic() + 10
    while seen.get("GOOD", 0) < 50 and time.monotonic() < deadline:
        if watcher.poll(100):
            symbol = watcher.recv().split(b" ", 1)[0].decode()
            seen[symbol] = seen.get(symbol, 0) + 1
    for frame in _frames_within(watcher, 0.5):
        symbol = frame.split(b" ", 1)[0].decode()
        seen[symbol] = seen.get(symbol, 0) + 1
    assert seen.get("GOOD") == 50, seen
    assert "EVIL1" not in seen and "EVIL2" not in seen, seen
    assert curve_service.rejected("ingest", *NOT_CURVE_TO_THIS_SERVER) >= 1


def test_rejections_are_logged_rate_limited(
    curve_service: CurveService, zmq_context: zmq.Context
) -> None:
    """A client hammering the port costs a log line per interval, not a line per attempt."""
    attempts = [_sub(zmq_context, curve_service.publisher, None) for _ in range(30)]
    wait_for(
        lambda: curve_service.rejected("publisher", *NOT_CURVE_TO_THIS_SERVER) >= 30,
        10,
        "30 refusals counted",
    )
    time.sleep(0.5)
    lines = [line for line in curve_service.process.log.splitlines() if "rejected" in line]
    # curve.reject_log_interval_s is 10 s: at most two reports in this test's few seconds.
    assert 1 <= len(lines) <= 2, lines
    assert "publisher/protocol" in lines[0] or "publisher/other" in lines[0], lines
    for socket in attempts:
        socket.close()


@pytest.mark.parametrize(
    ("client", "server", "why"),
    [
        ("mallory", "server", "not in the service's curve.authorized_keys"),
        (None, None, "disagree on Curve"),
        ("alice", "mallory", "check that the client's server key is the service's public key"),
    ],
    ids=["unlisted key", "no Curve", "wrong server key"],
)
def test_a_refused_subscriber_is_told_why_not_just_silence(
    curve_service: CurveService, client: str | None, server: str | None, why: str
) -> None:
    """Without --sync a refusal is only silence on the wire; the subscriber reads its socket's
    handshake events, so the dead feed comes with the reason."""
    keys = None if client is None else curve_service.client_keys(client, server or "server")
    with Subscriber(curve_service.publisher, heartbeat_timeout_s=0.5, curve=keys) as subscriber:
        deadline = time.monotonic() + 10
        while subscriber.alive and time.monotonic() < deadline:
            assert subscriber.recv(timeout=0.2) is None
        assert not subscriber.alive
        # A reconnect's refusal can reach the client as its reason or as a bare reset that beat
        # the reason (a race on the wire); the reason, once seen, stays. Bounded wait for it.
        while why not in (subscriber.handshake_failure or "") and time.monotonic() < deadline:
            assert subscriber.recv(timeout=0.2) is None
        assert subscriber.handshake_failure is not None
        assert why in subscriber.handshake_failure
        assert curve_service.publisher in subscriber.handshake_failure
        assert subscriber.stats.handshake_failures >= 1
    with Subscriber(
        curve_service.publisher, heartbeat_timeout_s=0.5, curve=curve_service.client_keys("alice")
    ) as listed:
        assert listed.recv(timeout=5.0) is not None
        assert listed.handshake_failure is None and listed.stats.handshake_failures == 0


def test_sighup_reloads_the_authorized_keys(
    curve_service: CurveService, zmq_context: zmq.Context
) -> None:
    """A key added to curve.authorized_keys works after SIGHUP, without a restart."""
    mallory = curve_service.client_keys("mallory")
    before = _sub(zmq_context, curve_service.publisher, mallory)
    assert _frames_within(before, NOTHING_WINDOW_S) == []
    shutil.copy(curve_service.keys / "mallory.key", curve_service.authorized)
    curve_service.process.popen.send_signal(signal.SIGHUP)
    wait_for(
        lambda: "reloaded curve.authorized_keys: 2 public keys" in curve_service.process.log,
        10,
        "the reload logged",
    )
    after = _sub(zmq_context, curve_service.publisher, mallory)
    assert _frames_within(after, NOTHING_WINDOW_S), "the newly listed key got nothing"
    assert curve_service.process.popen.poll() is None


def test_feedsvc_subscribe_takes_curve_keys(curve_service: CurveService) -> None:
    """The command-line client: keys on the command line, ticks out; without them, nothing."""
    keys = curve_service.keys
    result = _feedsvc(
        "subscribe",
        "--endpoint",
        curve_service.publisher,
        "--sync",
        curve_service.sync,
        "--curve-server-key",
        str(keys / "server.key"),
        "--curve-client-cert",
        str(keys / "alice.key_secret"),
        "--count",
        "20",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    ticks = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert len(ticks) == 20 and all(tick["sym"].startswith("SYN") for tick in ticks)

    # Without keys: nothing arrives, and once the feed counts as dead (3 s) stderr says why.
    plain = _feedsvc(
        "subscribe", "--endpoint", curve_service.publisher, "--duration", "4", "--json"
    )
    assert plain.returncode == 0
    assert plain.stdout == ""
    assert "disagree on Curve" in plain.stderr, plain.stderr
    summary = orjson.loads(plain.stderr.splitlines()[-1])
    assert summary["received"] == 0 and summary["handshake_failures"] >= 1

    # An unlisted key with --sync: exit 1, and the message points at the keys.
    refused = _feedsvc(
        "subscribe",
        "--endpoint",
        curve_service.publisher,
        "--sync",
        curve_service.sync,
        "--sync-timeout",
        "0.5",
        "--curve-server-key",
        str(keys / "server.key"),
        "--curve-client-cert",
        str(keys / "mallory.key_secret"),
        "--json",
    )
    assert refused.returncode == 1
    assert "curve.authorized_keys" in refused.stderr and refused.stdout == ""

    half = _feedsvc("subscribe", "--curve-server-key", str(keys / "server.key"), "--duration", "1")
    assert half.returncode == 2
    assert "--curve-server-key and --curve-client-cert go together" in half.stderr


@pytest.mark.parametrize(
    ("settings", "key", "words"),
    [
        (["curve.enabled=true"], "curve.server_secret", "must name"),
        (
            ["curve.server_secret={keys}/server.key", "curve.authorized_keys={keys}"],
            "curve.server_secret",
            "holds no secret key",
        ),
        (
            ["curve.server_secret={keys}/server.key_secret", "curve.authorized_keys={keys}/no"],
            "curve.authorized_keys",
            "cannot load public keys",
        ),
    ],
)
def test_bad_curve_settings_stop_start_up_naming_the_key(
    serve: Serve, tmp_path: Path, settings: list[str], key: str, words: str
) -> None:
    """A half-configured Curve never starts open: exit 2 and one line naming the key."""
    assert _feedsvc("keygen", str(tmp_path), "server").returncode == 0
    filled = [setting.format(keys=tmp_path) for setting in settings]
    process = serve("curve.enabled=true", *filled, "kafka.enabled=false", "metrics.port=0")
    assert process.popen.wait(timeout=30) == 2
    lines = process.log.strip().splitlines()
    assert len(lines) == 1 and f"config error: {key}: " in lines[0] and words in lines[0], lines


def test_keygen_never_overwrites_and_keeps_the_secret_private(tmp_path: Path) -> None:
    first = _feedsvc("keygen", str(tmp_path), "svc")
    assert first.returncode == 0
    secret = tmp_path / "svc.key_secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    original = secret.read_bytes()
    second = _feedsvc("keygen", str(tmp_path), "svc")
    assert second.returncode == 2 and "never overwritten" in second.stderr
    assert secret.read_bytes() == original


@pytest.mark.parametrize(
    ("mode", "file_mode", "folder_mode"), [(None, 0o600, 0o700), (0o660, 0o660, 0o770)]
)
def test_ipc_socket_files_get_the_configured_mode(
    ipc_dir: Path, mode: int | None, file_mode: int, folder_mode: int
) -> None:
    """Who may connect over ipc is decided by the file mode, from the moment it exists."""
    folder = ipc_dir / "new" / "feed"
    settings = [
        f"publisher.endpoints=[ipc://{folder}/ticks]",
        f"ingest.endpoint=ipc://{folder}/ingest",
        f"sync.endpoint=ipc://{folder}/sync",
        "recovery.endpoint=",
        "metrics.port=0",
        "kafka.enabled=false",
    ]
    if mode is not None:
        settings.append(f"ipc.mode=0{mode:o}")
    service = Service(load_config(None, settings))
    service.start()
    try:
        for name in ("ticks", "ingest", "sync"):
            assert stat.S_IMODE((folder / name).stat().st_mode) == file_mode, name
        assert stat.S_IMODE(folder.stat().st_mode) == folder_mode
        assert stat.S_IMODE(folder.parent.stat().st_mode) == folder_mode
    finally:
        service.close()


def test_a_missing_secret_stops_start_up_naming_the_setting(serve: Serve) -> None:
    process = serve(
        "kafka.producer={sasl.password: '${env:FEEDSVC_TEST_UNSET_VARIABLE}'}", "metrics.port=0"
    )
    assert process.popen.wait(timeout=30) == 2
    lines = process.log.strip().splitlines()
    assert len(lines) == 1, lines
    assert "kafka.producer" in lines[0] and "FEEDSVC_TEST_UNSET_VARIABLE is not set" in lines[0]
