"""`feedsvc loadtest`'s figures from what its processes report: a subscriber role's result, a run's
report section, the step profile's section, the ratios, and the command lines of a run."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from feedsvc.bench.latency import NS_PER_S
from feedsvc.bench.loadtest.analysis import (
    mirror_figures,
    ratios,
    step_figures,
    steps_section,
    summarize,
)
from feedsvc.bench.loadtest.roles import SubscriberLog
from feedsvc.bench.loadtest.run import role_command, serve_settings
from feedsvc.bench.loadtest.window import MeasuredWindow

LATENCY_KEYS = {"p50", "p99", "p999", "max", "count"}


def test_subscriber_log_accounts_for_every_tick_of_the_span() -> None:
    log = SubscriberLog()
    start_ns = 1_000 * NS_PER_S
    # AAA 5, 6, 9 (7 and 8 missed) and BBB 1, 2; ts 0.5 s apart, each received 100 us later.
    ticks = [("AAA", 5), ("BBB", 1), ("AAA", 6), ("BBB", 2), ("AAA", 9)]
    for index, (symbol, seq) in enumerate(ticks):
        ts = start_ns + index * NS_PER_S // 2
        log.observe(ts + 100_000, symbol, 7, seq, ts)
    result = log.result(log.sequence.missed, log.sequence.gaps, log.sequence.backwards)
    assert (result["received"], result["missed"], result["gaps"]) == (5, 2, 1)
    assert result["published_in_span"] == result["received"] + result["missed"] == 7
    assert result["symbols_seen"] == 2
    assert result["span_s"] == 2.0
    assert result["publish_rate"] == 3.5
    assert result["last_seq_by_symbol"] == {"AAA": 9, "BBB": 2}
    # Filed under the second each was received in.
    assert {second: dump["count"] for second, dump in result["latency_by_second"].items()} == {
        "1000": 2,
        "1001": 2,
        "1002": 1,
    }


def test_subscriber_log_of_a_subscriber_that_saw_nothing() -> None:
    result = SubscriberLog().result(0, 0, 0)
    assert result["received"] == result["published_in_span"] == 0
    assert result["span_s"] is None and result["publish_rate"] is None


def subscriber_result(
    received: int, missed: int, last_seq: dict[str, int], rate: float, latencies_us: list[int]
) -> dict[str, Any]:
    return {
        "received": received,
        "missed": missed,
        "gaps": 1 if missed else 0,
        "duplicates": 0,
        "published_in_span": received + missed,
        "symbols_seen": len(last_seq),
        "span_s": 1.0,
        "publish_rate": rate,
        "last_seq_by_symbol": last_seq,
        "latency_by_second": {"100": {"count": len(latencies_us), "raw": latencies_us}},
    }


def section_of(
    slow_latency_us: int = 5_000, summary: dict[str, Any] | None = None
) -> dict[str, Any]:
    fast = subscriber_result(100, 0, {"A": 60, "B": 40}, 1_000.0, [10, 20, 30]) | {"slow": False}
    slow = subscriber_result(10, 2, {"A": 20, "B": 35}, 2_000.0, [slow_latency_us]) | {"slow": True}
    samples = [
        {"t_s": 1.0, "cpu_cores": 0.5, "rss_bytes": 10, "mirror_lag_s": 0.2},
        {"t_s": 2.0, "cpu_cores": 0.7, "rss_bytes": 30, "mirror_lag_s": None},
    ]
    return summarize(
        "feedsvc",
        [fast, slow],
        samples,
        summary,
        0,
        cpu_before=1.0,
        cpu_after=2.5,
        window_s=2.0,
        window=MeasuredWindow(100, 2.0),
    )


def test_a_run_section_takes_rate_and_latency_from_the_fast_subscribers() -> None:
    summary = {"published": 500, "mirror": {"enabled": True, "delivered": 499}}
    section = section_of(summary=summary)
    # The slow subscriber's higher rate and its latency stay out of the section's figures.
    assert section["publish_rate"] == 1_000.0
    assert section["latency_us"]["max"] == 30
    fast, slow = section["subscribers"]
    assert (fast["behind_at_stop"], slow["behind_at_stop"]) == (0, 40 + 5)
    assert fast["consistent"] and slow["consistent"]
    assert "tick_age_us" not in fast and slow["tick_age_us"]["max"] == 5_000
    assert fast["received_by_second"] == [3, 0]
    assert "last_seq_by_symbol" not in fast and "latency_by_second" not in fast
    assert section["published_total"] == 500
    assert section["publisher"]["cpu_cores_mean"] == 0.75
    assert section["publisher"]["cpu_cores_max"] == 0.7
    assert section["publisher"]["rss_bytes_max"] == 30
    assert section["mirror"] == {"acknowledged": 499, "published": 500, "lag_s_max": 0.2}
    assert [row["received"] for row in section["over_time"]] == [3, 0]
    assert "bursts" not in section


def test_a_run_without_a_publisher_summary_reports_its_totals_as_unknown() -> None:
    section = section_of(summary=None)
    assert section["published_total"] is None and section["mirror"] is None


def step_section(publish_rate: float, gaps: int = 0) -> dict[str, Any]:
    fast = {"slow": False, "gaps": gaps, "missed": 3 * gaps}
    slow = {"slow": True, "gaps": 5, "missed": 50}
    return {
        "publish_rate": publish_rate,
        "latency_us": dict.fromkeys(LATENCY_KEYS, 1),
        "subscribers": [fast, slow],
        "publisher": {"cpu_cores_mean": 0.4},
    }


def test_a_step_is_judged_by_its_fast_subscribers_gaps_and_rate() -> None:
    step = step_figures(1_000.0, step_section(990.0))
    # The slow subscriber's gaps do not count against the step.
    assert (step["gaps"], step["missed"], step["sustained"]) == (0, 0, True)
    assert not step_figures(1_000.0, step_section(990.0, gaps=1))["sustained"]
    assert not step_figures(1_000.0, step_section(900.0))["sustained"]


def test_the_step_section_names_the_highest_sustained_rate_and_why_it_stopped() -> None:
    held = step_figures(1_000.0, step_section(1_000.0))
    higher = step_figures(1_500.0, step_section(1_490.0))
    lost = step_figures(2_250.0, step_section(1_800.0))
    stopped = steps_section([held, higher, lost], step_section(1_490.0))
    assert (stopped["max_sustained_rate"], stopped["stopped_by"]) == (1_500.0, "not_sustained")
    assert stopped["publish_rate"] == 1_490.0
    all_held = steps_section([held, higher], step_section(1_490.0))
    assert (all_held["max_sustained_rate"], all_held["stopped_by"]) == (1_500.0, "max_steps")
    none_held = steps_section([lost], step_section(1_800.0))
    assert none_held["max_sustained_rate"] is None


def ratio_section(rate: float, p99: float, cpu: float | None) -> dict[str, Any]:
    latency = {"p50": p99 / 2, "p99": p99, "p999": 2 * p99, "max": 4 * p99}
    return {"publish_rate": rate, "latency_us": latency, "publisher": {"cpu_cores_mean": cpu}}


def test_ratios_are_feedsvc_over_the_baseline() -> None:
    figures = ratios(ratio_section(500.0, 300.0, 1.0), ratio_section(1_000.0, 100.0, None))
    assert figures == {
        "publish_rate": 0.5,
        "p50": 3.0,
        "p99": 3.0,
        "p999": 3.0,
        "max": 3.0,
        "publisher_cpu_cores_mean": None,
    }
    bursts = {"bursts": {"in_bursts": {"latency_us": {"p99": 50.0}}}}
    steps = {"max_sustained_rate": 2_000.0}
    feedsvc = ratio_section(1.0, 1.0, 1.0) | {
        "bursts": {"in_bursts": {"latency_us": {"p99": 100.0}}}
    }
    feedsvc |= {"max_sustained_rate": 1_000.0}
    figures = ratios(feedsvc, ratio_section(1.0, 1.0, 1.0) | bursts | steps)
    assert (figures["burst_p99"], figures["max_sustained_rate"]) == (2.0, 0.5)


def test_mirror_figures_from_prometheus_client_exposition() -> None:
    registry = CollectorRegistry()
    Gauge("feedsvc_mirror_lag_seconds", "lag", registry=registry).set(0.5)
    Gauge("feedsvc_mirror_queue_ticks", "queue", registry=registry).set(42)
    Counter("feedsvc_mirror_delivered", "acknowledged", registry=registry).inc(7)
    figures = mirror_figures(generate_latest(registry).decode())
    assert figures == {
        "mirror_lag_s": 0.5,
        "mirror_queue_ticks": 42.0,
        "mirror_delivered_total": 7.0,
    }


def loadtest_args(**overrides: Any) -> argparse.Namespace:
    settings = {
        "rate": 1_000.0,
        "source": "synthetic",
        "ingest_batch": 1,
        "set": [],
        "symbols": 5,
        "slow_fraction": 0.1,
        "profile": "steady",
        "curve_dir": None,
        "mirror": False,
        "kafka_bootstrap": None,
        "kafka_topic": None,
        "burst_factor": 4.0,
        "burst_every": 5,
        "burst_duration": 1,
    }
    return argparse.Namespace(**(settings | overrides))


def test_the_service_under_test_runs_without_kafka_unless_mirrored() -> None:
    settings = serve_settings(loadtest_args(), "ipc:///tmp/x", 0)
    assert "publisher.endpoints=[ipc:///tmp/x]" in settings
    assert "synthetic.rate=1000.0" in settings and "synthetic.symbols=5" in settings
    assert settings[-1] == "kafka.enabled=false"
    mirrored = serve_settings(
        loadtest_args(mirror=True, kafka_bootstrap="h:9", kafka_topic="t"), "ipc:///tmp/x", 9100
    )
    assert {"kafka.enabled=true", "kafka.bootstrap=h:9", "kafka.topic=t"} <= set(mirrored)
    assert "metrics.port=9100" in mirrored


@pytest.mark.parametrize("role", ["raw-publisher", "raw-subscriber"])
def test_bursts_go_to_both_publishers_and_not_to_subscribers(role: str, tmp_path: Path) -> None:
    args = loadtest_args(profile="burst", curve_dir=tmp_path)
    assert "synthetic.burst_rate=4000.0" in serve_settings(args, "tcp://127.0.0.1:1", 0)
    assert f"curve.authorized_keys={tmp_path / 'authorized'}" in serve_settings(args, "e", 0)
    command = role_command(args, role, "tcp://127.0.0.1:1", slow=role == "raw-subscriber")
    assert command[1:3] == ["-m", "feedsvc.bench.loadtest"]
    assert f"--role={role}" in command and f"--curve-dir={tmp_path}" in command
    assert ("--burst-rate=4000.0" in command) is (role == "raw-publisher")
    assert ("--slow-role" in command) is (role == "raw-subscriber")
