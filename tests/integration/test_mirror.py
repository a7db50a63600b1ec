"""The Kafka mirror inside `feedsvc serve`, against a real Apache Kafka broker."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
import zmq
from confluent_kafka.admin import AdminClient

from tests.conftest import (
    KafkaBroker,
    ServeProcess,
    free_tcp_port,
    subscribed_probe,
    wait_for_first_message,
)
from tests.integration.kafka_reading import assert_contiguous_from_one, read_topic
from tests.integration.test_replay import describe, run_replay, summary_of

Serve = Callable[..., ServeProcess]


def mirror_settings(endpoint: str, bootstrap: str, topic: str, *extra: str) -> list[str]:
    return [
        f"publisher.endpoints=[{endpoint}]",
        "ingest.endpoint=",
        "sync.endpoint=",
        "recovery.endpoint=",
        "metrics.port=0",
        "publisher.heartbeat_interval_s=0.1",
        "kafka.enabled=true",
        f"kafka.bootstrap={bootstrap}",
        f"kafka.topic={topic}",
        "kafka.partitions=3",
        *extra,
    ]


def topic_partition_count(bootstrap: str, topic: str) -> int:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    return len(admin.list_topics(topic, timeout=10).topics[topic].partitions)


def mirror_process_pids(serve_pid: int) -> list[int]:
    """The serve process's children started by multiprocessing's spawn (from /proc)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            command = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        # The other child, multiprocessing's resource tracker, runs resource_tracker.main().
        if int(fields[1]) == serve_pid and b"spawn_main" in command:
            children.append(int(stat.parent.name))
    return children


def published_and_acknowledged(process: ServeProcess) -> tuple[int, int]:
    """Ticks the stopped service published, and of those Kafka acknowledged (its summary)."""
    summary = process.summary()
    return summary["published"], summary["mirror"]["delivered"]


def test_every_published_tick_is_in_kafka_byte_for_byte(
    serve: Serve, kafka_broker: KafkaBroker, ipc_endpoint: str, zmq_context: zmq.Context
) -> None:
    topic = f"ticks-{uuid.uuid4().hex[:8]}"
    process = serve(
        *mirror_settings(ipc_endpoint, kafka_broker.bootstrap, topic),
        "synthetic.rate=5000",
        "synthetic.symbols=10",
        "kafka.mirror_nice=7",
    )
    subscriber = zmq_context.socket(zmq.SUB)
    subscriber.setsockopt(zmq.RCVHWM, 0)
    subscriber.setsockopt(zmq.SUBSCRIBE, b"")
    subscriber.connect(ipc_endpoint)
    wait_for_first_message(subscriber, process)
    # The mirror process yields the CPU to the hot path; the service itself keeps its priority.
    (mirror_pid,) = mirror_process_pids(process.popen.pid)
    assert os.getpriority(os.PRIO_PROCESS, mirror_pid) == 7
    assert os.getpriority(os.PRIO_PROCESS, process.popen.pid) == os.getpriority(os.PRIO_PROCESS, 0)
    broadcast: list[bytes] = []
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        if subscriber.poll(100):
            broadcast.append(subscriber.recv())
    assert process.terminate() == 0
    while subscriber.poll(500):
        broadcast.append(subscriber.recv())

    published, acknowledged = published_and_acknowledged(process)
    assert acknowledged == published
    stored = read_topic(kafka_broker.bootstrap, topic)
    assert len(stored) == published
    assert_contiguous_from_one([value for _, value in stored])
    assert all(orjson.loads(value)["sym"] == key.decode() for key, value in stored)
    # What subscribers received is in Kafka exactly as broadcast (topic prefix aside).
    stored_frames = {key + b" " + value for key, value in stored}
    ticks_broadcast = [frame for frame in broadcast if not frame.startswith(b"_")]
    assert len(ticks_broadcast) > 5000
    assert all(frame in stored_frames for frame in ticks_broadcast)
    assert topic_partition_count(kafka_broker.bootstrap, topic) == 3


