"""bench_mirror's pure parts (no sockets, no broker): the shutdown accounting read from serve's
summary, rates and lags from sampled counts, the outage's backlog and drain, Part A's ratios and
verdicts, the no-loss rule, the CPU monitor's carry-over across a broker restart, the options it
refuses, and the transactions section: /proc times, tick ts, CPU and bytes per tick, the
visibility lag's window and percentiles, its ratios, verdicts, plans and table."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from feedsvc.bench.kafka import PROJECT_ROOT
from feedsvc.bench.scenarios.mirror import build_parser, json_settings, options_problem
from feedsvc.bench.scenarios.mirror_analysis import (
    KEEPS_UP_FLUSH_S,
    OUTAGE_RATE,
    PACED_RATE,
    backlog_left,
    broker_back_at,
    broker_down_times,
    kept_publishing,
    mirror_lags_s,
    mirror_shutdown,
    outage_backlog,
    outage_no_loss,
    outage_phases,
    outage_publishing,
    per_second_rates,
    rate_between,
    rate_figures,
    rate_notes,
)
from feedsvc.bench.scenarios.mirror_cost import (
    COST_RATE,
    cost_per_tick,
    cost_plan_labels,
    parse_stat_times,
    per_tick_us,
    percentile,
    tick_ts_ns,
    transactions_figures,
    visibility_figures,
    visibility_series,
    window_lags,
)
from feedsvc.bench.scenarios.mirror_cost_report import cost_table_lines
from feedsvc.bench.scenarios.mirror_cost_runs import (
    CostMonitor,
    cost_plans,
    log_bytes,
    warm_up_plans,
)
from feedsvc.bench.scenarios.mirror_pollers import CPU_SAMPLE_INTERVAL_S, RunMonitor
from feedsvc.bench.scenarios.mirror_report import plot_series, table_lines
from feedsvc.bench.scenarios.mirror_runs import rate_plans
from feedsvc.bench.scenarios.mirror_twin import encoded_frames
from feedsvc.protocol.ticks import split_frame
from feedsvc.server.synthetic import synthetic_symbols


def _serve_summary(**mirror: Any) -> dict[str, Any]:
    counts = {
        "enabled": True,
        "delivered": 1000,
        "undelivered": 0,
        "dropped": 0,
        "failed": 0,
        "unacknowledged": 0,
        "flush_s": 0.2,
    }
    return {"published": 1000, "mirror": {**counts, **mirror}}


def test_shutdown_figures_come_from_the_summary_file() -> None:
    figures = mirror_shutdown(_serve_summary(delivered=990, undelivered=10, dropped=4, failed=6))
    assert figures["acked"] == 990 and figures["published"] == 1000
    assert figures["undelivered"] == 10
    assert (figures["dropped_at_handoff"], figures["failed"]) == (4, 6)
    assert figures["unacknowledged_at_flush_timeout"] == 0
    assert figures["flush_s"] == 0.2
    assert figures["mirror_line"] == (
        "990 of 1000 published ticks acknowledged by Kafka, 10 not delivered"
    )


def test_shutdown_line_without_losses_and_without_a_mirror() -> None:
    assert mirror_shutdown(_serve_summary())["mirror_line"] == (
        "1000 of 1000 published ticks acknowledged by Kafka"
    )
    assert mirror_shutdown({"published": 5, "mirror": {"enabled": False}}) == {"mirror_line": None}
    assert mirror_shutdown(None) == {"mirror_line": None}


def test_rate_between_needs_samples_around_the_window() -> None:
    samples = [(float(second), 100 * second) for second in range(11)]
    assert rate_between(samples, 2.0, 8.0) == pytest.approx(100.0)
    assert rate_between(samples, 2.5, 2.5) is None
    # The first sample is more than 1.5 s after the start: not covered.
    assert rate_between(samples[5:], 2.0, 8.0) is None


def test_per_second_rates_skip_the_gap_while_the_broker_was_down() -> None:
    samples = [(0.0, 0), (1.0, 100), (2.0, 200), (12.0, 1200), (13.0, 1400)]
    rates = per_second_rates(samples, max_gap_s=2.5)
    assert rates == [(0.5, 100.0), (1.5, 100.0), (12.5, 200.0)]
    assert len(per_second_rates(samples)) == 4


def test_mirror_lag_is_the_unacknowledged_share_of_a_second() -> None:
    published = [(0.0, 0), (10.0, 500_000)]  # 50k/s
    acknowledged = [(2.0, 90_000), (4.0, 200_000), (20.0, 500_000)]
    lags = mirror_lags_s(published, acknowledged, 50_000, 0.0, 10.0)
    # At 2 s 100k were published, 90k acked: 0.2 s behind; at 4 s it had caught up.
    assert lags == pytest.approx([0.2, 0.0])
    assert mirror_lags_s(published[:1], acknowledged, 50_000, 0.0, 10.0) == []


def _outage_times() -> dict[str, float]:
    return {"stop_issued": 10.0, "stopped": 12.0, "start_issued": 20.0, "answering": 30.0}


def test_broker_counts_as_back_when_it_first_answers_anyone() -> None:
    times = _outage_times()
    # The watermark poller got an answer at 25 s, before scripts/kafka.sh start returned.
    assert broker_back_at([(9.0, 1), (25.0, 2)], times) == 25.0
    assert broker_back_at([(9.0, 1)], times) == 30.0
    figures = broker_down_times(times, 25.0, window_start=4.0)
    assert figures == {
        "down_s": 15.0,
        "stop_s": 2.0,
        "kept_down_s": 8.0,
        "restart_s": 5.0,
        "kafka_sh_start_s": 10.0,
        "broker_stopped_at_s": 6.0,
        "broker_back_at_s": 21.0,
    }


def _steady(rate: float, until: float, start: float = 0.0) -> list[tuple[float, int]]:
    return [(float(at), round(rate * at)) for at in range(int(start), int(until) + 1)]


def test_outage_backlog_grows_while_down_and_drains_after() -> None:
    received = _steady(OUTAGE_RATE, 40)  # the publisher never stalls
    # Acknowledged keeps pace until 10 s, nothing while down (no samples), then catches up at
    # 3x the rate from 20 s and is level with published from 25 s on.
    watermarks = [(float(at), OUTAGE_RATE * at) for at in range(0, 11)]
    watermarks += [(float(at), OUTAGE_RATE * 10 + 3 * OUTAGE_RATE * (at - 20)) for at in (21, 22)]
    watermarks += [(float(at), OUTAGE_RATE * at) for at in range(25, 41)]
    backlog = outage_backlog(received, watermarks, (0.0, 40.0), (10.0, 20.0))
    assert backlog["backlog_peak"] == 8 * OUTAGE_RATE  # at 21 s: 11 s published, 3 s acked
    assert backlog["drained_at"] == 25.0 and backlog["drain_s"] == 5.0
    assert backlog["backlog_left_when_drained"] == 0
    assert backlog["observed_after_restart_s"] == 20.0
    assert backlog["acked_per_s_peak_after_restart"] == pytest.approx(3 * OUTAGE_RATE)
    assert backlog["backlog"][0] == (0.0, 0)


def test_outage_backlog_needs_a_watermark_before_the_stop() -> None:
    assert outage_backlog(_steady(100, 10), [(12.0, 5)], (0.0, 20.0), (5.0, 8.0)) == {
        "backlog": None
    }


def test_outage_publishing_and_stall_rule() -> None:
    figures = outage_publishing(_steady(OUTAGE_RATE, 30), 10.0, 20.0)
    assert figures["published_during_outage"] == 10 * OUTAGE_RATE
    assert figures["published_per_s_during_outage"] == OUTAGE_RATE
    assert figures["received_per_s_during_outage_min"] == OUTAGE_RATE
    assert kept_publishing(figures["published_per_s_during_outage"])
    assert not kept_publishing(0.9 * OUTAGE_RATE)


def test_outage_phases_end_at_the_drain_or_the_window() -> None:
    phases = outage_phases((0.0, 40.0), (10.0, 20.0), 25.0)
    assert phases == {
        "before": (0.0, 10.0),
        "outage": (10.0, 20.0),
        "catch_up": (20.0, 25.0),
        "after": (25.0, 40.0),
    }
    assert outage_phases((0.0, 40.0), (10.0, 20.0), None)["catch_up"] == (20.0, 40.0)


def test_backlog_left_calls_sampling_noise_zero() -> None:
    assert backlog_left(1_200) == "~0: 1,200 ticks"
    assert backlog_left(-900) == "~0: -900 ticks"
    assert backlog_left(60_000) == "60,000 ticks never acknowledged"


def _replay(**summary: Any) -> dict[str, Any]:
    return {"exit_code": 0, "summary": {"ticks": 1000, "gaps": 0, "duplicates": 0, **summary}}


def test_no_loss_needs_every_tick_acked_and_replayed_once() -> None:
    shutdown = mirror_shutdown(_serve_summary())
    assert outage_no_loss(shutdown, _replay())
    assert not outage_no_loss(shutdown, _replay(ticks=999))
    assert not outage_no_loss(shutdown, _replay(duplicates=1))
    assert not outage_no_loss(shutdown, {**_replay(), "exit_code": 1})
    assert not outage_no_loss(shutdown, {"exit_code": 0, "summary": None})
    lost = mirror_shutdown(_serve_summary(delivered=999, undelivered=1))
    assert not outage_no_loss(lost, _replay())
    assert not outage_no_loss(mirror_shutdown(None), _replay())


def _run(label: str, published_per_s: float, **figures: Any) -> dict[str, Any]:
    run = {key: None for key in ("drop_fraction", "acked_per_s_window", "acked_per_s_peak")}
    run |= {
        "label": label,
        "published_per_s": published_per_s,
        "received_per_s": published_per_s,
        "published_per_serve_cpu_s": published_per_s,
        "publisher_cpu_cores": 1.0,
        "mirror_cpu_cores": 0.5 if label.endswith("on") else 0.0,
        "broker_cpu_cores": 0.3,
        "subscriber_cpu_cores": 0.2,
        "foreign_cpu_cores": 0.0,
        "steal_cpu_cores": 0.0,
    }
    return run | figures


def _rate_runs(paced_on: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        _run("max-off", 200_000.0),
        _run("max-on", 160_000.0),
        _run("max-off", 210_000.0),
        _run("max-on", 140_000.0),
        _run("paced-off", 50_000.0),
        _run("paced-on", 50_000.0, **paced_on),
    ]


def test_rate_figures_ratios_and_verdicts() -> None:
    paced = {"acked": 500_000, "published": 500_000, "flush_s": 0.1, "lag_s_max": 0.06}
    figures = rate_figures(_rate_runs(paced))
    assert figures["summary"]["max-off"]["published_per_s_median"] == 205_000.0
    assert figures["ratio_published"] == pytest.approx(150_000 / 205_000)
    assert figures["ratio_published_per_pair"] == pytest.approx([0.8, 140 / 210])
    assert figures["verdict"] == "MISS"  # 0.73 < 0.75
    assert figures["paced_keeps_up"] and figures["paced_verdict"] == "PASS"
    assert figures["lag_verdict"] == "PASS"
    assert figures["cores_busy"]["max-on"] == pytest.approx(2.0)


def test_paced_run_misses_on_a_loss_a_long_flush_or_a_long_lag() -> None:
    base = {"acked": 500_000, "published": 500_000, "flush_s": 0.1, "lag_s_max": 0.06}
    assert rate_figures(_rate_runs(base | {"acked": 499_999}))["paced_verdict"] == "MISS"
    long_flush = base | {"flush_s": KEEPS_UP_FLUSH_S + 1}
    assert rate_figures(_rate_runs(long_flush))["paced_verdict"] == "MISS"
    assert rate_figures(_rate_runs(base | {"lag_s_max": 1.5}))["lag_verdict"] == "MISS"
    assert rate_figures(_rate_runs(base | {"lag_s_max": None}))["lag_verdict"] == "MISS"


def test_rate_notes_flag_noisy_repeats() -> None:
    runs = _rate_runs({"acked": 1, "published": 1, "flush_s": 0.1})
    notes = rate_notes(runs, rate_figures(runs)["summary"])
    assert notes == ["max-on runs spread 13% of the median: noisy"]


def test_table_renders_missing_figures_as_dashes() -> None:
    runs = _rate_runs({"acked": 1, "published": 1, "flush_s": 0.1})
    summary = rate_figures(runs)["summary"]
    header, rule, off, on, last_rule = table_lines(
        [("mirror OFF", summary["max-off"]), ("mirror ON", summary["max-on"])]
    )
    assert header.split()[:3] == ["published/s", "received/s", "dropped"]
    assert rule == last_rule == "-" * len(header)
    assert off.split()[2:5] == ["205,000", "205,000", "-"]
    assert on.split()[2] == "150,000"


def test_plot_series_breaks_the_line_across_gaps() -> None:
    times, values = plot_series([(0.0, 1.0), (1.0, 2.0), (6.0, 3.0), (50.0, 4.0)], until_s=10.0)
    assert times == [0.0, 1.0, 3.5, 6.0]
    assert values[:2] == [1.0, 2.0] and math.isnan(values[2]) and values[3] == 3.0


class _NoBroker:
    def pid(self) -> None:
        return None


def test_cpu_monitor_carries_the_count_over_a_broker_restart() -> None:
    monitor = RunMonitor(_NoBroker())  # type: ignore[arg-type]
    step = CPU_SAMPLE_INTERVAL_S
    monitor.record("broker", 100, 0.0, 10.0)
    monitor.record("broker", 100, 4 * step, 12.0)
    # A new JVM starts counting at 0: its CPU adds to the old one's.
    monitor.record("broker", 200, 8 * step, 1.0)
    assert [cpu for _, cpu in monitor.cpu_by_name["broker"]] == [10.0, 12.0, 13.0]
    assert monitor.cores("broker", 0.0, 8 * step) == pytest.approx(3.0 / (8 * step))
    assert monitor.cores("mirror", 0.0, 1.0) is None


def test_rate_plans_alternate_then_pace() -> None:
    plans = rate_plans(2)
    assert [plan.label for plan in plans] == [
        "max-off",
        "max-on",
        "max-off",
        "max-on",
        "paced-off",
        "paced-on",
    ]
    assert [plan.run_index for plan in plans] == list(range(6))
    assert [plan.mirror for plan in plans] == [False, True, False, True, False, True]


def test_options_refused_and_settings_as_json() -> None:
    parser = build_parser()
    assert options_problem(parser.parse_args([])) is None
    assert options_problem(parser.parse_args(["--duration", "0"])) is not None
    assert options_problem(parser.parse_args(["--skip-rate", "--skip-outage"])) is None
    assert "nothing to do" in (
        options_problem(parser.parse_args(["--skip-rate", "--skip-outage", "--skip-transactions"]))
        or ""
    )
    settings = json_settings(parser.parse_args(["--json", "x.json", "--plot", "p.png"]))
    assert settings["json"] is None and settings["plot"] == "p.png"
    assert settings["hwm"] == 10_000 and settings["set"] == []
    assert not any(isinstance(value, Path) for value in settings.values())


def test_stat_times_split_own_cpu_from_waited_for_children() -> None:
    # /proc/PID/stat of a process named "feedsvc (serve)": the ")" in the name must not matter.
    fields = ["S", "1", "2", "3", "0", "-1", "4194304", "10", "0", "0", "0"]
    fields += ["250", "50", "700", "100", "20", "0", "3"]
    own, children = parse_stat_times(f"1234 (feedsvc (serve)) {' '.join(fields)}", 100)
    assert own == pytest.approx(3.0)  # utime 250 + stime 50 ticks
    assert children == pytest.approx(8.0)  # cutime 700 + cstime 100: only children waited for
    text = Path("/proc/self/stat").read_text()
    assert parse_stat_times(text, os.sysconf("SC_CLK_TCK"))[0] >= 0.0


def test_tick_ts_is_read_without_decoding_the_payload() -> None:
    payload = b'{"symbol":"SYN0001","price":1.5,"seq":7,"epoch":3,"ts":1712345678901234567}'
    assert tick_ts_ns(payload) == 1712345678901234567
    assert tick_ts_ns(b'{"counts":5,"ts":42,"x":1}') == 42
    assert tick_ts_ns(b'{"seq":1}') is None
    assert tick_ts_ns(b'{"ts":null}') is None


def test_per_tick_and_percentiles() -> None:
    assert per_tick_us(0.5, 100_000) == pytest.approx(5.0)
    assert per_tick_us(None, 10) is None and per_tick_us(1.0, 0) is None
    values = list(range(1, 101))
    assert percentile(values, 0.5) == 50 and percentile(values, 0.99) == 99
    assert percentile(values, 1.0) == 100 and percentile([], 0.5) is None


def test_visibility_counts_only_ticks_received_in_the_window() -> None:
    second = 1_000_000_000
    # Three consume() batches at 0.5 s, 2 s and 9 s; the window is [1, 8].
    batches = [(0.5, 2), (2.0, 3), (9.0, 1)]
    lags = [5 * second, 5 * second, second // 10, second // 5, 2 * second, 7 * second]
    assert window_lags(batches, lags, 1.0, 8.0) == [second // 10, second // 5, 2 * second]
    figures = visibility_figures(window_lags(batches, lags, 1.0, 8.0))
    assert figures["count"] == 3
    assert figures["p50_s"] == pytest.approx(0.2) and figures["max_s"] == pytest.approx(2.0)
    assert figures["share_under_target"] == pytest.approx(2 / 3)
    assert visibility_figures([])["p99_s"] is None
    series = visibility_series(batches, lags, 1.0, 8.0)
    assert series == [(1.5, 0.2, 2.0, 2.0)]


def test_cost_per_tick_from_a_run_s_counts() -> None:
    run = {
        "published_in_window": 160_000,
        "serve_cpu_s": 1.2,
        "mirror_cpu_s": 0.8,
        "broker_cpu_s": 0.4,
        "delivered": 200_000,
        "checkpoint": {"records": 40, "key_bytes": 1_400, "value_bytes": 38_600},
        "checkpoint_disk_bytes": 30_000,
        "topic_disk_bytes": 8_000_000,
        "run_s": 10.0,
    }
    figures = cost_per_tick(run)
    assert figures["serve_us_per_tick"] == pytest.approx(7.5)
    assert figures["mirror_and_broker_us_per_tick"] == pytest.approx(7.5)
    assert figures["checkpoint_bytes_per_tick"] == pytest.approx(0.2)
    assert figures["checkpoint_disk_bytes_per_tick"] == pytest.approx(0.15)
    assert figures["topic_disk_bytes_per_tick"] == pytest.approx(40.0)
    assert figures["checkpoints_per_s"] == pytest.approx(4.0)
    # Mirror off, or the other tree without a checkpoint topic: no checkpoint figures.
    assert (
        cost_per_tick({"published_in_window": 10, "serve_cpu_s": 1e-5})["checkpoint_bytes_per_tick"]
        is None
    )


def _cost_run(label: str, serve_us: float, mirror_us: float = 0.0, **extra: Any) -> dict:
    return {
        "label": label,
        "serve_us_per_tick": serve_us,
        "mirror_and_broker_us_per_tick": mirror_us,
        "broker_cpu_cores": 0.03,
        **extra,
    }


def test_transactions_figures_ratios_and_verdicts() -> None:
    cost = [
        _cost_run("off", 6.0),
        _cost_run("on", 6.2, 12.0, checkpoint_bytes_per_tick=0.2),
        _cost_run("on-no-txn", 6.1, 6.0),
        _cost_run("off", 6.2),
        _cost_run("on", 6.4, 14.0, checkpoint_bytes_per_tick=0.3),
        _cost_run("on-no-txn", 6.3, 8.0),
    ]
    lag = [
        {"label": "lag-on", "p50_s": 0.2, "p99_s": 0.4, "max_s": 0.5},
        {"label": "lag-on", "p50_s": 0.2, "p99_s": 0.6, "max_s": 1.2},
        {"label": "lag-no-txn", "p50_s": 0.1, "p99_s": 0.2, "max_s": 0.3},
    ]
    figures = transactions_figures(cost, lag)
    assert figures["hot_path_ratio"] == pytest.approx(6.1 / 6.3)
    assert figures["hot_path_ratio_per_pair"] == pytest.approx([6.0 / 6.2, 6.2 / 6.4])
    assert figures["hot_path_verdict"] == "PASS"  # 0.968 >= 0.95
    assert figures["hot_path_ratio_no_txn"] == pytest.approx(6.1 / 6.2)
    # No off-twin runs: no same-load figure, rather than one made up.
    assert figures["hot_path_ratio_same_load"] is None
    assert figures["hot_path_same_load_verdict"] is None
    twin = [_cost_run("off-twin", 6.3), _cost_run("off-twin", 6.1)]
    with_twin = transactions_figures([*cost, *twin], lag)
    assert with_twin["hot_path_ratio_same_load"] == pytest.approx(6.2 / 6.3)
    assert with_twin["hot_path_ratio_same_load_per_pair"] == pytest.approx([6.3 / 6.2, 6.1 / 6.4])
    assert with_twin["hot_path_same_load_verdict"] == "PASS"
    assert with_twin["sharing_ratio"] == pytest.approx(6.1 / 6.2)
    assert figures["mirror_cost_ratio_txn_over_no_txn"] == pytest.approx(13.0 / 7.0)
    assert figures["checkpoint_bytes_per_tick"] == pytest.approx(0.25)
    assert figures["broker_idle_cores"] == pytest.approx(0.03)
    assert figures["visibility_p99_s_median"] == pytest.approx(0.5)
    assert figures["visibility_max_s"] == pytest.approx(1.2)
    assert figures["visibility_verdict"] == "PASS"  # on the median of p99, not one max
    assert figures["lag_summary"]["lag-no-txn"]["p99_s_median"] == pytest.approx(0.2)
    slower = [*cost[:1], _cost_run("on", 7.0, 12.0)]
    assert transactions_figures(slower, lag[2:])["hot_path_verdict"] == "MISS"
    assert transactions_figures(slower, lag[2:])["visibility_verdict"] == "MISS"  # no lag-on


def test_cost_plans_alternate_trees_and_pace() -> None:
    parser = build_parser()
    options = parser.parse_args(["--repeats", "2", "--baseline-root", "/tmp/other"])
    plans = cost_plans(options)
    assert [plan.label for plan in plans] == cost_plan_labels(2, with_baseline=True)
    assert [plan.label for plan in plans][:4] == ["off", "on", "off-twin", "on-no-txn"]
    assert [plan.twin for plan in plans][:4] == [False, False, True, False]
    assert [plan.label for plan in plans][-2:] == ["lag-on", "lag-no-txn"]
    assert {str(plan.root) for plan in plans if plan.label.endswith("no-txn")} == {"/tmp/other"}
    assert {plan.root for plan in plans if not plan.label.endswith("no-txn")} == {PROJECT_ROOT}
    assert {plan.rate for plan in plans if plan.visibility} == {PACED_RATE}
    assert {plan.rate for plan in plans if not plan.visibility} == {COST_RATE}
    assert not any(plan.mirror for plan in plans if plan.label in ("off", "off-twin"))
    assert len({plan.run_index for plan in plans}) == len(plans)
    assert cost_plan_labels(1, with_baseline=False) == ["off", "on", "off-twin", "lag-on"]
    warm = warm_up_plans(options)
    assert [str(plan.root) for plan in warm] == [str(PROJECT_ROOT), "/tmp/other"]
    assert all(plan.mirror and not plan.visibility for plan in warm)
    assert not {plan.run_index for plan in warm} & {plan.run_index for plan in plans}


def test_log_bytes_sum_the_topic_s_segments_only(tmp_path: Path) -> None:
    for folder, size in (("t-0", 100), ("t-1", 50), ("t.checkpoints-0", 7), ("t-x", 9)):
        (tmp_path / "data" / folder).mkdir(parents=True)
        (tmp_path / "data" / folder / "00000000000000000000.log").write_bytes(b"x" * size)
        (tmp_path / "data" / folder / "00000000000000000000.index").write_bytes(b"i" * 1000)
    assert log_bytes(tmp_path, "t") == 150
    assert log_bytes(tmp_path, "t.checkpoints") == 7
    assert log_bytes(tmp_path, "missing") is None


def test_cost_monitor_samples_serve_and_its_waited_for_children_at_every_call() -> None:
    monitor = CostMonitor(_NoBroker())  # type: ignore[arg-type]
    for _ in range(3):
        monitor(os.getpid())  # every call samples: the window's end is not left out
    own = [cpu_s for _, cpu_s in monitor.cpu_by_name["serve"]]
    assert len(own) == 3 and own == sorted(own)
    # No child of this process exited meanwhile: the children's figure stays where it was.
    assert len({cpu_s for _, cpu_s in monitor.cpu_by_name["serve_children"]}) == 1
    assert monitor.mirror_pid is None and "mirror" not in monitor.cpu_by_name


def test_cost_table_renders_missing_rows_and_figures() -> None:
    figures = transactions_figures([_cost_run("off", 6.0), _cost_run("on", 6.2, 12.0)], [])
    header, rule, off, on, last_rule = cost_table_lines(figures["summary"])
    assert "serve us/tick" in header and rule == last_rule
    assert off.split()[:4] == ["mirror", "OFF", "-", "-"]
    assert "6.20" in on and "12.00" in on


def test_transaction_options_refused() -> None:
    parser = build_parser()
    assert options_problem(parser.parse_args(["--cost-rate", "0"])) is not None
    missing = options_problem(parser.parse_args(["--baseline-root", "/nonexistent/tree"]))
    assert missing is not None and "no feedsvc source tree" in missing
    assert options_problem(parser.parse_args(["--baseline-root", str(PROJECT_ROOT)])) is None
    settings = json_settings(parser.parse_args(["--baseline-root", "/tmp", "--lag-plot", "l.png"]))
    assert settings["baseline_root"] == "/tmp" and settings["lag_plot"] == "l.png"


def test_the_twin_is_fed_frames_as_serve_encodes_them() -> None:
    frames = encoded_frames(2_500, symbols=50, epoch=7)
    assert len(frames) == 2_500
    topic, payload = split_frame(frames[0])
    tick = orjson.loads(payload)
    assert tick["sym"] == topic and tick["epoch"] == 7 and tick["seq"] == 1
    assert {split_frame(frame)[0] for frame in frames} == set(synthetic_symbols(50))
