"""The audit trail across crashes, against a real broker: a killed mirror process is restarted
and every tick is in Kafka exactly once; a killed `feedsvc serve` loses at most what it had not
handed over yet."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson
import zmq

from feedsvc.bench.procs import mirror_process_pid
from tests.conftest import PROJECT_ROOT, KafkaBroker, ServeProcess, free_tcp_port, http_get
from tests.integration.kafka_reading import kcat_read, read_topic

Serve = Callable[..., ServeProcess]
# The bound for a kill -9 of serve at 20k ticks/s: 50 ms of ticks.
KILL_9_LOSS_LIMIT = 1_000


class Recorder:
    """A SUB reading every frame of the feed in a thread (RCVHWM 0: it drops nothing)."""

    def __init__(self, context: zmq.Context, endpoint: str) -> None:
        self.socket = context.socket(zmq.SUB)
        self.socket.setsockopt(zmq.RCVHWM, 0)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.subscribe(b"SYN")
        self.socket.connect(endpoint)
        self.frames: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.socket.poll(100):
                self.frames.append(self.socket.recv())

    def stop(self) -> list[bytes]:
        self._stop.set()
        self._thread.join(timeout=10)
        self.socket.close()
        return self.frames


def settings(endpoint: str, bootstrap: str, topic: str, metrics_port: int, rate: int) -> list[str]:
    return [
        f"publisher.endpoints=[{endpoint}]",
        "ingest.endpoint=",
        "sync.endpoint=",
        "recovery.endpoint=",
        f"metrics.port={metrics_port}",
        "metrics.host=127.0.0.1",
        f"synthetic.rate={rate}",
        "synthetic.symbols=20",
        "kafka.enabled=true",
        f"kafka.bootstrap={bootstrap}",
        f"kafka.topic={topic}",
        "kafka.partitions=3",
        "kafka.flush_timeout_s=60",
    ]


def health(port: int) -> dict[str, object]:
    """The /healthz document: 503 "unavailable" until the loop publishes, then 200 with "ok"
    or "degraded"."""
    _status, body = http_get(port, "/healthz")
    return orjson.loads(body)


def wait_until(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def replay_verify(bootstrap: str, topic: str) -> tuple[int, dict[str, object]]:
    command = [sys.executable, "-m", "feedsvc.cli", "replay", "--bootstrap", bootstrap]
    command += ["--topic", topic, "--verify", "--out", os.devnull]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=PROJECT_ROOT,
    )
    return result.returncode, orjson.loads(result.stderr.strip().splitlines()[-1])


def test_mirror_killed_twice_every_tick_is_in_kafka_exactly_once(
    serve: Serve, kafka_broker: KafkaBroker, ipc_endpoint: str, zmq_context: zmq.Context
) -> None:
    topic = f"crash-{uuid.uuid4().hex[:8]}"
    metrics_port = free_tcp_port()
    process = serve(*settings(ipc_endpoint, kafka_broker.bootstrap, topic, metrics_port, 10_000))
    process.wait_until_serving()
    recorder = Recorder(zmq_context, ipc_endpoint)
    try:
        assert wait_until(lambda: health(metrics_port)["status"] == "ok", 30)
        degraded_seen = []
        for _ in range(2):
            time.sleep(1.5)
            mirror_pid = mirror_process_pid(process.pid)
            assert mirror_pid is not None
            os.kill(mirror_pid, signal.SIGKILL)
            # While it is down, health says so (200: the hot path is fine) and names the mirror.
            assert wait_until(lambda: health(metrics_port)["status"] == "degraded", 5)
            status, body = http_get(metrics_port, "/healthz")
            document = orjson.loads(body)
            assert status == 200
            degraded_seen.append(document["reason"])
            assert document["mirror"]["connected"] is False
            assert wait_until(lambda: health(metrics_port)["status"] == "ok", 30)
        time.sleep(1.0)
        assert process.terminate(timeout_s=90) == 0
    finally:
        received = recorder.stop()
    summary = process.summary()
    mirror = summary["mirror"]
    assert summary["published"] >= 50_000
    assert mirror["restarts"] == 2
    assert mirror["delivered"] == summary["published"] and mirror["undelivered"] == 0
    assert all("mirror" in str(reason) for reason in degraded_seen)
    # A read_committed reader finds each tick once, byte-identical to what was broadcast.
    stored = read_topic(kafka_broker.bootstrap, topic)
    ticks = Counter((key, value) for key, value in stored)
    assert len(ticks) == len(stored) == summary["published"]
    keys = Counter(
        (tick["sym"], tick["epoch"], tick["seq"])
        for tick in (orjson.loads(value) for _, value in stored)
    )
    assert max(keys.values()) == 1
    broadcast = {frame for frame in received}
    assert len(broadcast) > 40_000
    assert broadcast <= {key + b" " + value for key, value in stored}
    # So does a client that is not ours.
    assert sorted(kcat_read(kafka_broker.bootstrap, topic)) == sorted(v for _, v in stored)
    code, report = replay_verify(kafka_broker.bootstrap, topic)
    assert code == 0, report
    assert (report["gaps"], report["duplicates"], report["missing_tail"]) == (0, 0, 0)
    # The clean shutdown closed the epoch: every tick it published is accounted for.
    assert report["open_epochs"] == []
    assert [epoch["epoch"] for epoch in report["closed_epochs"]] == [summary["epoch"]]


def test_kill_9_of_serve_loses_at_most_50_ms_of_ticks(
    kafka_broker: KafkaBroker, ipc_endpoint: str, zmq_context: zmq.Context, tmp_path: Path
) -> None:
    topic = f"kill9-{uuid.uuid4().hex[:8]}"
    args = [
        part
        for setting in settings(ipc_endpoint, kafka_broker.bootstrap, topic, 0, 20_000)
        for part in ("--set", setting)
    ]
    process = ServeProcess(args, tmp_path / "serve.log")
    try:
        process.wait_until_serving()
        recorder = Recorder(zmq_context, ipc_endpoint)
        assert wait_until(lambda: "mirroring in transactions" in process.log, 30), process.log
        time.sleep(3.0)
        mirror_pid = mirror_process_pid(process.pid)
        assert mirror_pid is not None
        os.kill(process.pid, signal.SIGKILL)
        process.popen.wait(timeout=10)
        # The mirror notices, commits what it was handed and exits on its own.
        assert wait_until(lambda: not Path(f"/proc/{mirror_pid}").exists(), 30)
        received = recorder.stop()
    finally:
        process.close()
    stored = {value for _, value in read_topic(kafka_broker.bootstrap, topic)}
    broadcast = [frame[frame.index(b" ") + 1 :] for frame in received]
    assert len(broadcast) > 40_000
    lost = [payload for payload in broadcast if payload not in stored]
    assert len(lost) <= KILL_9_LOSS_LIMIT, f"{len(lost)} broadcast ticks are not in Kafka"
    # What is in Kafka has no gap: the lost ones are only the tail of each symbol.
    code, report = replay_verify(kafka_broker.bootstrap, topic)
    assert code == 0, report
    assert (report["gaps"], report["duplicates"]) == (0, 0), report
    # No close record: the epoch is open, and complete through its last checkpoint.
    assert report["closed_epochs"] == []
    (epoch,) = report["open_epochs"]
    assert epoch["complete_through_checkpoint"] is True
