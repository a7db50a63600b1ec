"""The pure parts of `feedsvc loadtest`: burst schedule and pacing, step rule, over-time figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from feedsvc.bench import latency
from feedsvc.bench.latency import NS_PER_S, LatencyRecorder, latency_percentiles
from feedsvc.bench.loadtest.analysis import (
    burst_figures,
    mirror_figures,
    over_time,
    step_sustained,
    step_targets,
)
from feedsvc.bench.loadtest.window import MeasuredWindow, measurement_start
from feedsvc.server.pacing import BurstSchedule, RatePacer


def test_burst_windows_start_at_multiples_of_every_on_the_unix_clock() -> None:
    schedule = BurstSchedule(rate=30_000, every_s=5, duration_s=1)
    assert schedule.in_burst(100.0) and schedule.in_burst(100.999)
    assert not schedule.in_burst(101.0) and not schedule.in_burst(104.999)
    assert schedule.in_burst(105.0)
    assert schedule.next_change(100.2) == 101.0
    assert schedule.next_change(101.0) == 105.0
    assert schedule.next_change(104.5) == 105.0
    # Clipped to the span asked for; a window cut at both ends is kept if anything is left.
    assert schedule.windows(100.5, 111.0) == [(100.5, 101.0), (105.0, 106.0), (110.0, 111.0)]
    assert schedule.windows(101.0, 105.0) == []


def test_burst_schedule_rejects_windows_as_long_as_the_period() -> None:
    with pytest.raises(ValueError, match="duration_s < every_s"):
        BurstSchedule(rate=1, every_s=2, duration_s=2)


def test_pacer_follows_the_burst_schedule() -> None:
    # Rate 1000/s, 5000/s in [10, 11) of every 10 s; the monotonic clock reads Unix time - 100.
    schedule = BurstSchedule(rate=5_000, every_s=10, duration_s=1)
    pacer = RatePacer(
        1_000, start=-91.0, max_batch=100_000, max_lag_s=10, bursts=schedule, unix_offset_s=100.0
    )
    assert pacer.rate == 1_000
    assert pacer.due(-90.5) == 500
    assert pacer.seconds_until_next(-90.5) == pytest.approx(0.001)
    # The burst starts at Unix 10 (monotonic -90): 0.5 s owed at 1000/s before it, 0.5 s at
    # 5000/s since.
    assert pacer.due(-89.5) == 500 + 2_500
    assert pacer.rate == 5_000
    assert pacer.due(-89.0) == 2_500
    # Back to 1000/s at Unix 11.
    assert pacer.due(-88.5) == 500
    assert pacer.rate == 1_000


def test_pacer_wakes_for_the_burst_start() -> None:
    schedule = BurstSchedule(rate=5_000, every_s=10, duration_s=1)
    pacer = RatePacer(0.1, start=1.0, bursts=schedule)
    assert pacer.due(1.5) == 0
    # The next tick at 0.1/s is due at 11; the burst starts at 10.
    assert pacer.seconds_until_next(9.5) == pytest.approx(0.5)


def test_pacer_without_bursts_or_at_full_speed_ignores_the_schedule() -> None:
    schedule = BurstSchedule(rate=5_000, every_s=10, duration_s=1)
    flat_out = RatePacer(0, start=0.0, max_batch=64, bursts=schedule)
    assert flat_out.due(10.5) == 64
    assert flat_out.seconds_until_next(10.5) == 0.0
    steady = RatePacer(1_000, start=0.0, max_batch=100_000, max_lag_s=100)
    assert steady.due(10.5) == 10_500


def test_step_targets_rise_by_the_factor_from_the_rate_or_10k() -> None:
    assert step_targets(5_000, 1.5, 4) == [5_000, 7_500, 11_250, 16_875]
    assert step_targets(0, 2, 3) == [10_000, 20_000, 40_000]
    assert step_targets(1_000, 1.1, 3) == [1_000, 1_100, 1_210]


@pytest.mark.parametrize(
    ("target", "achieved", "gaps", "sustained"),
    [
        (10_000, 10_000.0, 0, True),
        (10_000, 9_500.0, 0, True),
        (10_000, 9_499.0, 0, False),
        (10_000, 10_000.0, 1, False),
        (10_000, None, 0, False),
    ],
)
def test_step_is_sustained_at_95_percent_of_target_without_gaps(
    target: float, achieved: float | None, gaps: int, sustained: bool
) -> None:
    assert step_sustained(target, achieved, gaps) is sustained


def test_measurement_starts_on_a_whole_second_at_the_end_of_a_burst() -> None:
    assert measurement_start(100.1, None) == 101
    assert measurement_start(100.9, None) == 102  # leaves the subscribers time to settle
    bursts = BurstSchedule(rate=1, every_s=5, duration_s=1)
    for now in (100.0, 101.5, 103.9, 105.95):
        start = measurement_start(now, bursts)
        assert start % 5 == 1 and now < start <= now + 5.3, (now, start)
        assert bursts.in_burst(start - 0.5) and not bursts.in_burst(start)


def test_mirror_figures_read_the_prometheus_exposition() -> None:
    exposition = (
        "# HELP feedsvc_mirror_lag_seconds Estimated seconds the Kafka mirror is behind.\n"
        "# TYPE feedsvc_mirror_lag_seconds gauge\n"
        "feedsvc_mirror_lag_seconds 0.25\n"
        "feedsvc_mirror_queue_ticks 1234.0\n"
        "feedsvc_mirror_delivered_total 5.0e+04\n"
        "feedsvc_mirror_delivered_created 1.7e+09\n"
    )
    assert mirror_figures(exposition) == {
        "mirror_lag_s": 0.25,
        "mirror_queue_ticks": 1234.0,
        "mirror_delivered_total": 50_000.0,
    }
    assert mirror_figures("feedsvc_mirror_lag_seconds NaNx\n") == {
        "mirror_lag_s": None,
        "mirror_queue_ticks": None,
        "mirror_delivered_total": None,
    }


@pytest.mark.parametrize("hdr", [True, False], ids=["hdrhistogram", "raw-values"])
def test_latency_recorder_files_ticks_under_their_receive_second(
    hdr: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if hdr:
        pytest.importorskip("hdrh")
    else:
        monkeypatch.setattr(latency, "hdr_available", lambda: False)
    recorder = LatencyRecorder()
    for received_s, latency_us in ((100, 10), (100, 30), (101, 20), (102, 40), (102, 50)):
        received_ns = received_s * NS_PER_S + 500_000_000
        recorder.record(received_ns, received_ns - latency_us * 1000)
    dumps = recorder.dump()
    assert {second: dump["count"] for second, dump in dumps.items()} == {
        "100": 2,
        "101": 1,
        "102": 2,
    }
    assert all(("hdr" in dump) is hdr for dump in dumps.values())
    merged = latency_percentiles(list(dumps.values()))
    assert (merged["count"], merged["p50"], merged["max"]) == (5, 30, 50)


def raw_dump(*latencies_us: int) -> dict[str, Any]:
    return {"count": len(latencies_us), "raw": list(latencies_us)}


def test_over_time_and_burst_figures_per_measured_second() -> None:
    # Two subscribers, seconds 99 (before the window) to 103; the window is 100..102.
    first = {str(s): raw_dump(*[10] * 4) for s in (99, 100, 102, 103)} | {
        "101": raw_dump(*[90] * 11, 80)
    }
    second = {str(s): raw_dump(*[20] * 4) for s in (100, 102)} | {"101": raw_dump(*[80] * 12)}
    window = MeasuredWindow(100, 3.5, BurstSchedule(rate=12, every_s=2, duration_s=1))
    rows = over_time([first, second], window)
    assert [row["t_s"] for row in rows] == [0, 1, 2]
    assert [row["received"] for row in rows] == [8, 24, 8]
    assert [row["received_per_subscriber"] for row in rows] == [4, 12, 4]
    assert [row["in_burst"] for row in rows] == [True, False, True]
    # Merged over both subscribers: 13 ticks at 80 us, 11 at 90 us.
    assert (rows[1]["p50"], rows[1]["max"]) == (80, 90)
    figures = burst_figures([first, second], window)
    # Windows at Unix 100 and 102; the part second 103..103.5 is not measured whole.
    assert [(w["start_s"], w["end_s"]) for w in figures["windows"]] == [(0, 1), (2, 3)]
    assert figures["in_bursts"]["received_per_s"] == 4
    assert figures["outside"]["received_per_s"] == 12
    assert figures["outside"]["latency_us"]["max"] == 90


def test_plots_from_a_report(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from feedsvc.bench.loadtest.plots import write_plots

    latency = {"p50": 50, "p99": 90, "p999": 120, "max": 200, "count": 10}
    settings = {
        "profile": "steady",
        "rate": 1000.0,
        "duration_s": 2.0,
        "symbols": 5,
        "subscribers": 1,
        "slow": 0,
        "transport": "ipc",
        "mirror": True,
    }
    rows = [
        {"t_s": t, "received": 1000, "received_per_subscriber": 1000.0, "in_burst": False}
        | {name: latency[name] for name in ("p50", "p99", "p999", "max")}
        for t in (0, 1)
    ]
    samples = [
        {"t_s": t, "mirror_lag_s": lag, "mirror_queue_ticks": lag * 1000}
        for t, lag in ((1.0, 0.02), (2.0, 0.05))
    ]
    section = {"over_time": rows, "publisher": {"samples": samples}}
    paths = write_plots({"settings": settings, "feedsvc": section}, tmp_path / "steady")
    assert sorted(path.name for path in paths) == [
        "latency.png",
        "mirror_lag.png",
        "throughput.png",
    ]
    steps = [
        {"target_rate": 1000.0, "publish_rate": 1000.0, "latency_us": latency, "sustained": True},
        {"target_rate": 1500.0, "publish_rate": 1200.0, "latency_us": latency, "sustained": False},
    ]
    step_settings = settings | {"profile": "step", "step_first_rate": 1000.0, "step_factor": 1.5}
    step_section = {"steps": steps, "max_sustained_rate": 1000.0, "stopped_by": "not_sustained"}
    report = {"settings": step_settings, "feedsvc": step_section, "baseline": step_section}
    paths = write_plots(report, tmp_path / "step")
    assert [path.name for path in paths] == ["steps.png"]
    for path in tmp_path.glob("*/*.png"):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
