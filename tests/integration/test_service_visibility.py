"""Publisher-side visibility: connected subscribers from the PUB socket's monitor events, sync
handshakes served and their time (what the metrics release exposes)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import orjson
import zmq

from feedsvc.config import load_config
from feedsvc.server.service import Service
from tests.conftest import free_tcp_port, http_get, metric_samples


def _wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_subscriber_count_follows_connects_and_disconnects(
    ipc_endpoint: str, tcp_endpoint: str, zmq_context: zmq.Context
) -> None:
    sync_endpoint = f"{ipc_endpoint}-sync"
    metrics_port = free_tcp_port()
    config = load_config(
        None,
        [
            f"publisher.endpoints=[{ipc_endpoint}, {tcp_endpoint}]",
            "ingest.endpoint=",
            f"metrics.port={metrics_port}",
            "metrics.host=127.0.0.1",
            f"sync.endpoint={sync_endpoint}",
            "recovery.endpoint=",
            "kafka.enabled=false",
            "synthetic.rate=1000",
        ],
    )
    service = Service(config)
    service.start()
    runner = threading.Thread(target=service.run, daemon=True)
    runner.start()
    try:
        subscribers = []
        for endpoint in (ipc_endpoint, tcp_endpoint, tcp_endpoint):
            subscriber = zmq_context.socket(zmq.SUB)
            subscriber.setsockopt(zmq.LINGER, 0)
            subscriber.connect(endpoint)
            subscribers.append(subscriber)
        assert _wait_until(lambda: service.subscribers_connected == 3)
        subscribers.pop().close()
        assert _wait_until(lambda: service.subscribers_connected == 2)

        req = zmq_context.socket(zmq.REQ)
        req.setsockopt(zmq.LINGER, 0)
        req.connect(sync_endpoint)
        for _ in range(3):
            req.send(
                orjson.dumps({"op": "snapshot", "client": "c", "marker": "m", "symbols": None})
            )
            assert req.poll(5000)
            assert orjson.loads(req.recv())["ok"]
        req.send(b"nonsense")
        assert req.poll(5000)
        req.recv()
        assert service.sync.snapshots_served == 3
        assert service.sync.rejected_by_reason["not_json"] == 1
        # Every request, the refused one too, is timed in the handshake histogram.
        status, body = http_get(metrics_port, "/metrics")
        samples = metric_samples(body)
        assert status == 200
        assert samples["feedsvc_sync_handshake_seconds_count"] == 4
        assert 0 < samples["feedsvc_sync_handshake_seconds_sum"] < 5
    finally:
        service.request_stop()
        runner.join(timeout=15)
    assert not runner.is_alive()
