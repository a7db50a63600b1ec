"""Reading what the mirror wrote, as an auditor would: read_committed, to the end."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections import defaultdict

import orjson
import pytest
from confluent_kafka import Consumer, KafkaError, TopicPartition


def read_topic(bootstrap: str, topic: str, timeout_s: float = 60.0) -> list[tuple[bytes, bytes]]:
    """Every committed (key, value) in the topic, up to the high watermarks seen now (read as a
    read_committed reader: transaction markers take offsets but are not messages)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"t-{uuid.uuid4()}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in partitions
        }
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        unfinished = {p for p, end in ends.items() if end > 0}
        messages: list[tuple[bytes, bytes]] = []
        deadline = time.monotonic() + timeout_s
        while unfinished and time.monotonic() < deadline:
            for message in consumer.consume(10_000, timeout=0.5):
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        unfinished.discard(message.partition())
                    continue
                if message.offset() < ends[message.partition()]:
                    messages.append((message.key(), message.value()))
                if message.offset() >= ends[message.partition()] - 1:
                    unfinished.discard(message.partition())
        assert not unfinished, f"partitions {sorted(unfinished)} not read to their end"
        return messages
    finally:
        consumer.close()


def assert_contiguous_from_one(payloads: list[bytes]) -> dict[str, int]:
    """Per symbol the seqs are exactly 1..N (nothing lost, nothing twice); returns N per symbol."""
    seqs: dict[str, list[int]] = defaultdict(list)
    for payload in payloads:
        tick = orjson.loads(payload)
        seqs[tick["sym"]].append(tick["seq"])
    for symbol, seen in seqs.items():
        assert sorted(seen) == list(range(1, len(seen) + 1)), f"{symbol}: gaps or duplicates"
    return {symbol: len(seen) for symbol, seen in seqs.items()}


def kcat_read(bootstrap: str, topic: str) -> list[bytes]:
    """Every committed value of `topic`, read by kcat (a Kafka client that is not ours)."""
    kcat = shutil.which("kcat")
    if kcat is None:
        pytest.fail("kcat not found: scripts/test.sh installs it (Debian package kcat)")
    command = [kcat, "-b", bootstrap, "-t", topic, "-C", "-e", "-q"]
    command += ["-X", "isolation.level=read_committed", "-f", "%s\n"]
    result = subprocess.run(
        command,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()