def test_broker_late_then_down_then_back_loses_nothing(
    serve: Serve, ipc_endpoint: str, zmq_context: zmq.Context, tmp_path: Path
) -> None:
    """Kafka unreachable at start-up, then up, then down for a while, then up again: the
    service publishes throughout and every tick ends up in Kafka once."""
    broker = KafkaBroker(tmp_path / "late-broker")
    topic = "ticks"
    process = serve(
        *mirror_settings(ipc_endpoint, broker.bootstrap, topic),
        "synthetic.rate=2000",
        "synthetic.symbols=5",
        "kafka.flush_timeout_s=60",
    )
    try:
        subscriber = subscribed_probe(zmq_context, ipc_endpoint, process, b"SYN0000 ", b"_hb ")
        time.sleep(2.0)
        assert "unreachable" in process.log, process.log
        # Subscribers are served while Kafka is away.
        deadline = time.monotonic() + 5
        got_tick = False
        while not got_tick and time.monotonic() < deadline:
            got_tick = subscriber.poll(100) and subscriber.recv().startswith(b"SYN0000 ")
        assert got_tick
        broker.start()
        deadline = time.monotonic() + 60
        while "reachable; mirroring" not in process.log and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "reachable; mirroring" in process.log, process.log
        broker.stop()
        time.sleep(4.0)
        broker.start()
        time.sleep(2.0)
        assert process.terminate(timeout_s=90) == 0
        published, acknowledged = published_and_acknowledged(process)
        assert acknowledged == published
        stored = read_topic(broker.bootstrap, topic)
        assert len(stored) == published
        assert_contiguous_from_one([value for _, value in stored])
    finally:
        process.close()
        broker.stop()


def test_shutdown_with_kafka_down_reports_what_was_not_delivered(
    serve: Serve, ipc_endpoint: str, zmq_context: zmq.Context
) -> None:
    unreachable = f"127.0.0.1:{free_tcp_port()}"
    process = serve(
        *mirror_settings(ipc_endpoint, unreachable, "ticks"),
        "synthetic.rate=1000",
        "kafka.flush_timeout_s=1",
    )
    subscribed_probe(zmq_context, ipc_endpoint, process, b"")
    time.sleep(1.0)
    started = time.monotonic()
    assert process.terminate(timeout_s=30) == 0
    assert time.monotonic() - started < 15, "the flush timeout was not honoured"
    published, acknowledged = published_and_acknowledged(process)
    assert published > 0 and acknowledged == 0
    assert process.summary()["mirror"]["undelivered"] == published
    # People are told too, not only the summary's readers.
    assert f"{published} NOT delivered" in process.log


def test_bounded_buffer_drops_are_counted_and_never_stall_publishing(
    serve: Serve, ipc_endpoint: str, zmq_context: zmq.Context
) -> None:
    unreachable = f"127.0.0.1:{free_tcp_port()}"
    process = serve(
        *mirror_settings(ipc_endpoint, unreachable, "ticks"),
        "synthetic.rate=20000",
        "synthetic.symbols=5",
        "kafka.max_buffered_ticks=1000",
        "kafka.handoff_batch_ticks=100",
        "kafka.handoff_queue_batches=2",
        # What the service retains for the mirror is the bound that drops (1 MiB: ~0.3 s here).
        "kafka.max_retained_bytes=1048576",
        "kafka.flush_timeout_s=0",
    )
    subscriber = zmq_context.socket(zmq.SUB)
    subscriber.setsockopt(zmq.RCVHWM, 0)
    subscriber.setsockopt(zmq.SUBSCRIBE, b"")
    subscriber.connect(ipc_endpoint)
    wait_for_first_message(subscriber, process)
    received = 0
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        if subscriber.poll(100):
            received += not subscriber.recv().startswith(b"_")
    # The publisher kept its pace although Kafka is gone and the buffers are full.
    assert received > 0.7 * 20_000 * 3.0
    assert process.terminate(timeout_s=30) == 0
    summary = process.summary()
    assert summary["mirror"]["undelivered"] == summary["published"]
    assert summary["mirror"]["dropped"] > 0


