"""The slow-subscriber benchmark's pure parts: gap checking, latency/age/RSS figures, a phase's
summary and the targets' verdicts."""

from __future__ import annotations

import math
from typing import Any

import pytest

from feedsvc.bench.latency import LatencyRecorder, hdr_available
from feedsvc.bench.scenarios import slow_report, slow_roles, slow_subscriber
from feedsvc.bench.scenarios.slow_report import PHASES


def test_check_gaps_matches_reported_gaps_against_seq_jumps() -> None:
    seqs = {"A": [1, 2, 5, 6], "B": [10, 11, 12]}
    check = slow_roles.check_gaps(seqs, [("A", 3, 5)])
    assert check == {
        "published_in_spans": 6 + 3,
        "received": 7,
        "missed_from_seqs": 2,
        "jumps": 1,
        "jumps_not_reported": 0,
        "reported_not_jumps": 0,
    }
    wrong = slow_roles.check_gaps(seqs, [("B", 11, 12)])
    assert wrong["jumps_not_reported"] == 1
    assert wrong["reported_not_jumps"] == 1


@pytest.mark.parametrize("hdr", [False, pytest.param(True, id="hdr")])
def test_latency_figures_merge_subscribers_in_ms(hdr: bool) -> None:
    if hdr and not hdr_available():
        pytest.skip("hdrh is not installed")
    dumps = []
    for offset_us in (0, 1_000):
        recorder = LatencyRecorder()
        for value_us in range(1, 1_001):
            recorder.record(10**18 + (value_us + offset_us) * 1_000, 10**18)
        dumps.append(recorder.dump(per_second=False, hdr=hdr)["all"])
    assert ("hdr" in dumps[0]) is hdr
    figures = slow_report.latency_figures(dumps)
    assert figures["count"] == 2_000
    # 2,000 values of 1..2,000 us: the median is 1 ms, the top 2 ms (HdrHistogram: 3 digits).
    assert figures["p50_ms"] == pytest.approx(1.0, rel=1e-3)
    assert figures["p99_ms"] == pytest.approx(1.98, rel=1e-3)
    assert figures["max_ms"] == pytest.approx(2.0, rel=1e-3)


def test_latency_figures_without_ticks_are_nan_not_an_error() -> None:
    figures = slow_report.latency_figures([LatencyRecorder().dump(per_second=False, hdr=False)])
    assert figures["count"] == 0
    assert math.isnan(figures["p99_ms"])


def test_age_figures_are_nearest_rank_percentiles() -> None:
    ages = [(index / 100, float(index)) for index in range(1, 101)]
    assert slow_report.age_figures(ages) == {"p50_ms": 50.0, "p99_ms": 99.0, "max_ms": 100.0}


def test_rss_growth_compares_the_windows_edges_and_checks_the_bound() -> None:
    flat = [(float(t), 40_000 + (t % 2)) for t in range(-3, 61)]
    figures = slow_report.rss_figures(flat, 60.0, 39_000, bound_kb=45_000)
    assert figures["flat"] and figures["under_bound"]
    assert figures["first_kb"] == flat[3][1]
    growing = [(float(t), 40_000 + 100 * t) for t in range(0, 61)]
    figures = slow_report.rss_figures(growing, 60.0, 39_000, bound_kb=45_000)
    # Mean of the last 10 s minus the mean of the first 10 s: 5,000 KiB.
    assert figures["growth_kb"] == pytest.approx(5_000)
    assert not figures["flat"]
    assert not figures["under_bound"]
    assert figures["slope_kb_per_min"] == pytest.approx(6_000)
    assert "error" in slow_report.rss_figures([(100.0, 1)], 60.0, None, 0)


def _fast_result(frame_bytes_max: int = 200) -> dict[str, Any]:
    recorder = LatencyRecorder()
    recorder.record(10**18 + 500_000, 10**18)
    return {
        "mode": "fast",
        "received_in_window": 1_000,
        "published_in_window": 1_010,
        "missed_in_window": 10,
        "cpu_cores": 0.2,
        "frame_bytes_mean": 150.0,
        "frame_bytes_max": frame_bytes_max,
        "stats": {"gaps": 1},
        "latency": recorder.dump(per_second=False, hdr=False)["all"],
    }


SETTINGS = {"duration_s": 10.0, "sndhwm": 1_000}


