"""Fixtures shared by unit and integration tests."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import hypothesis
import pytest
import zmq

from feedsvc.bench.kafka import PROJECT_ROOT, BrokerError, KafkaBroker, KafkaCluster
from feedsvc.bench.procs import ServeProcess, free_tcp_port
from feedsvc.bench.scrape import metric_samples

__all__ = ["PROJECT_ROOT", "KafkaBroker", "ServeProcess", "free_tcp_port", "metric_samples"]
SCHEMAS = PROJECT_ROOT / "schemas"


@pytest.fixture
def tcp_endpoint() -> str:
    return f"tcp://127.0.0.1:{free_tcp_port()}"


@pytest.fixture
def ipc_dir() -> Iterator[Path]:
    # ipc paths are limited to ~107 bytes and pytest's tmp paths can be long: use a short base.
    path = Path(tempfile.mkdtemp(prefix="fs-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def ipc_endpoint(ipc_dir: Path) -> str:
    return f"ipc://{ipc_dir}/ticks"


@pytest.fixture
def zmq_context() -> Iterator[zmq.Context]:
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., ServeProcess]]:
    """Factory: serve(*--set assignments) starts `feedsvc serve`; every process is killed after."""
    started: list[ServeProcess] = []

    def start(*assignments: str, extra_args: tuple[str, ...] = ()) -> ServeProcess:
        args = [part for assignment in assignments for part in ("--set", assignment)]
        process = ServeProcess([*args, *extra_args], tmp_path / f"serve-{len(started)}.log")
        started.append(process)
        return process

    yield start
    for process in started:
        process.close()


def serve_settings(publish_endpoints: list[str], *extra: str) -> list[str]:
    """--set assignments for a test service: given endpoints, no ingest, no sync socket, no
    Kafka mirror, fast heartbeats."""
    return [
        f"publisher.endpoints=[{', '.join(publish_endpoints)}]",
        "ingest.endpoint=",
        "sync.endpoint=",
        "recovery.endpoint=",
        "metrics.port=0",
        "kafka.enabled=false",
        "publisher.heartbeat_interval_s=0.1",
        *extra,
    ]


def subscribed_probe(
    context: zmq.Context, endpoint: str, process: ServeProcess, *prefixes: bytes
) -> zmq.Socket:
    """A SUB socket subscribed to `prefixes`, returned once its first message arrived: the
    service is up and the subscription has propagated."""
    probe = context.socket(zmq.SUB)
    probe.setsockopt(zmq.LINGER, 0)
    for prefix in prefixes:
        probe.setsockopt(zmq.SUBSCRIBE, prefix)
    probe.connect(endpoint)
    wait_for_first_message(probe, process)
    return probe


def wait_for(
    condition: Callable[[], bool], timeout_s: float, what: str, details: Callable[[], str] = str
) -> None:
    """Poll `condition` until it holds; fails naming `what` (and `details()`) after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout_s} s: {what}\n{details()}")
        time.sleep(0.05)


def wait_for_first_message(
    subscriber: zmq.Socket, process: ServeProcess, timeout_s: float = 20.0
) -> bytes:
    """Block until `subscriber` gets a frame (a heartbeat at least): the service is up and the
    subscription has propagated. Fails with the service's log if it exits or times out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if subscriber.poll(100):
            return subscriber.recv()
        if process.popen.poll() is not None:
            pytest.fail(f"feedsvc serve exited with {process.popen.returncode}:\n{process.log}")
    pytest.fail(f"no message from feedsvc serve within {timeout_s} s:\n{process.log}")


def http_get(port: int, path: str) -> tuple[int, bytes]:
    """(status, body) of GET http://127.0.0.1:port/path, error statuses included."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """One real broker per test session, on free loopback ports, data in a temporary folder; its
    SASL listener has users feedsvc and auditor with fresh random passwords."""
    users = {name: secrets.token_urlsafe(16) for name in ("feedsvc", "auditor")}
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka"), sasl_users=users)
    try:
        broker.start()
    except BrokerError as error:
        # No skipping: a missing broker is a failed run, with the script's reason.
        pytest.fail(f"Kafka broker did not start: {error}", pytrace=False)
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def kafka_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    """One real three-node KRaft cluster per test session (replication factor 3,
    min.insync.replicas 2), on free loopback ports, data in a temporary folder. Tests that kill a
    node start it again before they end."""
    cluster = KafkaCluster(tmp_path_factory.mktemp("kafka-cluster"))
    try:
        cluster.start()
    except BrokerError as error:
        # No skipping: a missing cluster is a failed run, with the script's reason.
        with contextlib.suppress(BrokerError):
            cluster.stop()
        pytest.fail(f"Kafka cluster did not start: {error}", pytrace=False)
    yield cluster
    cluster.stop()


# Hypothesis profiles. "ci" (the default) replays the same examples on every run, so a red CI
# run is red again on a laptop and never flips on its own; "fuzz" (scripts/fuzz.sh) searches at
# random with many more examples, to find what the fixed examples miss. Both run without a
# deadline: on the 2-core machines a busy neighbour would make timings fail, not the code.
HYPOTHESIS_PROFILE_VARIABLE = "FEEDSVC_HYPOTHESIS_PROFILE"
hypothesis.settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[hypothesis.HealthCheck.too_slow],
)
hypothesis.settings.register_profile(
    "fuzz",
    derandomize=False,
    max_examples=5000,
    deadline=None,
    print_blob=True,
    suppress_health_check=[hypothesis.HealthCheck.too_slow],
)
# An unknown name fails loudly (InvalidArgument) instead of silently running "ci".
hypothesis.settings.load_profile(os.environ.get(HYPOTHESIS_PROFILE_VARIABLE) or "ci")


def fuzz_examples(ci_examples: int) -> int:
    """max_examples for a property: `ci_examples` under "ci", far more under "fuzz".

    A property's own max_examples overrides the profile's, so without this the fuzz profile
    would search no further than CI does.
    """
    if hypothesis.settings.get_current_profile_name() == "fuzz":
        return max(ci_examples * 50, 2000)
    return ci_examples