def test_replay_verify_audits_what_the_service_mirrored(
    serve: Serve, kafka_broker: KafkaBroker, ipc_endpoint: str, zmq_context: zmq.Context
) -> None:
    topic = f"audit-{uuid.uuid4().hex[:8]}"
    process = serve(
        *mirror_settings(ipc_endpoint, kafka_broker.bootstrap, topic),
        "synthetic.rate=5000",
        "synthetic.symbols=20",
    )
    subscribed_probe(zmq_context, ipc_endpoint, process, b"_hb ")
    time.sleep(2.0)
    assert process.terminate() == 0
    published = process.summary()["published"]

    replay = subprocess.run(
        [
            sys.executable,
            "-m",
            "feedsvc.cli",
            "replay",
            "--bootstrap",
            kafka_broker.bootstrap,
            "--topic",
            topic,
            "--verify",
            "--out",
            "/dev/null",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert replay.returncode == 0, replay.stderr
    summary = orjson.loads(replay.stderr.strip().splitlines()[-1])
    assert (summary["ticks"], summary["gaps"], summary["duplicates"]) == (published, 0, 0)
    assert summary["symbols"] == 20


def test_a_kafka_client_that_is_not_ours_reads_the_wire_format(
    serve: Serve, kafka_broker: KafkaBroker, ipc_endpoint: str, zmq_context: zmq.Context
) -> None:
    kcat = shutil.which("kcat")
    if kcat is None:
        pytest.fail("kcat not found: scripts/test.sh installs it (Debian package kcat)")
    topic = f"kcat-{uuid.uuid4().hex[:8]}"
    process = serve(
        *mirror_settings(ipc_endpoint, kafka_broker.bootstrap, topic), "synthetic.rate=1000"
    )
    subscribed_probe(zmq_context, ipc_endpoint, process, b"_hb ")
    time.sleep(1.0)
    assert process.terminate() == 0
    published = process.summary()["published"]
    # -e: exit at the end of the topic; key and value separated by a tab, one message per line.
    result = subprocess.run(
        [kcat, "-b", kafka_broker.bootstrap, "-t", topic, "-C", "-e", "-q", "-f", "%k\t%s\n"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == published
    for line in lines:
        key, _, value = line.partition(b"\t")
        tick = orjson.loads(value)
        assert tick["sym"] == key.decode()
        assert {"sym", "seq", "epoch", "ts", "bid", "ask", "bid_size", "ask_size"} <= set(tick)


def test_two_shards_mirror_to_one_topic_and_replay_verifies_each_shards_epoch(
    serve: Serve, kafka_broker: KafkaBroker, zmq_context: zmq.Context, tmp_path: Path
) -> None:
    """Shards (publisher.shard, their own symbols) on one host share the topic: each mirrors its
    own ticks under its own transactional.id (the default gains the shard's name, so neither
    fences the other), and `replay --verify` audits both epochs and both shards' checkpoints."""
    topic = f"shards-{uuid.uuid4().hex[:8]}"
    processes = {}
    for shard, prefix in (("east", "EAST"), ("west", "WEST")):
        endpoint = f"ipc://{tmp_path}/{shard}"
        processes[shard] = serve(
            *mirror_settings(endpoint, kafka_broker.bootstrap, topic),
            f"publisher.shard={shard}",
            f"synthetic.prefix={prefix}",
            "synthetic.symbols=10",
            "synthetic.rate=2000",
        )
        subscribed_probe(zmq_context, endpoint, processes[shard], b"_hb ")
    time.sleep(2.0)
    published = {}
    for shard, process in processes.items():
        assert process.terminate() == 0
        published[shard] = process.summary()["published"]
    replay = run_replay(kafka_broker.bootstrap, "--topic", topic, "--verify", "--out", "/dev/null")
    assert replay.returncode == 0, describe(replay)
    summary = summary_of(replay)
    assert (summary["ticks"], summary["gaps"], summary["duplicates"]) == (
        sum(published.values()),
        0,
        0,
    )
    assert summary["symbols"] == 20 and summary["missing_tail"] == 0
    assert summary["open_epochs"] == []
    closed = summary["closed_epochs"]
    assert len(closed) == 2 and len({entry["epoch"] for entry in closed}) == 2
    # One instance per shard: the default transactional.id with the shard's name.
    assert sorted(entry["instance"].rsplit("-", 1)[1] for entry in closed) == ["east", "west"]