def test_phase_summary_bounds_rss_by_every_subscribers_full_queue() -> None:
    ages = [(t / 10, 5.0) for t in range(25_000)]
    slow = {"mode": "conflate", "first_tick_at": 1.0, "cpu_cores": 0.05, "ages_ms": ages}
    cpu = {"publisher_cores": 0.5, "busy_cores": 1.2, "steal_cores": 0.0}
    summary = slow_report.summarize_phase(
        "ipc",
        PHASES[1],
        SETTINGS,
        30_000,
        [(0.0, 30_100), (10.0, 30_200)],
        cpu,
        [_fast_result(), _fast_result(), slow],
        load_before=0.5,
    )
    queued_kb = 3 * 1_000 * (200 + slow_report.QUEUED_MESSAGE_OVERHEAD_BYTES) / 1_024
    assert summary["rss"]["bound_kb"] == pytest.approx(30_000 + queued_kb)
    assert summary["fast"]["received_in_window"] == 2_000
    assert summary["fast"]["missed_in_window"] == 20
    assert summary["fast"]["published_per_s"] == 101
    assert summary["cpu"]["other_cores"] == pytest.approx(1.2 - 0.5 - 0.45)
    assert summary["slow"]["reads_per_s"] == 2_500
    assert "first_tick_at" not in summary["slow"]
    assert len(summary["slow"]["age_series"]) <= slow_report.MAX_AGE_SERIES_POINTS


def _phase(key: str, p99_ms: float, slow: dict[str, Any] | None = None) -> dict[str, Any]:
    phase: dict[str, Any] = {
        "transport": "tcp",
        "phase": key,
        "fast": {"p99_ms": p99_ms, "missed_in_window": 0},
        "rss": {"max_kb": 10, "bound_kb": 20, "growth_kb": 0.0, "flat": True, "under_bound": True},
        "cpu": {"other_cores": 0.0},
    }
    if slow is not None:
        phase["slow"] = slow
    return phase


def _normal(missed: int, missed_from_seqs: int) -> dict[str, Any]:
    check = {"missed_from_seqs": missed_from_seqs, "jumps": 3, "jumps_not_reported": 0}
    return {
        "caught_up": True,
        "stats": {"missed": missed},
        "gap_check": {**check, "reported_not_jumps": 0},
    }


def test_targets_pass_and_miss_on_the_issues_bounds() -> None:
    phases = [
        _phase("A", 2.0),
        _phase("B", 2.9, {"age": {"p99_ms": 40.0}}),
        _phase("C", 3.2, _normal(7, 7)),
    ]
    verdicts = {target["target"]: target["ok"] for target in slow_report.evaluate(phases)}
    assert verdicts["fast p99 B/A <= 1.5"] is True
    assert verdicts["fast p99 C/A <= 1.5"] is False
    assert verdicts["slow conflating tick age p99 < 100 ms"] is True
    assert verdicts["slow normal: every missed tick reported as a gap"] is True
    assert verdicts["publisher RSS A: max <= bound, growth < 1 MiB"] is True

    phases[2] = _phase("C", 2.0, _normal(7, 9))
    phases[1]["slow"]["age"]["p99_ms"] = 150.0
    phases[0]["rss"]["under_bound"] = False
    verdicts = {target["target"]: target["ok"] for target in slow_report.evaluate(phases)}
    assert verdicts["slow normal: every missed tick reported as a gap"] is False
    assert verdicts["slow conflating tick age p99 < 100 ms"] is False
    assert verdicts["publisher RSS A: max <= bound, growth < 1 MiB"] is False


def test_notes_warn_of_load_other_cpu_and_fast_misses() -> None:
    busy = _phase("A", 1.0)
    busy["cpu"]["other_cores"] = 0.5
    busy["fast"]["missed_in_window"] = 12
    notes = slow_report.report_notes({"load_average_1m_at_start": 2.5}, [busy])
    assert len(notes) == 3
    assert notes[0].startswith("the load average was 2.50")
    assert slow_report.report_notes({"load_average_1m_at_start": 0.1}, [_phase("A", 1.0)]) == []


def test_invalid_options_are_refused_before_anything_starts() -> None:
    assert slow_subscriber.main(["--rate", "50"]) == 2
    assert slow_subscriber.main(["--duration", "0"]) == 2
