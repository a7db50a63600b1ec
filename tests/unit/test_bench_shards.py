"""The shards benchmark's pure parts (feedsvc.bench.scenarios.shards_analysis): the shard layout
per mode, one run's figures from two snapshots, medians per mode, the two / one ratio, the
capacity arithmetic and the report lines, against hand-computed figures. No processes."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from feedsvc.bench.scenarios import shards_analysis
from feedsvc.bench.scenarios.shards_analysis import ONE, TWO, Shard


def _subscriber(received_per_s: float, gaps: int = 0) -> dict[str, Any]:
    """What relay_analysis.combine_subscribers gives for one SUB socket."""
    return {
        "rate_per_subscriber_median": received_per_s,
        "gaps": gaps,
        "missed": gaps * 10,
        "late_sockets": 0,
        "latency_us": {"p50": 100.0, "p99": 900.0, "p999": 2_000.0, "max": 3_000.0, "count": 9},
    }


def _snapshots() -> tuple[dict[str, Any], dict[str, Any]]:
    """Mode two over 6 s: east 600,000 ticks (100,000/s) on 0.5 core, west 360,000 (60,000/s)
    on 0.5 core, the relay 0.2 core, the subscriber 0.4 core, the machine 1.9 cores busy; the
    relay's counter 400,000 messages in 4 s with 0.8 CPU s."""
    before = {
        "cpu_at": 10.0,
        "cpu_s": {"serve-east": 1.0, "serve-west": 2.0, "relay": 0.5, "subscriber": 0.0},
        "machine": [100.0, 0.0],
        "counters": {
            "serve-east": {"count": 1_000.0, "at": 10.0, "scrape_s": 0.01},
            "serve-west": {"count": 0.0, "at": 10.1, "scrape_s": 0.02},
            "relay_in": {"count": 5_000.0, "at": 11.0, "scrape_s": 0.05, "cpu_s": 0.7},
        },
    }
    after = {
        "cpu_at": 16.0,
        "cpu_s": {"serve-east": 4.0, "serve-west": 5.0, "relay": 1.7, "subscriber": 2.4},
        "machine": [111.4, 0.6],
        "counters": {
            "serve-east": {"count": 601_000.0, "at": 16.0, "scrape_s": 0.03},
            "serve-west": {"count": 360_000.0, "at": 16.1, "scrape_s": 0.01},
            "relay_in": {"count": 405_000.0, "at": 15.0, "scrape_s": 0.06, "cpu_s": 1.5},
        },
    }
    return before, after


def _run(mode: str, aggregate: float, ticks_per_core_s: float = 300_000.0) -> dict[str, Any]:
    """A run's figures as run_figures gives them, with the fields the summaries read."""
    serve = "serve" if mode == ONE else "serve-east"
    return {
        "mode": mode,
        "published_per_s": {serve: aggregate},
        "aggregate_published_per_s": aggregate,
        "cores": {serve: 0.8, "relay": 0.3, "subscriber": 0.6},
        "serve_ticks_per_core_s": {serve: ticks_per_core_s},
        "other_cores": 0.1,
        "machine_busy_cores": 1.8,
        "relay_in_per_s": aggregate,
        "relay_ns_per_tick": 1_000.0,
        "received_per_s": aggregate / 2,
        "delivered_share": 0.5,
        "subscriber_ns_per_tick": 5_000.0,
        "role_gaps": 3,
        "role_missed": 30,
        "late_sockets": 0,
    }


def test_mode_one_is_one_unnamed_serve_and_mode_two_splits_the_symbols() -> None:
    assert shards_analysis.shard_layout(ONE, 50) == [Shard("", "SYN", 50)]
    assert shards_analysis.shard_layout(TWO, 50) == [
        Shard("east", "EAST", 25),
        Shard("west", "WEST", 25),
    ]
    assert [shard.symbols for shard in shards_analysis.shard_layout(TWO, 51)] == [25, 26]
    assert [shard.process for shard in shards_analysis.shard_layout(TWO, 4)] == [
        "serve-east",
        "serve-west",
    ]
    assert shards_analysis.shard_layout(ONE, 4)[0].process == "serve"
    with pytest.raises(ValueError, match="unknown mode"):
        shards_analysis.shard_layout("three", 50)


def test_runs_alternate_one_and_two() -> None:
    assert shards_analysis.alternating_modes(2) == [ONE, TWO, ONE, TWO]


