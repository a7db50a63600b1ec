"""bench_curve's pure parts: the serve settings of each mode, the medians and the ratio lines it
reports, and the /metrics reader it takes the published count from (no sockets)."""

from __future__ import annotations

from pathlib import Path

from feedsvc.bench.scenarios.curve import medians, serve_settings, summary_lines
from feedsvc.bench.scrape import PUBLISHED_TOTAL, metric_samples


def test_curve_settings_only_when_keys_are_given() -> None:
    plain = serve_settings(5555, 5556, None)
    secured = serve_settings(5555, 5556, Path("/keys"))
    assert "publisher.endpoints=[tcp://127.0.0.1:5555]" in plain
    assert "metrics.port=5556" in plain and "synthetic.rate=0" in plain
    assert not any(setting.startswith("curve.") for setting in plain)
    assert secured[: len(plain)] == plain
    assert secured[len(plain) :] == [
        "curve.enabled=true",
        "curve.server_secret=/keys/server.key_secret",
        "curve.authorized_keys=/keys/authorized",
    ]


def test_medians_are_per_mode_and_per_figure() -> None:
    runs = {
        False: [(100.0, 90.0), (300.0, 70.0), (200.0, 80.0)],
        True: [(50.0, 40.0), (70.0, 60.0), (60.0, 80.0)],
    }
    assert medians(runs) == {False: (200.0, 80.0), True: (60.0, 60.0)}


def test_summary_lines_report_medians_and_on_over_off() -> None:
    runs = {False: [(200_000.0, 100_000.0)], True: [(150_000.0, 80_000.0)]}
    assert summary_lines(runs) == [
        "medians, curve off: published 200,000/s, received 100,000/s",
        "medians, curve on:  published 150,000/s, received 80,000/s",
        "ratio ON/OFF: published 0.75, received 0.80",
    ]


def test_a_zero_baseline_gives_no_ratio_instead_of_failing() -> None:
    lines = summary_lines({False: [(0.0, 0.0)], True: [(10.0, 5.0)]})
    assert lines[-1] == "ratio ON/OFF: published -, received -"


def test_metric_samples_reads_counters_and_labelled_samples() -> None:
    exposition = (
        "# HELP feedsvc_ticks_published_total Ticks published.\n"
        "# TYPE feedsvc_ticks_published_total counter\n"
        "feedsvc_ticks_published_total 12345.0\n"
        "# HELP feedsvc_ticks_ingested_total Ticks ingested.\n"
        "# TYPE feedsvc_ticks_ingested_total counter\n"
        'feedsvc_ticks_ingested_total{source="synthetic",b="x"} 7.0\n'
    )
    samples = metric_samples(exposition.encode())
    assert samples[PUBLISHED_TOTAL] == 12345.0
    assert samples['feedsvc_ticks_ingested_total{b="x",source="synthetic"}'] == 7.0
