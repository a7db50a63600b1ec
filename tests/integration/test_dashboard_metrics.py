"""Every metric the Grafana dashboard queries exists in a real scrape."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable

import zmq
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ServeProcess, free_tcp_port, http_get, metric_samples, subscribed_probe
from tests.integration.test_metrics import _settings
from tests.unit.test_dashboard import queried_metrics

Serve = Callable[..., ServeProcess]


def _exposed(text: bytes) -> set[str]:
    """Metric names a query can use, including families with no samples yet (a labelled counter
    before its first increment): counters by their _total name, histograms by their base name."""
    names = {name.split("{", 1)[0] for name in metric_samples(text)}
    for family in text_string_to_metric_families(text.decode()):
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "info":
            names.add(f"{family.name}_info")
        else:
            names.add(family.name)
    return names


def test_every_server_metric_the_dashboard_queries_is_scraped(
    serve: Serve, ipc_endpoint: str, zmq_context: zmq.Context
) -> None:
    port = free_tcp_port()
    process = serve(*_settings(ipc_endpoint, port, "synthetic.rate=500"))
    subscribed_probe(zmq_context, ipc_endpoint, process, b"")
    status, text = http_get(port, "/metrics")
    assert status == 200
    server = {name for name in queried_metrics() if not name.startswith("feedsvc_client_")}
    assert server, "the dashboard queries no server-side metrics"
    missing = server - _exposed(text)
    assert not missing, f"dashboard queries metrics feedsvc serve does not expose: {missing}"


def test_every_client_metric_the_dashboard_queries_is_scraped(
    serve: Serve, ipc_endpoint: str, zmq_context: zmq.Context
) -> None:
    process = serve(*_settings(ipc_endpoint, free_tcp_port(), "synthetic.rate=500"))
    subscribed_probe(zmq_context, ipc_endpoint, process, b"")
    port = free_tcp_port()
    client = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "feedsvc.cli",
            "subscribe",
            "--endpoint",
            ipc_endpoint,
            "--metrics-port",
            str(port),
            "--json",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client_names = {n for n in queried_metrics() if n.startswith("feedsvc_client_")}
        missing = client_names
        deadline = time.monotonic() + 20
        while missing and time.monotonic() < deadline:
            assert client.poll() is None, f"feedsvc subscribe exited with {client.returncode}"
            try:
                status, text = http_get(port, "/metrics")
            except OSError:
                time.sleep(0.1)
                continue
            assert status == 200
            missing = client_names - _exposed(text)
            if missing:
                time.sleep(0.2)
        assert not missing, (
            f"dashboard queries metrics feedsvc subscribe does not expose: {missing}"
        )
    finally:
        client.kill()
        client.wait(timeout=5)
