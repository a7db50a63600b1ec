"""scripts/kafka.sh's cluster mode (KAFKA_NODES=3) against real JVMs: three KRaft nodes that
each answer, a topic with replication 3 and min.insync.replicas 2 that keeps every acknowledged
write while a node is SIGKILLed and restarted, transactions on the replicated internal topics,
and `status` per node. The session cluster is conftest's `kafka_cluster`; a test that kills a
node starts it again before it ends.

The last tests run the script without a cluster: its refusals are one line and a non-zero exit.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    ElectionType,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, PartitionMetadata

from feedsvc.bench.kafka import KAFKA_SCRIPT, KafkaCluster
from tests.conftest import wait_for

PARTITIONS = 3
NODES = (1, 2, 3)
# A steady trickle, so that writes are in flight at every moment of the crash and restart.
PRODUCE_RATE_PER_S = 400
METADATA_TIMEOUT_S = 15.0
# The dead node is fenced after broker.session.timeout.ms (6 s in cluster mode), then leaves
# the ISR; a restarted node catches up and rejoins within seconds.
ISR_CHANGE_TIMEOUT_S = 40.0
# What ListOffsets answers for a moment after a leader change: the metadata still names the old
# leader, or the new one has not yet learnt the high watermark from its followers.
LEADER_CHANGING = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.OFFSET_NOT_AVAILABLE,
    }
)


def _admin(cluster: KafkaCluster) -> AdminClient:
    return AdminClient({"bootstrap.servers": cluster.bootstrap})


def _partitions(admin: AdminClient, topic: str) -> dict[int, PartitionMetadata]:
    return admin.list_topics(topic, timeout=METADATA_TIMEOUT_S).topics[topic].partitions


def _create_replicated_topic(admin: AdminClient) -> str:
    topic = f"cluster-{uuid.uuid4().hex[:12]}"
    new_topic = NewTopic(
        topic, PARTITIONS, replication_factor=3, config={"min.insync.replicas": "2"}
    )
    admin.create_topics([new_topic])[topic].result(timeout=30)

    def ready() -> bool:
        partitions = _partitions(admin, topic)
        return len(partitions) == PARTITIONS and all(
            len(p.isrs) == 3 and p.leader in NODES for p in partitions.values()
        )

    wait_for(
        ready,
        METADATA_TIMEOUT_S,
        f"every partition of {topic} led, with 3 replicas in sync",
    )
    return topic


def _end_offset(consumer: Consumer, partition: TopicPartition, timeout_s: float = 15.0) -> int:
    """The partition's high watermark, asked of its leader; the answers of a leader change in
    progress (LEADER_CHANGING) are retried, within timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return consumer.get_watermark_offsets(partition, timeout=10)[1]
        except KafkaException as error:
            if error.args[0].code() not in LEADER_CHANGING or time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def _read_committed(cluster: KafkaCluster, topic: str, timeout_s: float = 30.0) -> list[Message]:
    """Every message of `topic` up to its current end, as a read_committed reader sees them."""
    consumer = Consumer(
        {
            "bootstrap.servers": cluster.bootstrap,
            "group.id": f"test-{uuid.uuid4().hex[:8]}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    try:
        ends = {p: _end_offset(consumer, TopicPartition(topic, p)) for p in range(PARTITIONS)}
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
        messages: list[Message] = []
        # The high watermark counts transaction markers too: stop once every partition's
        # position (the offset after the last record or marker read) reached its end.
        done: set[int] = {p for p, end in ends.items() if end == 0}
        deadline = time.monotonic() + timeout_s
        while len(done) < PARTITIONS:
            if time.monotonic() > deadline:
                pytest.fail(
                    f"read {len(messages)} messages of {topic}, ends {ends}, not within "
                    f"{timeout_s} s"
                )
            for message in consumer.consume(500, timeout=0.5):
                error = message.error()
                if error is not None and error.code() != KafkaError._PARTITION_EOF:
                    pytest.fail(f"consumer error: {error}")
                if error is None:
                    messages.append(message)
            for position in consumer.position(
                [TopicPartition(topic, p) for p in range(PARTITIONS) if p not in done]
            ):
                if position.offset >= ends[position.partition]:
                    done.add(position.partition)
        return messages
    finally:
        consumer.close()


class SteadyProducer(threading.Thread):
    """Produces numbered messages (key = value = the number, partition = number % PARTITIONS)
    at PRODUCE_RATE_PER_S with an idempotent acks=all producer until stopped; records which
    numbers were acknowledged and every delivery error."""

    def __init__(self, cluster: KafkaCluster, topic: str) -> None:
        super().__init__(daemon=True)
        self.topic = topic
        self.producer = Producer(
            {
                "bootstrap.servers": cluster.bootstrap,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                # Retried until acknowledged, well beyond the fencing of a dead node.
                "message.timeout.ms": 60_000,
            }
        )
        self.sent = 0
        self.acked: list[int] = []
        self.errors: list[str] = []
        self.stopping = threading.Event()

    def _delivered(self, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            self.errors.append(str(error))
        else:
            self.acked.append(int(message.key()))

    def run(self) -> None:
        next_send = time.monotonic()
        while not self.stopping.is_set():
            number = self.sent
            self.producer.produce(
                self.topic,
                key=str(number),
                value=str(number),
                partition=number % PARTITIONS,
                on_delivery=self._delivered,
            )
            self.sent += 1
            self.producer.poll(0)
            next_send += 1 / PRODUCE_RATE_PER_S
            time.sleep(max(0.0, next_send - time.monotonic()))

    def finish(self, timeout_s: float = 60.0) -> None:
        """Stop producing and wait until every message sent has its delivery report."""
        self.stopping.set()
        self.join(timeout=10)
        left = self.producer.flush(timeout_s)
        assert left == 0, f"{left} messages still unacknowledged after {timeout_s} s"


@pytest.fixture
def restart_killed_nodes(kafka_cluster: KafkaCluster) -> Iterator[None]:
    """Whatever a test kills, the next test finds all three nodes running."""
    yield
    for node in NODES:
        if kafka_cluster.node_pid(node) is None:
            kafka_cluster.start_node(node)


def test_every_node_answers_for_one_cluster(kafka_cluster: KafkaCluster) -> None:
    metadata = _admin(kafka_cluster).list_topics(timeout=METADATA_TIMEOUT_S)
    brokers = {broker.id: f"{broker.host}:{broker.port}" for broker in metadata.brokers.values()}
    assert brokers == {node: kafka_cluster.node_bootstrap(node) for node in NODES}

    cluster_id = (kafka_cluster.data_dir / "cluster.id").read_text().strip()
    for node in NODES:
        # One node alone as bootstrap: nothing is learnt unless it answers, and it knows the
        # other two (later requests may go to any of them, so which one replied is not checked).
        alone = AdminClient({"bootstrap.servers": kafka_cluster.node_bootstrap(node)})
        node_metadata = alone.list_topics(timeout=METADATA_TIMEOUT_S)
        assert set(node_metadata.brokers) == set(NODES)
        assert node_metadata.cluster_id == cluster_id


def test_status_reports_each_node(kafka_cluster: KafkaCluster) -> None:
    lines = kafka_cluster.status().splitlines()
    for node in NODES:
        pid = kafka_cluster.node_pid(node)
        assert pid is not None
        assert (
            f"kafka: node {node} running at {kafka_cluster.node_bootstrap(node)} (pid {pid}, "
            f"data {kafka_cluster.data_dir / f'node-{node}'})"
        ) in lines
    assert lines[-1] == f"kafka: 3 of 3 nodes running (data {kafka_cluster.data_dir})"


@pytest.mark.usefixtures("restart_killed_nodes")
def test_acknowledged_writes_survive_a_node_crash_and_restart(
    kafka_cluster: KafkaCluster,
) -> None:
    admin = _admin(kafka_cluster)
    topic = _create_replicated_topic(admin)
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    topic_config = admin.describe_configs([resource])[resource].result(timeout=30)
    assert topic_config["min.insync.replicas"].value == "2"
    assert all(len(p.replicas) == 3 for p in _partitions(admin, topic).values())

    # The preferred leader of partition 0: killed, restarted, then made leader again, so the
    # final read of partition 0 is served from the restarted node's own log.
    victim = _partitions(admin, topic)[0].replicas[0]
    producer = SteadyProducer(kafka_cluster, topic)
    producer.start()
    try:
        wait_for(lambda: len(producer.acked) >= 400, 20, "acknowledged writes before the crash")
        kafka_cluster.kill_node(victim)
        assert kafka_cluster.node_pid(victim) is None
        assert "2 of 3 nodes running" in kafka_cluster.status()

        wait_for(
            lambda: all(victim not in p.isrs for p in _partitions(admin, topic).values()),
            ISR_CHANGE_TIMEOUT_S,
            f"node {victim} dropped from the ISR of every partition",
            lambda: str({n: p.isrs for n, p in _partitions(admin, topic).items()}),
        )
        # Two replicas in sync are enough for acks=all with min.insync.replicas 2: at least 800
        # of the messages sent once the dead node was out of the ISR are acknowledged.
        sent_without_victim = producer.sent
        wait_for(
            lambda: len(producer.acked) >= sent_without_victim + 800,
            20,
            f"writes acknowledged with node {victim} down",
            lambda: f"acked {len(producer.acked)}, errors {producer.errors[:3]}",
        )

        kafka_cluster.start_node(victim)
        wait_for(
            lambda: all(victim in p.isrs for p in _partitions(admin, topic).values()),
            ISR_CHANGE_TIMEOUT_S,
            f"restarted node {victim} back in the ISR of every partition",
            lambda: str({n: p.isrs for n, p in _partitions(admin, topic).items()}),
        )
        sent_at_rejoin = producer.sent
        wait_for(
            lambda: len(producer.acked) >= sent_at_rejoin + 400,
            20,
            "writes acknowledged after the restart",
        )
    finally:
        producer.finish()

    assert producer.errors == []
    assert sorted(producer.acked) == list(range(producer.sent))

    admin.elect_leaders(ElectionType.PREFERRED, [TopicPartition(topic, 0)]).result(timeout=30)
    wait_for(
        lambda: _partitions(admin, topic)[0].leader == victim,
        METADATA_TIMEOUT_S,
        f"restarted node {victim} leading partition 0 again",
    )
    messages = _read_committed(kafka_cluster, topic)
    counts = Counter(int(message.key()) for message in messages)
    assert sorted(counts) == list(range(producer.sent)), "acknowledged messages missing"
    assert max(counts.values()) == 1, "messages read more than once"
    assert all(message.value() == message.key() for message in messages)
    assert all(int(message.key()) % PARTITIONS == message.partition() for message in messages)


def test_transactions_commit_on_the_replicated_state_log(kafka_cluster: KafkaCluster) -> None:
    """The transaction state log (3 replicas, 2 in sync) works: committed messages are visible
    to a read_committed reader, aborted ones are not."""
    topic = _create_replicated_topic(_admin(kafka_cluster))
    producer = Producer(
        {
            "bootstrap.servers": kafka_cluster.bootstrap,
            "transactional.id": f"test-{uuid.uuid4().hex[:8]}",
        }
    )
    producer.init_transactions(30)
    for outcome in ("committed", "aborted", "committed-again"):
        producer.begin_transaction()
        for number in range(100):
            producer.produce(topic, key=f"{outcome}-{number}", partition=number % PARTITIONS)
        if outcome == "aborted":
            producer.abort_transaction(30)
        else:
            producer.commit_transaction(30)
    keys = Counter(message.key().decode() for message in _read_committed(kafka_cluster, topic))
    expected = {
        f"{outcome}-{n}" for outcome in ("committed", "committed-again") for n in range(100)
    }
    assert set(keys) == expected
    assert max(keys.values()) == 1


def _script(tmp_path: Path, *args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KAFKA_DATA_DIR": str(tmp_path / "kafka"), **settings}
    return subprocess.run(
        [str(KAFKA_SCRIPT), *args], env=env, capture_output=True, text=True, timeout=30
    )


@pytest.mark.parametrize(
    ("args", "settings", "says"),
    [
        (("start",), {"KAFKA_NODES": "2"}, "KAFKA_NODES must be 1 (a single broker) or 3"),
        (("kill-node", "4"), {"KAFKA_NODES": "3"}, "kill-node needs one node number from 1 to 3"),
        (("kill-node", "0"), {"KAFKA_NODES": "3"}, "kill-node needs one node number from 1 to 3"),
        (("kill-node",), {"KAFKA_NODES": "3"}, "kill-node needs one node number from 1 to 3"),
        (("start-node", "x"), {"KAFKA_NODES": "3"}, "start-node needs one node number from 1"),
        (
            ("start",),
            {"KAFKA_NODES": "3", "KAFKA_PORT": "40000", "KAFKA_CONTROLLER_PORT": "40002"},
            "overlap",
        ),
    ],
)
def test_refusals_are_one_clear_line(
    tmp_path: Path, args: tuple[str, ...], settings: dict[str, str], says: str
) -> None:
    result = _script(tmp_path, *args, **settings)
    assert result.returncode != 0
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("kafka: ") and says in result.stderr
    assert not (tmp_path / "kafka").exists(), "a refused command must not touch the data dir"


def test_kill_node_of_a_node_that_is_not_running_fails(tmp_path: Path) -> None:
    result = _script(tmp_path, "kill-node", "2", KAFKA_NODES="3")
    assert result.returncode == 1
    assert result.stderr.strip().endswith("nothing to kill")
