"""The pure parts of `feedsvc loadtest`: burst schedule and pacing, step rule, over-time figures."""

from __future__ import annotations

import pytest

from feedsvc.ingest import BurstSchedule, RatePacer


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
