"""The Grafana dashboard, its provisioning, the Prometheus config and their compose services."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import PROJECT_ROOT

DEPLOY = PROJECT_ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "feedsvc.json"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
METRIC_NAME = re.compile(r"\bfeedsvc_[a-z_]+")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

# Series names as exposed (counters with _total, histograms by their base name).
SERVER_COUNTERS = frozenset(
    f"feedsvc_{name}_total"
    for name in (
        "ticks_ingested",
        "ticks_rejected",
        "ticks_published",
        "published_bytes",
        "heartbeats_sent",
        "subscriber_handshake_failures",
        "sync_snapshots_served",
        "sync_handshakes_completed",
        "sync_requests_rejected",
        "mirror_produced",
        "mirror_delivered",
        "mirror_failed",
        "mirror_dropped",
        "mirror_restarts",
        "recovery_requests",
        "recovery_ticks_served",
        "recovery_requests_rejected",
    )
)
SERVER_GAUGES = frozenset(
    {
        "feedsvc_info",
        "feedsvc_symbols",
        "feedsvc_subscribers_connected",
        "feedsvc_last_publish_timestamp_seconds",
        "feedsvc_mirror_queue_ticks",
        "feedsvc_mirror_lag_seconds",
        "feedsvc_mirror_connected",
        "feedsvc_mirror_retained_bytes",
        "feedsvc_recovery_window_bytes",
        "feedsvc_recovery_window_age_seconds",
    }
)
SERVER_HISTOGRAMS = frozenset({"feedsvc_sync_handshake_seconds", "feedsvc_publish_latency_seconds"})
CLIENT_COUNTERS = frozenset(
    {
        "feedsvc_client_ticks_received_total",
        "feedsvc_client_gap_events_total",
        "feedsvc_client_missed_ticks_total",
        "feedsvc_client_heartbeat_misses_total",
    }
)
CLIENT_HISTOGRAMS = frozenset({"feedsvc_client_tick_age_seconds"})
HISTOGRAMS = SERVER_HISTOGRAMS | CLIENT_HISTOGRAMS
COUNTERS = SERVER_COUNTERS | CLIENT_COUNTERS
KNOWN_METRICS = COUNTERS | SERVER_GAUGES | HISTOGRAMS


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panel_queries() -> dict[str, list[str]]:
    """Panel title -> its PromQL expressions."""
    return {
        panel["title"]: [target.get("expr", "") for target in panel.get("targets", [])]
        for panel in dashboard()["panels"]
    }


def metric_name(series: str) -> str:
    """The metric a series name in a query belongs to: histogram suffixes stripped."""
    for suffix in HISTOGRAM_SUFFIXES:
        if series.endswith(suffix) and series.removesuffix(suffix) in HISTOGRAMS:
            return series.removesuffix(suffix)
    return series


def queried_metrics() -> set[str]:
    """Every metric the dashboard's queries use."""
    return {
        metric_name(series)
        for exprs in panel_queries().values()
        for expr in exprs
        for series in METRIC_NAME.findall(expr)
    }


def _compose() -> dict[str, Any]:
    return yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())


def test_dashboard_parses_and_every_panel_has_a_prometheus_query() -> None:
    board = dashboard()
    assert board["uid"] and board["title"]
    assert board["panels"]
    for panel in board["panels"]:
        assert panel["datasource"]["type"] == "prometheus", panel["title"]
        assert panel.get("targets"), f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target.get("expr", "").strip(), f"panel {panel['title']!r} has an empty query"
            assert METRIC_NAME.search(target["expr"]), target["expr"]
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))


def test_every_queried_metric_is_known() -> None:
    unknown = queried_metrics() - KNOWN_METRICS
    assert not unknown, f"dashboard queries unknown metrics: {sorted(unknown)}"


def test_counters_are_rated_and_histograms_are_quantiles() -> None:
    for title, exprs in panel_queries().items():
        for expr in exprs:
            for series in METRIC_NAME.findall(expr):
                if series in COUNTERS:
                    assert re.search(rf"rate\(\s*{series}\b", expr), f"{title}: {expr}"
                if series.endswith("_bucket"):
                    assert "histogram_quantile(" in expr and "le" in expr, f"{title}: {expr}"


def test_dashboard_covers_the_required_panels() -> None:
    used = queried_metrics()
    assert {
        "feedsvc_ticks_published_total",
        "feedsvc_ticks_ingested_total",
        "feedsvc_ticks_rejected_total",
        "feedsvc_subscribers_connected",
        "feedsvc_sync_handshake_seconds",
        "feedsvc_mirror_lag_seconds",
        "feedsvc_mirror_dropped_total",
        "feedsvc_mirror_failed_total",
        "feedsvc_mirror_delivered_total",
        "feedsvc_client_gap_events_total",
        "feedsvc_client_missed_ticks_total",
        "feedsvc_client_tick_age_seconds",
    } <= used
    exprs = " ".join(expr for exprs in panel_queries().values() for expr in exprs)
    assert "histogram_quantile(0.5," in exprs and "histogram_quantile(0.99," in exprs


def test_prometheus_config_parses_and_scrapes_feedsvc_and_subscriber() -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    targets = {
        target
        for job in config["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    }
    assert {"feedsvc:9108", "subscriber:9109"} <= targets


def test_promtool_accepts_prometheus_config() -> None:
    promtool = shutil.which("promtool") or "/usr/bin/promtool"
    if not Path(promtool).exists():
        pytest.fail("promtool not found: scripts/test.sh installs it (Debian package prometheus)")
    check = subprocess.run(
        [promtool, "check", "config", str(PROMETHEUS_CONFIG)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_grafana_provisioning_points_at_prometheus_and_the_dashboard() -> None:
    provisioning = DEPLOY / "grafana" / "provisioning"
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    # Panels name the datasource by uid.
    assert {panel["datasource"]["uid"] for panel in dashboard()["panels"]} == {source["uid"]}
    providers = yaml.safe_load((provisioning / "dashboards" / "feedsvc.yml").read_text())
    (provider,) = providers["providers"]
    grafana = _compose()["services"]["grafana"]
    mounts = dict(volume.split(":")[:2] for volume in grafana["volumes"])
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]


def test_compose_services_reference_files_that_exist() -> None:
    services = _compose()["services"]
    assert {"feedsvc", "subscriber", "prometheus", "grafana"} <= services.keys()
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (PROJECT_ROOT / source).exists(), f"{name}: {source} does not exist"
    prometheus = services["prometheus"]
    assert prometheus["image"].startswith("prom/prometheus")
    mounted = {volume.split(":")[0] for volume in prometheus["volumes"]}
    assert "./deploy/prometheus/prometheus.yml" in mounted
    grafana = services["grafana"]
    assert grafana["image"].startswith("grafana/grafana")
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert "127.0.0.1:3000:3000" in grafana["ports"]


def test_compose_subscriber_serves_client_metrics_to_prometheus() -> None:
    services = _compose()["services"]
    command = " ".join(services["subscriber"]["command"])
    assert "feedsvc subscribe" in command
    assert "--endpoint tcp://feedsvc:5556" in command
    assert "--metrics-port 9109" in command
    assert "--json" in command and ">/dev/null" in command
    feedsvc_args = services["feedsvc"]["command"]
    assert "metrics.host=0.0.0.0" in feedsvc_args
