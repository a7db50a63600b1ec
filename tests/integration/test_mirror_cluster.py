"""The audit trail on a replicated Kafka (three KRaft nodes, replication 3, min.insync.replicas
2): a partition leader killed under load, then two of the three nodes down at once."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import orjson
import pytest
import zmq
from confluent_kafka.admin import AdminClient

from feedsvc.bench.kafka import KafkaCluster
from tests.conftest import ServeProcess, free_tcp_port, http_get
from tests.integration.kafka_reading import assert_contiguous_from_one, read_topic
from tests.integration.test_mirror_crash import replay_verify, wait_until

Serve = Callable[..., ServeProcess]
RATE = 20_000
OUTAGE_S = 10.0


def health_status(port: int) -> object:
    """/healthz's status ("unavailable" until the loop publishes, then "ok" or "degraded")."""
    _code, body = http_get(port, "/healthz")
    return orjson.loads(body)["status"]


def a_partition_leader(bootstrap: str, topic: str) -> int:
    """A node leading a partition of `topic`, preferably one that is not also the active
    controller: on two loaded cores a node restarted right after losing the controller role
    sometimes misses Kafka's 60 s start-up catch-up and exits (Kafka's limit, not the mirror's)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    controller = admin.describe_cluster(request_timeout=10).result().controller.id
    partitions = admin.list_topics(topic, timeout=10).topics[topic].partitions.values()
    leaders = sorted({partition.leader for partition in partitions})
    return next((leader for leader in leaders if leader != controller), leaders[0])


# Starting the cluster (fixture set-up), two outages of OUTAGE_S and the final flush and read.
@pytest.mark.timeout(480)
def test_every_tick_once_through_a_leader_kill_and_two_nodes_down(
    serve: Serve, kafka_cluster: KafkaCluster, ipc_endpoint: str, zmq_context: zmq.Context
) -> None:
    topic = f"cluster-{uuid.uuid4().hex[:8]}"
    metrics_port = free_tcp_port()
    process = serve(
        f"publisher.endpoints=[{ipc_endpoint}]",
        "ingest.endpoint=",
        "sync.endpoint=",
        "recovery.endpoint=",
        f"metrics.port={metrics_port}",
        "metrics.host=127.0.0.1",
        f"synthetic.rate={RATE}",
        "synthetic.symbols=20",
        "kafka.enabled=true",
        f"kafka.bootstrap={kafka_cluster.bootstrap}",
        f"kafka.topic={topic}",
        "kafka.partitions=3",
        "kafka.replication_factor=3",
        "kafka.min_insync_replicas=2",
        "kafka.flush_timeout_s=120",
    )
    process.wait_until_serving()
    assert wait_until(lambda: health_status(metrics_port) == "ok", 60), process.log
    time.sleep(2.0)
    # A partition leader dies under load and comes back OUTAGE_S later.
    leader = a_partition_leader(kafka_cluster.bootstrap, topic)
    kafka_cluster.kill_node(leader)
    time.sleep(OUTAGE_S)
    kafka_cluster.start_node(leader)
    time.sleep(3.0)
    # Two of three down: fewer than min.insync.replicas, so nothing can be written; the
    # mirror waits (the service retains) and delivers once one node is back.
    down = [node for node in (1, 2, 3) if node != leader]
    for node in down:
        kafka_cluster.kill_node(node)
    time.sleep(OUTAGE_S)
    for node in down:
        kafka_cluster.start_node(node)
    assert wait_until(lambda: health_status(metrics_port) == "ok", 90), process.log
    assert process.terminate(timeout_s=180) == 0
    summary = process.summary()
    mirror = summary["mirror"]
    assert summary["published"] > RATE * 2 * OUTAGE_S * 0.7
    assert mirror["dropped"] == 0
    assert mirror["delivered"] == summary["published"] and mirror["undelivered"] == 0
    stored = read_topic(kafka_cluster.bootstrap, topic, timeout_s=120)
    assert len(stored) == summary["published"]
    assert_contiguous_from_one([value for _, value in stored])
    code, report = replay_verify(kafka_cluster.bootstrap, topic)
    assert code == 0, report
    assert [epoch["epoch"] for epoch in report["closed_epochs"]] == [summary["epoch"]]
