"""Kafka behind SASL: the mirror logs in with a password from the environment, an auditor
replays with its own from a file, and no password shows up where operators or scrapers look.

The session broker (conftest.KafkaBroker) has a real SASL_PLAINTEXT listener with PLAIN users
`feedsvc` and `auditor`; every test runs real `feedsvc serve` and `feedsvc replay` processes.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
import zmq

from tests.conftest import (
    KafkaBroker,
    ServeProcess,
    free_tcp_port,
    http_get,
    metric_samples,
    subscribed_probe,
    wait_for,
)

Serve = Callable[..., ServeProcess]
PASSWORD_VARIABLE = "FEEDSVC_TEST_KAFKA_PASSWORD"
SASL_PRODUCER = (
    "kafka.producer={security.protocol: SASL_PLAINTEXT, sasl.mechanism: PLAIN, "
    f'sasl.username: feedsvc, sasl.password: "${{env:{PASSWORD_VARIABLE}}}"}}'
)


def _replay(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "feedsvc.cli", "replay", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _serve_mirroring(
    serve: Serve,
    zmq_context: zmq.Context,
    broker: KafkaBroker,
    ipc_endpoint: str,
    topic: str,
    *settings: str,
) -> tuple[ServeProcess, int]:
    """A service at DEBUG mirroring to the SASL listener; returns it once it publishes."""
    metrics_port = free_tcp_port()
    process = serve(
        f"publisher.endpoints=[{ipc_endpoint}]",
        "ingest.endpoint=",
        "sync.endpoint=",
        "recovery.endpoint=",
        f"metrics.port={metrics_port}",
        "log.level=DEBUG",
        "synthetic.symbols=3",
        "synthetic.rate=500",
        f"kafka.bootstrap={broker.sasl_bootstrap}",
        f"kafka.topic={topic}",
        SASL_PRODUCER,
        *settings,
    )
    subscribed_probe(zmq_context, ipc_endpoint, process, b"_hb").close()
    return process, metrics_port


def _mirror_metrics(metrics_port: int) -> dict[str, float]:
    return metric_samples(http_get(metrics_port, "/metrics")[1])


def test_mirror_logs_in_with_sasl_and_an_auditor_replays_every_tick(
    serve: Serve,
    kafka_broker: KafkaBroker,
    ipc_endpoint: str,
    zmq_context: zmq.Context,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The password from the environment gets the mirror in (ticks are acknowledged); it never
    reaches the log at DEBUG, /metrics or /healthz; `replay --config` reads every tick back
    over SASL with the auditor's password from a file."""
    producer_password = kafka_broker.sasl_passwords["feedsvc"]
    monkeypatch.setenv(PASSWORD_VARIABLE, producer_password)
    topic = f"sasl-{uuid.uuid4().hex[:8]}"
    process, metrics_port = _serve_mirroring(serve, zmq_context, kafka_broker, ipc_endpoint, topic)
    wait_for(
        lambda: _mirror_metrics(metrics_port)["feedsvc_mirror_delivered_total"] >= 500,
        60,
        "500 ticks acknowledged over SASL",
    )
    _, metrics = http_get(metrics_port, "/metrics")
    _, health = http_get(metrics_port, "/healthz")
    assert process.terminate() == 0
    assert b"feedsvc_mirror_connected 1.0" in metrics
    assert producer_password not in process.log
    assert producer_password.encode() not in metrics + health
    published = metric_samples(metrics)["feedsvc_ticks_published_total"]

    auditor_password = kafka_broker.sasl_passwords["auditor"]
    password_file = tmp_path / "auditor.password"
    password_file.write_text(auditor_password + "\n")
    # The service's own config shape; linger.ms is producer tuning and stays out of replay.
    config = tmp_path / "audit.yaml"
    config.write_text(
        "kafka:\n"
        f"  bootstrap: {kafka_broker.sasl_bootstrap}\n"
        f"  topic: {topic}\n"
        "  producer:\n"
        "    linger.ms: 50\n"
        "    security.protocol: SASL_PLAINTEXT\n"
        "    sasl.mechanism: PLAIN\n"
        "    sasl.username: auditor\n"
        f"    sasl.password: ${{file:{password_file}}}\n"
    )
    out = tmp_path / "ticks.jsonl"
    result = _replay("--config", str(config), "--verify", "--out", str(out))
    assert result.returncode == 0, result.stderr
    summary = orjson.loads(result.stderr.strip().splitlines()[-1])
    # Everything published before the last scrape, and the rest flushed at shutdown, no gaps.
    assert summary["ok"] and summary["gaps"] == 0 and summary["ticks"] >= published
    assert len(out.read_bytes().splitlines()) == summary["ticks"]
    assert auditor_password not in result.stderr


def test_a_refused_sasl_login_is_named_and_no_password_is_shown(
    serve: Serve,
    kafka_broker: KafkaBroker,
    ipc_endpoint: str,
    zmq_context: zmq.Context,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A wrong password: the mirror says SASL refused it and keeps serving; replay exits 2
    naming the login; neither prints the password, even at DEBUG."""
    wrong_password = "wrong-" + kafka_broker.sasl_passwords["feedsvc"]
    monkeypatch.setenv(PASSWORD_VARIABLE, wrong_password)
    topic = f"sasl-refused-{uuid.uuid4().hex[:8]}"
    process, metrics_port = _serve_mirroring(
        serve, zmq_context, kafka_broker, ipc_endpoint, topic, "kafka.flush_timeout_s=1"
    )
    wait_for(lambda: "SASL authentication error" in process.log, 30, "the refusal logged")
    _, metrics = http_get(metrics_port, "/metrics")
    _, health = http_get(metrics_port, "/healthz")
    assert process.popen.poll() is None, "the service must keep publishing"
    process.terminate()
    assert wrong_password not in process.log
    assert wrong_password.encode() not in metrics + health
    assert b"feedsvc_mirror_connected 0.0" in metrics

    result = _replay(
        "--bootstrap",
        kafka_broker.sasl_bootstrap,
        "--topic",
        topic,
        "-X",
        "security.protocol=SASL_PLAINTEXT",
        "-X",
        "sasl.mechanism=PLAIN",
        "-X",
        "sasl.username=auditor",
        "-X",
        f"sasl.password=${{env:{PASSWORD_VARIABLE}}}",
    )
    assert result.returncode == 2, result.stderr
    assert "refused the connection" in result.stderr
    assert "Authentication failed" in result.stderr
    assert wrong_password not in result.stderr
