"""`feedsvc subscribe --metrics-port` as a real process against a real `feedsvc serve` process:
its /metrics is scraped while it runs."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import PROJECT_ROOT, ServeProcess, free_tcp_port, serve_settings

# Upper bound of every wait; generous because other test runs share the cores.
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=2.0) as response:
        return response.read().decode()


def samples(text: str) -> dict[str, float]:
    """Sample name (labels dropped; each has one series here) -> value."""
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape_until_received(
    url: str, subscriber: subprocess.Popen[bytes], log_path: Path, minimum: float
) -> tuple[str, dict[str, float]]:
    """Scrape until ticks_received exceeds `minimum`; fails if the subscriber exits or on time."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if subscriber.poll() is not None:
            pytest.fail(
                f"feedsvc subscribe exited with {subscriber.returncode} before the scrape:\n"
                f"{log_path.read_text(errors='replace')}"
            )
        try:
            text = scrape(url)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.05)
            continue
        values = samples(text)
        if values.get("feedsvc_client_ticks_received_total", 0.0) > minimum:
            return text, values
        time.sleep(0.05)
    pytest.fail(f"no scrape with ticks_received > {minimum} within {START_TIMEOUT_S} s")


def test_subscribe_serves_client_metrics(
    serve: Callable[..., ServeProcess], ipc_dir: Path, ipc_endpoint: str, tmp_path: Path
) -> None:
    service = serve(*serve_settings([ipc_endpoint], "synthetic.rate=2000"))
    ipc_socket = ipc_dir / "ticks"
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ipc_socket.exists():
        if service.popen.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"feedsvc serve did not bind {ipc_endpoint}:\n{service.log}")
        time.sleep(0.05)

    port = free_tcp_port()
    url = f"http://127.0.0.1:{port}/metrics"
    log_path = tmp_path / "subscribe.log"
    with log_path.open("wb") as log:
        subscriber = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "feedsvc.cli",
                "subscribe",
                "--json",
                "--duration",
                "4",
                "--metrics-port",
                str(port),
                "--endpoint",
                ipc_endpoint,
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
            stdin=subprocess.DEVNULL,
            cwd=PROJECT_ROOT,
        )
    try:
        first_text, first = scrape_until_received(url, subscriber, log_path, 0)
        time.sleep(0.5)
        second_text, second = scrape_until_received(
            url, subscriber, log_path, first["feedsvc_client_ticks_received_total"]
        )
        assert subscriber.wait(STOP_TIMEOUT_S) == 0, log_path.read_text(errors="replace")
    finally:
        if subscriber.poll() is None:
            subscriber.kill()
            subscriber.wait(STOP_TIMEOUT_S)

    assert first["feedsvc_client_ticks_received_total"] > 0
    assert (
        second["feedsvc_client_ticks_received_total"] > first["feedsvc_client_ticks_received_total"]
    )
    assert second["feedsvc_client_tick_age_seconds_count"] > 0
    assert second["feedsvc_client_gap_events_total"] == 0
    for name in ("feedsvc_client_missed_ticks_total", "feedsvc_client_heartbeat_misses_total"):
        assert name in second
    assert f'endpoint="{ipc_endpoint}"' in second_text
    assert "# TYPE feedsvc_client_tick_age_seconds histogram" in second_text

    for text in (first_text, second_text):
        check = subprocess.run(
            [PROMTOOL, "check", "metrics"],
            input=text,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert check.returncode == 0, check.stdout + check.stderr
        assert check.stdout.strip() == "" and check.stderr.strip() == "", (
            check.stdout + check.stderr
        )