def test_a_counter_rate_uses_its_own_read_times() -> None:
    before, after = {"count": 1_000.0, "at": 10.0}, {"count": 4_000.0, "at": 12.0}
    assert shards_analysis.counter_rate(before, after) == pytest.approx(1_500.0)
    assert shards_analysis.counter_rate(before, {"count": 9.0, "at": 10.0}) is None


def test_run_figures_from_two_snapshots() -> None:
    before, after = _snapshots()
    figures = shards_analysis.run_figures(
        before, after, ["serve-east", "serve-west"], _subscriber(40_000.0, gaps=2), cpus=2
    )
    approx = pytest.approx
    assert figures["published_per_s"] == {
        "serve-east": approx(100_000),
        "serve-west": approx(60_000),
    }
    assert figures["aggregate_published_per_s"] == approx(160_000)
    assert figures["cores"] == {
        "serve-east": approx(0.5),
        "serve-west": approx(0.5),
        "relay": approx(0.2),
        "subscriber": approx(0.4),
    }
    assert figures["share_of_machine"]["serve-east"] == approx(0.25)
    assert figures["share_of_machine"]["subscriber"] == approx(0.2)
    assert figures["machine_busy_cores"] == approx(1.9)
    assert figures["machine_steal_cores"] == approx(0.1)
    assert figures["other_cores"] == approx(1.9 - 1.6)
    assert figures["serve_ticks_per_core_s"] == {
        "serve-east": approx(200_000),
        "serve-west": approx(120_000),
    }
    assert figures["relay_in_per_s"] == approx(100_000)
    assert figures["relay_span_s"] == approx(4.0)
    # 0.8 CPU s over 400,000 forwarded messages.
    assert figures["relay_ns_per_tick"] == approx(2_000)
    assert figures["received_per_s"] == 40_000.0
    assert figures["delivered_share"] == approx(0.25)
    # 0.4 core over 40,000 received ticks/s.
    assert figures["subscriber_ns_per_tick"] == approx(10_000)
    assert figures["role_gaps"] == 2
    assert figures["slowest_scrape_s"] == approx(0.06)


def test_without_the_relays_refreshes_its_figures_are_unknown_not_zero() -> None:
    before, after = _snapshots()
    after["counters"]["relay_in"] = None
    figures = shards_analysis.run_figures(
        before, after, ["serve-east", "serve-west"], _subscriber(40_000.0), cpus=2
    )
    assert figures["relay_in_per_s"] is None
    assert figures["relay_ns_per_tick"] is None
    assert figures["aggregate_published_per_s"] == pytest.approx(160_000)


def test_the_ratio_is_the_median_of_per_pair_ratios_whatever_the_order() -> None:
    runs = [
        _run(ONE, 100.0),
        _run(TWO, 120.0),
        _run(TWO, 90.0),
        _run(ONE, 100.0),
        _run(ONE, 200.0),
        _run(TWO, 220.0),
    ]
    assert shards_analysis.pair_ratios(runs, "aggregate_published_per_s") == [
        pytest.approx(1.2),
        pytest.approx(0.9),
        pytest.approx(1.1),
    ]
    assert shards_analysis.two_to_one(runs)["median"] == pytest.approx(1.1)
    # A pair of one mode only is no pair.
    assert shards_analysis.pair_ratios([_run(ONE, 1.0), _run(ONE, 2.0)], "x") == []


def test_a_mode_summary_has_medians_ranges_and_shares() -> None:
    summary = shards_analysis.summarize_mode(
        [_run(TWO, 100.0), _run(TWO, 300.0), _run(TWO, 200.0)], cpus=2
    )
    assert summary["runs"] == 3
    assert summary["aggregate_published_per_s"] == {"median": 200.0, "min": 100.0, "max": 300.0}
    assert summary["published_per_s"]["serve-east"]["median"] == 200.0
    assert summary["share_of_machine"]["relay"]["median"] == pytest.approx(0.15)
    assert summary["role_gaps"] == 9


