"""The relay benchmark's pure parts (feedsvc.bench.scenarios.relay_analysis): the raw source's
frames, the split of subscribers over processes and relays, run summaries, the hop verdict, the
capacity step decision and search, the report lines and the plot. No sockets, no processes."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from feedsvc.bench.latency import LatencyRecorder
from feedsvc.bench.scenarios import relay, relay_analysis
from feedsvc.bench.sequence import count_gaps
from feedsvc.protocol.ticks import decode_frame


def _latency_dump(latencies_us: list[int]) -> dict[str, Any]:
    recorder = LatencyRecorder()
    for value in latencies_us:
        recorder.record(10_000_000_000 + value * 1_000, 10_000_000_000)
    return recorder.dump(per_second=False, hdr=False)["all"]


def _socket(received: int, gaps: int = 0, first_tick_at: float | None = 1.0) -> dict[str, Any]:
    return {
        "endpoint": "tcp://127.0.0.1:1",
        "received_in_window": received,
        "published_in_window": received + gaps,
        "gaps": gaps,
        "missed": gaps,
        "first_tick_at": first_tick_at,
    }


def _run(mode: str, p50: float, p99: float = 500.0, serve_ns: float = 20_000.0) -> dict[str, Any]:
    return {
        "mode": mode,
        "latency_us": {"p50": p50, "p99": p99, "p999": p99 * 2, "max": p99 * 3, "count": 10},
        "rate_per_subscriber_median": 5_000.0,
        "rate_per_subscriber_min": 4_990.0,
        "gaps": 0,
        "missed": 0,
        "serve_ns_per_tick": serve_ns,
        "relay_ns_per_tick": None if mode == relay_analysis.DIRECT else 15_000.0,
        "machine_busy_cores": 1.0,
    }


def _step(rate: float, delivered: float, gaps: int = 0, late: int = 0) -> dict[str, Any]:
    return {
        "rate": rate,
        "gaps": gaps,
        "missed": gaps * 3,
        "rate_per_subscriber_min": delivered,
        "late_sockets": late,
        "source_rate": rate,
    }


def test_source_frames_decode_like_serve_ticks_and_count_no_gap() -> None:
    template = relay_analysis.tick_template("SYN0003", epoch=77)
    frames = [template % (seq, 1_700_000_000_000_000_000 + seq) for seq in (1, 2, 3)]
    symbol, tick = decode_frame(frames[1])
    assert symbol == "SYN0003"
    assert list(tick) == ["sym", "bid", "ask", "bid_size", "ask_size", "seq", "epoch", "ts"]
    assert (tick["seq"], tick["epoch"], tick["ts"]) == (2, 77, 1_700_000_000_000_000_002)
    assert count_gaps(frames)["gaps"] == 0
    assert count_gaps([frames[0], frames[2]])["missed"] == 1


def test_subscribers_split_evenly_over_processes_or_are_refused() -> None:
    assert relay_analysis.sockets_per_process(64, 8) == [8] * 8
    assert relay_analysis.sockets_per_process(8, 1) == [1] * 8
    with pytest.raises(ValueError, match="not a multiple"):
        relay_analysis.sockets_per_process(10, 4)
    with pytest.raises(ValueError):
        relay_analysis.sockets_per_process(0, 1)


def test_sockets_are_spread_round_robin_so_each_relay_gets_half() -> None:
    endpoints = relay_analysis.endpoints_for_sockets(64, ["tcp://a", "tcp://b"])
    assert endpoints.count("tcp://a") == endpoints.count("tcp://b") == 32
    # One process's 8 consecutive sockets reach both relays, not one relay per process.
    assert set(endpoints[:8]) == {"tcp://a", "tcp://b"}
    assert relay_analysis.endpoints_for_sockets(3, ["tcp://serve"]) == ["tcp://serve"] * 3
    with pytest.raises(ValueError):
        relay_analysis.endpoints_for_sockets(3, [])


def test_runs_alternate_direct_and_relay() -> None:
    assert relay_analysis.alternating_modes(3) == ["direct", "relay"] * 3
    assert relay_analysis.alternating_modes(0) == []


def test_capacity_rates_double_up_to_the_bound() -> None:
    assert relay_analysis.capacity_rates(20_000, 320_000) == [
        20_000,
        40_000,
        80_000,
        160_000,
        320_000,
    ]
    assert relay_analysis.capacity_rates(20_000, 100_000) == [20_000, 40_000, 80_000]
    assert relay_analysis.capacity_rates(20_000, 5_000) == [5_000]
    assert len(relay_analysis.capacity_rates(1, 1e12)) == relay_analysis.MAX_STEPS


def test_a_step_passes_only_gap_free_at_95_percent_of_the_target() -> None:
    assert relay_analysis.step_outcome(_step(40_000, 38_000), 40_000)[0] is True
    passed, why = relay_analysis.step_outcome(_step(40_000, 37_999), 40_000)
    assert passed is False and "slowest subscriber" in why
    passed, why = relay_analysis.step_outcome(_step(40_000, 40_000, gaps=2), 40_000)
    assert passed is False and "2 gaps" in why
    passed, why = relay_analysis.step_outcome(_step(40_000, 40_000, late=1), 40_000)
    assert passed is False and "before the window" in why
    slow_source = {**_step(40_000, 20_000), "source_rate": 21_000.0}
    assert "the source sent only 21,000/s" in relay_analysis.step_outcome(slow_source, 40_000)[1]


def test_the_search_stops_each_mode_at_its_first_failure_and_interleaves() -> None:
    # Direct keeps up to 80k, the relay to 40k; a step past a mode's failure must never run.
    limits = {relay_analysis.DIRECT: 80_000, relay_analysis.RELAY: 40_000}
    calls: list[tuple[str, float]] = []

    def run_step(mode: str, rate: float) -> dict[str, Any]:
        calls.append((mode, rate))
        return _step(rate, rate if rate <= limits[mode] else rate * 0.5)

    rates = relay_analysis.capacity_rates(20_000, 640_000)
    steps = relay_analysis.capacity_search(rates, relay_analysis.MODES, run_step)
    assert calls == [
        ("direct", 20_000),
        ("relay", 20_000),
        ("direct", 40_000),
        ("relay", 40_000),
        ("direct", 80_000),
        ("relay", 80_000),
        ("direct", 160_000),
    ]
    assert [step["passed"] for step in steps[relay_analysis.RELAY]] == [True, True, False]
    summary = relay_analysis.capacity_summary(steps, 640_000)
    assert summary["highest_rate"] == {"direct": 80_000, "relay": 40_000}
    assert summary["relay_to_direct"] == pytest.approx(0.5)
    assert summary["stopped_at_max_rate"] == {"direct": False, "relay": False}


def test_a_mode_that_never_failed_is_reported_as_a_lower_bound() -> None:
    steps = relay_analysis.capacity_search(
        [20_000, 40_000], relay_analysis.MODES, lambda m, r: _step(r, r)
    )
    summary = relay_analysis.capacity_summary(steps, 40_000)
    assert summary["stopped_at_max_rate"] == {"direct": True, "relay": True}
    assert summary["highest_rate"] == {"direct": 40_000, "relay": 40_000}
    failed_first = relay_analysis.capacity_search(
        [20_000], relay_analysis.MODES, lambda m, r: _step(r, 0.0)
    )
    assert relay_analysis.capacity_summary(failed_first, 20_000)["highest_rate"]["relay"] is None


def test_subscriber_results_combine_into_per_socket_rates_and_merged_latency() -> None:
    results = [
        {"sockets": [_socket(10_000), _socket(9_000, gaps=2)], "latency": _latency_dump([10] * 9)},
        {"sockets": [_socket(10_000, first_tick_at=6.0)], "latency": _latency_dump([1_000])},
    ]
    figures = relay_analysis.combine_subscribers(results, window_s=2.0, start_at=5.0)
    assert figures["sockets"] == 3
    assert figures["rate_per_subscriber_min"] == 4_500
    assert figures["rate_per_subscriber_median"] == 5_000
    assert figures["gaps"] == 2
    # Every socket saw every symbol: the ticks published are the largest span, not the sum.
    assert figures["published_in_window"] == 10_000
    assert figures["late_sockets"] == 1
    assert figures["latency_us"]["count"] == 10
    assert figures["latency_us"]["p50"] == 10 and figures["latency_us"]["max"] == 1_000


def test_cpu_per_tick_is_unknown_without_ticks_or_a_measurement() -> None:
    assert relay_analysis.ns_per_tick(0.5, 50_000) == pytest.approx(10_000)
    assert relay_analysis.ns_per_tick(None, 50_000) is None
    assert relay_analysis.ns_per_tick(0.5, 0) is None


def test_mode_summary_takes_medians_and_ranges_over_runs() -> None:
    summary = relay_analysis.summarize_mode(
        [_run("relay", 300), _run("relay", 100, serve_ns=10_000), _run("relay", 200)]
    )
    assert summary["p50_us"] == {"median": 200, "min": 100, "max": 300}
    assert summary["serve_ns_per_tick"]["median"] == 20_000
    assert summary["relay_ns_per_tick"]["median"] == 15_000
    direct = relay_analysis.summarize_mode([_run("direct", 100)])
    assert direct["relay_ns_per_tick"] == {"median": None, "min": None, "max": None}
    # A subscriber that received nothing is the slowest, not left out.
    starved = {**_run("relay", 100), "rate_per_subscriber_min": 0.0}
    assert (
        relay_analysis.summarize_mode([_run("relay", 100), starved])["rate_per_subscriber_min"]
        == 0.0
    )


def test_the_hop_passes_at_30_us_added_p50_and_misses_beyond() -> None:
    assert relay_analysis.hop_verdict(250.0, 280.0)["verdict"] == "PASS"
    missed = relay_analysis.hop_verdict(250.0, 280.5)
    assert missed["verdict"] == "MISS" and missed["added_p50_us"] == pytest.approx(30.5)
    assert relay_analysis.hop_verdict(None, 280.0)["verdict"] == "UNKNOWN"


def test_hop_summary_uses_the_medians_and_lists_each_pair() -> None:
    runs = [
        _run("direct", 100, p99=400),
        _run("relay", 120, p99=450),
        _run("direct", 200, p99=600),
        _run("relay", 260, p99=700),
        _run("direct", 150, p99=500),
        _run("relay", 150, p99=520),
    ]
    modes = {
        mode: relay_analysis.summarize_mode([r for r in runs if r["mode"] == mode])
        for mode in relay_analysis.MODES
    }
    hop = relay_analysis.hop_summary(modes, runs)
    assert hop["added_p50_us"] == pytest.approx(150 - 150)
    assert hop["added_p99_us"] == pytest.approx(520 - 500)
    assert hop["added_p50_pairs_us"] == [20, 60, 0]
    assert hop["verdict"] == "PASS"


def test_saturated_runs_are_counted_against_the_usable_cpus() -> None:
    runs = [{"machine_busy_cores": 1.95}, {"machine_busy_cores": 1.2}, {}]
    assert relay_analysis.saturated_runs(runs, cpus=2) == 1
    assert relay_analysis.saturated_runs(runs, cpus=4) == 0


def _options(*argv: str) -> argparse.Namespace:
    return relay.build_parser().parse_args(list(argv))


def test_options_are_checked_before_anything_starts() -> None:
    assert relay_analysis.options_error(_options()) is None
    assert (
        relay_analysis.options_error(
            _options("--subscribers", "64", "--relays", "2", "--sockets-per-process", "8")
        )
        is None
    )
    assert "multiple" in relay_analysis.options_error(
        _options("--subscribers", "10", "--sockets-per-process", "4")
    )
    assert "--relays" in relay_analysis.options_error(
        _options("--subscribers", "2", "--relays", "3")
    )
    assert "nothing" in relay_analysis.options_error(_options("--repeats", "0", "--skip-capacity"))
    assert relay.main(["--repeats", "0", "--skip-capacity"]) == 2


def test_the_topology_line_says_sockets_not_processes() -> None:
    line = relay_analysis.topology_line(
        _options("--subscribers", "64", "--sockets-per-process", "8")
    )
    assert "8 processes x 8 SUB socket" in line and "sockets, not processes" in line
    assert "not processes" not in relay_analysis.topology_line(_options())


def _document() -> dict[str, Any]:
    runs = [_run("direct", 100), _run("relay", 160)]
    modes = {
        mode: relay_analysis.summarize_mode([r for r in runs if r["mode"] == mode])
        for mode in relay_analysis.MODES
    }
    steps = relay_analysis.capacity_search(
        [20_000, 40_000], relay_analysis.MODES, lambda m, r: _step(r, r if m == "direct" else r / 2)
    )
    return {
        "settings": {"rate": 5_000, "relays": 1, "repeats": 1, "duration_s": 8},
        "topology": "8 subscribers = 8 processes x 1 SUB socket(s) each",
        "runs": runs,
        "modes": modes,
        "saturated_runs": 1,
        "hop": relay_analysis.hop_summary(modes, runs),
        "capacity": {
            "subscribers": 8,
            "step_s": 3.0,
            "rates": [20_000, 40_000],
            "steps": steps,
            "summary": relay_analysis.capacity_summary(steps, 40_000),
        },
    }


def test_report_lines_carry_the_verdict_the_warning_and_the_ratio() -> None:
    document = _document()
    latency = "\n".join(relay_analysis.latency_lines(document))
    assert "p50 60.0 us (target <= +30 us)   MISS" in latency
    assert "warning: 1 of 2 runs" in latency
    capacity = "\n".join(relay_analysis.capacity_lines(document))
    assert "direct (baseline) at least 40,000 ticks/s" in capacity
    assert "relay / direct -" in capacity  # the relay failed its first step: no rate, no ratio


def test_the_plot_is_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from feedsvc.bench.scenarios.relay_plot import plot

    path = tmp_path / "relay.png"
    messages: list[str] = []
    plot(_document(), path, messages.append)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert messages == [f"plot written to {path}"]
