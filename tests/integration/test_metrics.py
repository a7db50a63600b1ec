"""Prometheus /metrics and /healthz of a real `feedsvc serve`, checked with a real promtool."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable

import orjson
import pytest
import zmq

from feedsvc.config import load_config
from feedsvc.server.service import Service
from tests.conftest import (
    KafkaBroker,
    ServeProcess,
    free_tcp_port,
    http_get,
    metric_samples,
    subscribed_probe,
)

Serve = Callable[..., ServeProcess]


def _promtool() -> str:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: scripts/test.sh installs it (Debian package prometheus)")
    return promtool


def _settings(endpoint: str, metrics_port: int, *extra: str) -> list[str]:
    return [
        f"publisher.endpoints=[{endpoint}]",
        "ingest.endpoint=",
        "sync.endpoint=",
        "recovery.endpoint=",
        "kafka.enabled=false",
        f"metrics.port={metrics_port}",
        "publisher.heartbeat_interval_s=0.1",
        *extra,
    ]


def test_scrape_moves_and_promtool_accepts_it(
    serve: Serve, ipc_endpoint: str, zmq_context: zmq.Context
) -> None:
    port = free_tcp_port()
    process = serve(*_settings(ipc_endpoint, port, "synthetic.rate=2000"))
    # Kept open: it is the one subscriber the scrape must count.
    _subscriber = subscribed_probe(zmq_context, ipc_endpoint, process, b"")
    status, first = http_get(port, "/metrics")
    assert status == 200
    time.sleep(1.0)
    _, second = http_get(port, "/metrics")
    before, after = metric_samples(first), metric_samples(second)
    assert after["feedsvc_ticks_published_total"] > before["feedsvc_ticks_published_total"] + 500
    assert (
        after['feedsvc_ticks_ingested_total{source="synthetic"}']
        == (after["feedsvc_ticks_published_total"])
    )
    assert after["feedsvc_published_bytes_total"] > 100 * after["feedsvc_ticks_published_total"]
    assert after["feedsvc_heartbeats_sent_total"] > before["feedsvc_heartbeats_sent_total"]
    assert after["feedsvc_subscribers_connected"] == 1
    assert after["feedsvc_publish_latency_seconds_count"] > 0
    assert after["process_resident_memory_bytes"] > 1e6
    assert "process_cpu_seconds_total" in after
    epochs = [k for k in after if k.startswith("feedsvc_info{")]
    assert len(epochs) == 1 and 'epoch="' in epochs[0]

    check = subprocess.run(
        [_promtool(), "check", "metrics"],
        input=second,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 0 and not check.stdout.strip() and not check.stderr.strip(), (
        check.stdout.decode() + check.stderr.decode()
    )


def test_healthz_is_503_until_publishing_then_200(ipc_endpoint: str) -> None:
    port = free_tcp_port()
    config = load_config(None, _settings(ipc_endpoint, port))
    service = Service(config)
    service.start()
    runner = threading.Thread(target=service.run, daemon=True)
    try:
        status, body = http_get(port, "/healthz")
        assert status == 503
        assert orjson.loads(body)["reason"] == "not publishing yet"
        runner.start()
        deadline = time.monotonic() + 10
        while http_get(port, "/healthz")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        status, body = http_get(port, "/healthz")
        assert status == 200
        health = orjson.loads(body)
        assert health["status"] == "ok" and health["epoch"] == service.epoch
        assert health["sockets_bound"] == [ipc_endpoint]
        assert health["mirror"] == {"enabled": False, "connected": False, "restarts": 0}
    finally:
        service.request_stop()
        if runner.is_alive():
            runner.join(timeout=15)
        else:
            service.close()
    assert _get_fails(port)


def _get_fails(port: int) -> bool:
    try:
        http_get(port, "/healthz")
    except OSError:
        return True
    return False


def test_metrics_report_every_published_tick_acknowledged_by_kafka(
    serve: Serve, kafka_broker: KafkaBroker, ipc_endpoint: str, zmq_context: zmq.Context
) -> None:
    port = free_tcp_port()
    ingest_endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    process = serve(
        *_settings(ipc_endpoint, port, "synthetic.enabled=false"),
        f"ingest.endpoint={ingest_endpoint}",
        "kafka.enabled=true",
        f"kafka.bootstrap={kafka_broker.bootstrap}",
        f"kafka.topic=metrics-{uuid.uuid4().hex[:8]}",
    )
    subscribed_probe(zmq_context, ipc_endpoint, process, b"_hb ")
    push = zmq_context.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 2000)
    push.connect(ingest_endpoint)
    tick = {"sym": "M", "bid": 1.0, "ask": 1.1, "bid_size": 1, "ask_size": 1}
    for _ in range(30):
        push.send(orjson.dumps([tick] * 100))
    samples: dict[str, float] = {}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        samples = metric_samples(http_get(port, "/metrics")[1])
        if samples["feedsvc_mirror_delivered_total"] == 3000:
            break
        time.sleep(0.2)
    assert samples["feedsvc_ticks_published_total"] == 3000
    assert samples["feedsvc_mirror_delivered_total"] == 3000
    assert samples["feedsvc_mirror_queue_ticks"] == 0
    assert samples["feedsvc_mirror_connected"] == 1
    assert orjson.loads(http_get(port, "/healthz")[1])["mirror"]["connected"] is True
    assert process.terminate() == 0
    assert "mirror: 3000 of 3000 published ticks acknowledged by Kafka" in process.log
