"""`feedsvc replay --verify` with the mirror's checkpoint records, against a real Kafka broker.

Ticks and checkpoints are produced as the mirror does: one transactional producer, each
transaction holding ticks (key = symbol, the wire payload) and one checkpoint record in the
companion topic (key = the instance, on `checkpoint_partition`).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Sequence

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from feedsvc.protocol.checkpoints import (
    TYPE_CHECKPOINT,
    TYPE_CLOSE,
    Checkpoint,
    checkpoint_partition,
    checkpoint_topic_for,
)
from tests.conftest import KafkaBroker
from tests.integration.test_replay import (
    MINUTE_NS,
    PARTITIONS,
    Produced,
    describe,
    hours_ago_ns,
    make_tick,
    run_replay,
    summary_of,
)

INSTANCE = "feedsvc-test-host"


@pytest.fixture(scope="module")
def admin(kafka_broker: KafkaBroker) -> AdminClient:
    return AdminClient({"bootstrap.servers": kafka_broker.bootstrap})


@pytest.fixture
def topics(admin: AdminClient) -> Iterator[tuple[str, str]]:
    """A fresh tick topic and its checkpoint topic, deleted after the test."""
    topic = f"replay-cp-test-{uuid.uuid4().hex[:12]}"
    names = [topic, checkpoint_topic_for(topic)]
    created = admin.create_topics(
        [NewTopic(name, num_partitions=PARTITIONS, replication_factor=1) for name in names]
    )
    for future in created.values():
        future.result(timeout=30)
    yield topic, names[1]
    for future in admin.delete_topics(names).values():
        future.result(timeout=30)


class MirrorLikeProducer:
    """Transactions of ticks plus one checkpoint, as the mirror writes them."""

    def __init__(self, bootstrap: str, topic: str, checkpoint_topic: str) -> None:
        self.topic, self.checkpoint_topic = topic, checkpoint_topic
        self.producer = Producer(
            {"bootstrap.servers": bootstrap, "transactional.id": INSTANCE, "linger.ms": 5}
        )
        self.producer.init_transactions(30)

    def transaction(
        self, ticks: Sequence[Produced], checkpoint: Checkpoint, commit: bool = True
    ) -> None:
        self.producer.begin_transaction()
        for tick in ticks:
            self.producer.produce(
                self.topic, tick.payload, tick.sym.encode(), timestamp=tick.timestamp_ms
            )
        self.producer.produce(
            self.checkpoint_topic,
            checkpoint.encode(),
            checkpoint.instance.encode(),
            partition=checkpoint_partition(checkpoint.instance, PARTITIONS),
        )
        if commit:
            self.producer.commit_transaction(30)
        else:
            self.producer.abort_transaction(30)


def checkpoint(
    epoch: int, last_seq: dict[str, int], ticks: int, record_type: str = TYPE_CHECKPOINT
) -> Checkpoint:
    return Checkpoint(
        type=record_type,
        instance=INSTANCE,
        epoch=epoch,
        ts=epoch + ticks * MINUTE_NS,
        batch=ticks,
        ticks=ticks,
        last_seq=last_seq,
    )


def symbol_ticks(sym: str, epoch: int, seqs: range) -> list[Produced]:
    return [make_tick(sym, seq, epoch, epoch + seq * MINUTE_NS) for seq in seqs]


def test_verify_names_the_tail_and_the_symbol_a_checkpoint_claims_but_kafka_lacks(
    kafka_broker: KafkaBroker, topics: tuple[str, str]
) -> None:
    topic, checkpoint_topic = topics
    epoch = hours_ago_ns(6)
    mirror = MirrorLikeProducer(kafka_broker.bootstrap, topic, checkpoint_topic)
    # AAA 9-10 and all 3 ticks of CCC were published but never reached Kafka.
    ticks = symbol_ticks("AAA", epoch, range(1, 9)) + symbol_ticks("BBB", epoch, range(1, 6))
    mirror.transaction(ticks, checkpoint(epoch, {"AAA": 10, "BBB": 5, "CCC": 3}, ticks=18))

    result = run_replay(kafka_broker.bootstrap, "--topic", topic, "--verify", "--out", os.devnull)

    assert result.returncode == 1, describe(result)
    summary = summary_of(result)
    assert (summary["checkpoints"], summary["checkpoint_topic"]) == (1, checkpoint_topic)
    assert (summary["missing_tail"], summary["missing"], summary["gaps"]) == (5, 5, 2)
    assert summary["closed_epochs"] == []
    (open_epoch,) = summary["open_epochs"]
    assert (open_epoch["epoch"], open_epoch["instance"]) == (epoch, INSTANCE)
    assert (open_epoch["complete_through_checkpoint"], open_epoch["missing"]) == (False, 5)
    stderr = result.stderr.decode()
    (aaa_line,) = [line for line in stderr.splitlines() if line.startswith("AAA")]
    assert "gaps 9-10 (2 missing, 2 of them after the last tick seen" in aaa_line
    (ccc_line,) = [line for line in stderr.splitlines() if line.startswith("CCC")]
    assert "no ticks" in ccc_line and "1-3" in ccc_line
    assert "NOT complete through its last checkpoint" in stderr


def test_verify_passes_and_reports_the_epoch_closed_when_every_claimed_tick_is_there(
    kafka_broker: KafkaBroker, topics: tuple[str, str]
) -> None:
    topic, checkpoint_topic = topics
    epoch = hours_ago_ns(6)
    mirror = MirrorLikeProducer(kafka_broker.bootstrap, topic, checkpoint_topic)
    first = symbol_ticks("AAA", epoch, range(1, 6)) + symbol_ticks("BBB", epoch, range(1, 4))
    mirror.transaction(first, checkpoint(epoch, {"AAA": 5, "BBB": 3}, ticks=8))
    # An aborted transaction (a crashed mirror): a read_committed audit sees none of it, neither
    # the repeated ticks nor the checkpoint's claims.
    repeated = symbol_ticks("AAA", epoch, range(4, 8))
    mirror.transaction(repeated, checkpoint(epoch, {"AAA": 99}, ticks=12), commit=False)
    second = symbol_ticks("AAA", epoch, range(6, 9))
    mirror.transaction(second, checkpoint(epoch, {"AAA": 8}, ticks=11))
    mirror.transaction([], checkpoint(epoch, {"AAA": 8, "BBB": 3}, 11, record_type=TYPE_CLOSE))

    result = run_replay(kafka_broker.bootstrap, "--topic", topic, "--verify", "--out", os.devnull)

    assert result.returncode == 0, describe(result)
    summary = summary_of(result)
    assert (summary["ticks"], summary["duplicates"], summary["gaps"]) == (11, 0, 0)
    assert (summary["checkpoints"], summary["missing_tail"]) == (3, 0)
    assert summary["open_epochs"] == []
    (closed_epoch,) = summary["closed_epochs"]
    assert closed_epoch["epoch"] == epoch
    assert closed_epoch["complete_through_checkpoint"] is True
    assert "closed at" in result.stderr.decode()


def test_verify_without_a_checkpoint_topic_says_so_and_audits_as_before(
    kafka_broker: KafkaBroker, topics: tuple[str, str]
) -> None:
    topic, _ = topics
    epoch = hours_ago_ns(6)
    mirror = MirrorLikeProducer(kafka_broker.bootstrap, topic, checkpoint_topic_for(topic))
    mirror.transaction(symbol_ticks("AAA", epoch, range(1, 6)), checkpoint(epoch, {"AAA": 9}, 5))

    result = run_replay(
        kafka_broker.bootstrap,
        "--topic",
        topic,
        "--verify",
        "--out",
        os.devnull,
        "--checkpoint-topic",
        f"{topic}.absent",
    )

    assert result.returncode == 0, describe(result)
    summary = summary_of(result)
    assert (summary["checkpoints"], summary["missing_tail"], summary["open_epochs"]) == (
        None,
        0,
        [],
    )
    assert "no checkpoint topic" in result.stderr.decode()
