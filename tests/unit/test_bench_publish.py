"""The publish benchmark's pure parts: frame positions, drop accounting, medians, ratios, notes."""

from __future__ import annotations

from typing import Any

import pytest

from feedsvc.bench import report
from feedsvc.bench.scenarios import publish, publish_report, publish_roles
from feedsvc.protocol.ticks import HEARTBEAT_TOPIC, encode_frame


def test_raw_frames_have_the_fixed_size_and_count_their_ring_index() -> None:
    frames = publish_roles.raw_frames(3)
    assert len(frames) == publish_roles.RING_SIZE
    assert {len(frame) for frame in frames} == {publish_roles.FRAME_BYTES}
    assert frames[4].startswith(b"SYN0001 ")
    assert publish_roles.raw_position(frames[12_345]) == ("counter", 12_345)


def test_feedsvc_position_is_symbol_and_seq_and_skips_heartbeats() -> None:
    tick = {"sym": "SYN0007", "seq": 41, "epoch": 1, "ts": 5, "bid": 1.0, "ask": 1.1}
    assert publish_roles.feedsvc_position(encode_frame("SYN0007", tick)) == ("SYN0007", 41)
    heartbeat = encode_frame(HEARTBEAT_TOPIC, {"ts": 5})
    assert publish_roles.feedsvc_position(heartbeat) is None


def test_count_at_interpolates_and_clamps_to_the_samples() -> None:
    samples = [(10.0, 0), (11.0, 1_000), (13.0, 5_000)]
    assert publish_report.count_at(samples, 10.5) == 500
    assert publish_report.count_at(samples, 12.0) == 3_000
    assert publish_report.count_at(samples, 9.0) == 0
    assert publish_report.count_at(samples, 20.0) == 5_000


def test_unwrap_recovers_the_send_index_past_a_wrap() -> None:
    ring = publish_roles.RING_SIZE
    assert publish_report.unwrap(5, 3 * ring + 2) == 3 * ring + 5
    assert publish_report.unwrap(ring - 3, 4 * ring + 1) == 4 * ring - 3


def _subscriber(start_by_key: dict[str, int], end_by_key: dict[str, int]) -> dict[str, Any]:
    return {
        "window_start": 100.0,
        "window_end": 102.0,
        "received": 900,
        "marks": [(100.0, 0), (101.0, 450), (102.0, 900)],
        "start_by_key": start_by_key,
        "end_by_key": end_by_key,
        "edges_complete": True,
        "mean_frame_bytes": 100.0,
        "subscriber_cpu_s": 1.0,
        "publisher_cpu_s": 1.5,
        "machine_busy_cpu_s": 3.0,
        "machine_steal_cpu_s": 0.2,
    }


def test_feedsvc_drops_are_the_seq_spans_minus_what_was_received() -> None:
    subscriber = _subscriber({"A": 10, "B": 20}, {"A": 510, "B": 520})
    result = publish_report.summarize("feedsvc", subscriber, None, hwm=10_000)
    assert result["sent_in_window"] == 1_000
    assert result["dropped"] == 100
    assert result["drop_fraction"] == pytest.approx(0.1)
    assert result["received_per_s"] == 450
    assert result["received_per_s_each_second"] == [450, 450]
    assert result["publisher_cpu_cores"] == 0.75
    # Busy 3.0 minus publisher 1.5 minus subscriber 1.0, over the 2 s window.
    assert result["other_cpu_cores"] == pytest.approx(0.25)
    assert result["received_per_publisher_cpu_s"] == 600


def test_baseline_drops_use_the_publishers_own_count_to_unwrap() -> None:
    ring = publish_roles.RING_SIZE
    samples = [(99.0, 0), (100.0, 2 * ring + 100), (102.0, 2 * ring + 1_100)]
    subscriber = _subscriber({"counter": 100}, {"counter": 1_100})
    result = publish_report.summarize("baseline", subscriber, samples, hwm=10_000)
    assert result["sent_per_s"] == 500
    assert result["sent_in_window"] == 1_000
    assert result["dropped"] == 100


def _run(kind: str, received_per_s: float, **extra: Any) -> dict[str, Any]:
    figures = {
        "kind": kind,
        "received_per_s": received_per_s,
        "sent_per_s": received_per_s,
        "received_per_publisher_cpu_s": received_per_s,
        "drop_fraction": 0.0,
        "publisher_cpu_cores": 1.0,
        "subscriber_cpu_cores": 0.5,
        "other_cpu_cores": 0.0,
        "steal_cpu_cores": 0.0,
        "mean_frame_bytes": 100.0,
    }
    return {**figures, **extra}


def test_figures_compare_medians_and_adjacent_pairs() -> None:
    runs = [
        _run("baseline", 1_000),
        _run("feedsvc", 600),
        _run("baseline", 800),
        _run("feedsvc", 320),
        _run("baseline", 1_200),
        _run("feedsvc", 500),
    ]
    figures = publish_report.build_figures({}, {}, runs)
    assert figures["ratio_received"] == 0.5
    assert figures["verdict"] == "PASS"
    assert figures["ratio_received_per_pair"] == pytest.approx([0.6, 0.4, 500 / 1_200])
    assert figures["summary"]["baseline"]["spread"] == pytest.approx(0.4)
    assert figures["summary"]["feedsvc"]["received_per_s_runs"] == [600, 320, 500]

    slower = publish_report.build_figures({}, {}, [_run("baseline", 1_000), _run("feedsvc", 499)])
    assert slower["verdict"] == "MISS"


def test_notes_name_noise_other_load_and_drops() -> None:
    steady = publish_report.build_figures({}, {}, [_run("baseline", 1_000), _run("feedsvc", 600)])
    assert publish_report.report_notes(steady["summary"]) == []
    busy = publish_report.build_figures(
        {},
        {},
        [_run("baseline", 1_000, other_cpu_cores=0.5), _run("feedsvc", 600, drop_fraction=0.02)],
    )
    notes = publish_report.report_notes(busy["summary"])
    assert any(note.startswith("baseline: other processes used 0.50 cores") for note in notes)
    assert any(note.startswith("feedsvc: the subscriber missed 2.0%") for note in notes)


def test_serve_settings_put_extra_settings_last_so_they_override() -> None:
    options = publish.build_parser().parse_args(["--symbols", "7", "--hwm", "123"])
    settings = publish.serve_settings("ipc:///tmp/x", options, ["synthetic.rate=500"])
    assert settings[0] == "publisher.endpoints=[ipc:///tmp/x]"
    assert "synthetic.symbols=7" in settings and "publisher.sndhwm=123" in settings
    assert settings.index("synthetic.rate=0") < settings.index("synthetic.rate=500")


def test_invalid_options_are_refused_before_anything_starts() -> None:
    assert publish.main(["--duration", "0"]) == 2
    assert publish.main(["--repeats", "0"]) == 2


def test_report_header_names_the_machine_versions_and_load() -> None:
    facts = {**report.machine_facts(), "load_average_1m_at_start": 1.234}
    lines = report.machine_lines(facts)
    assert lines[0].startswith(f"machine: {facts['cpu_count']} CPUs")
    assert f"pyzmq {facts['pyzmq']}" in lines[2]
    assert lines[2].endswith("load average (1 min) at start 1.23")