def test_capacity_arithmetic_for_sixteen_cores() -> None:
    # 100,000 ticks per core-second, 2 us of relay CPU per tick: a shard costs the relay
    # 0.2 core, one relay carries 5 shards; 14 cores: 11 shards + ceil(2.2) = 3 relay cores.
    plan = shards_analysis.capacity_plan(
        100_000.0, 2e-6, host_cores=16, reserved_cores=2, subscriber_cpu_s_per_tick=4e-6
    )
    assert plan["shard_rate"] == pytest.approx(100_000)
    assert plan["relay_cores_per_shard"] == pytest.approx(0.2)
    assert plan["relay_capacity"] == pytest.approx(500_000)
    assert plan["shards_per_relay"] == 5
    assert (plan["shards"], plan["relays"], plan["relay_cores_total"]) == (11, 3, 3)
    assert plan["cores_used"] == 16
    assert plan["aggregate_rate"] == pytest.approx(1_100_000)
    assert plan["relay_bound"] is False
    # One subscriber of all 1.1 M ticks/s at 4 us each.
    assert plan["subscriber_cores_for_everything"] == pytest.approx(4.4)


def test_a_shard_faster_than_a_relay_is_held_to_the_relays_rate() -> None:
    # A relay forwards 500,000/s at most: each shard gets its own relay, a whole core of it.
    plan = shards_analysis.capacity_plan(1_000_000.0, 2e-6, host_cores=16, reserved_cores=2)
    assert plan["relay_bound"] is True
    assert plan["shard_rate"] == pytest.approx(500_000)
    assert plan["shards_per_relay"] == 1
    assert (plan["shards"], plan["relays"], plan["relay_cores_total"]) == (7, 7, 7)
    # 7 + 7 + 2 reserved = 16; an eighth shard would need 2 more cores.
    assert plan["cores_used"] == 16
    assert plan["aggregate_rate"] == pytest.approx(3_500_000)
    assert plan["subscriber_cores_for_everything"] is None
    with pytest.raises(ValueError):
        shards_analysis.capacity_plan(0.0, 2e-6)


def test_capacity_inputs_take_the_shard_from_mode_one_and_the_relay_from_all_runs() -> None:
    runs = [_run(ONE, 1.0, 300_000.0), _run(TWO, 1.0, 50_000.0), _run(ONE, 1.0, 500_000.0)]
    runs[1]["relay_ns_per_tick"] = 4_000.0
    inputs = shards_analysis.capacity_inputs(runs)
    assert inputs["shard_ticks_per_core_s"] == pytest.approx(400_000)
    assert inputs["relay_cpu_s_per_tick"] == pytest.approx(1e-6)
    assert inputs["subscriber_cpu_s_per_tick"] == pytest.approx(5e-6)
    section = shards_analysis.capacity_section(runs, host_cores=16, reserved_cores=2)
    # 400,000/s per shard costs 0.4 relay core: 10 shards + 4 relay cores fill the 14.
    assert (section["plan"]["shards"], section["plan"]["relay_cores_total"]) == (10, 4)


def test_report_lines_state_the_ratio_the_split_and_the_assumptions() -> None:
    runs = [_run(ONE, 100_000.0), _run(TWO, 110_000.0)]
    document = {
        "settings": {"symbols": 50, "repeats": 1, "duration_s": 6.0, "warmup_s": 1.5},
        "machine": {"cpus_usable": 2},
        "modes": {
            mode: shards_analysis.summarize_mode([run for run in runs if run["mode"] == mode], 2)
            for mode in (ONE, TWO)
        },
        "two_to_one": shards_analysis.two_to_one(runs),
        "capacity": shards_analysis.capacity_section(runs, 16, 2),
    }
    text = "\n".join(shards_analysis.report_lines(document))
    assert "two / one: 1.100" in text
    assert "serve-east 40%" in text
    assert "2 left for subscribers and the OS" in text
    assert "computed from the medians above" in text
    # 300,000/s per shard costs 0.3 relay core: 10 + ceil(3.0) + 2 = 15; an 11th needs 17.
    assert "10 shards (10 cores) + 4 relay(s) (3 cores) + 2 reserved = 15 of 16 cores" in text
    two_row = next(line for line in text.splitlines() if line.startswith("  two "))
    assert two_row.endswith(f" {document['modes']['two']['role_gaps']}")


def test_bad_options_are_refused_with_a_message() -> None:
    good = {"repeats": 3, "duration": 6.0, "warmup": 1.5, "symbols": 50}
    good |= {"host_cores": 16, "reserved_cores": 2.0}
    assert shards_analysis.options_error(argparse.Namespace(**good)) is None
    for change in ({"repeats": 0}, {"duration": 0.0}, {"symbols": 1}, {"reserved_cores": 16}):
        assert shards_analysis.options_error(argparse.Namespace(**(good | change)))
