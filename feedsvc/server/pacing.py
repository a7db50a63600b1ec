"""Pacing a feed: a rate in ticks/s, and market-open style bursts on the wall clock."""

from __future__ import annotations

import math


class BurstSchedule:
    """Market-open style spikes: `rate` ticks/s for `duration_s` out of every `every_s`.

    Windows start at whole multiples of `every_s` on the Unix clock (with every_s 60: at the top
    of each minute), so every process given the same settings bursts at the same moments.
    """

    def __init__(self, rate: float, every_s: float, duration_s: float) -> None:
        if not 0 < duration_s < every_s:
            raise ValueError(f"need 0 < duration_s < every_s, got {duration_s} and {every_s}")
        self.rate = rate
        self.every_s = every_s
        self.duration_s = duration_s

    def in_burst(self, unix_s: float) -> bool:
        """Whether the Unix time `unix_s` lies in a burst window."""
        return unix_s % self.every_s < self.duration_s

    def next_change(self, unix_s: float) -> float:
        """The Unix time of the next window start or end after `unix_s`."""
        phase = unix_s % self.every_s
        window_start = unix_s - phase
        if phase < self.duration_s:
            return window_start + self.duration_s
        return window_start + self.every_s

    def windows(self, start_unix_s: float, end_unix_s: float) -> list[tuple[float, float]]:
        """The burst windows overlapping [start, end), clipped to it, in Unix seconds."""
        windows = []
        window_start = start_unix_s - start_unix_s % self.every_s
        while window_start < end_unix_s:
            clipped = (
                max(window_start, start_unix_s),
                min(window_start + self.duration_s, end_unix_s),
            )
            if clipped[0] < clipped[1]:
                windows.append(clipped)
            window_start += self.every_s
        return windows


class RatePacer:
    """How many ticks are due now to hold `rate` ticks/s; rate 0 means as fast as possible.

    Falling behind by more than `max_lag_s` forgets the excess instead of bursting to catch up.
    With `bursts` (and a rate above 0) the rate follows the schedule: `bursts.rate` inside its
    windows, `rate` outside. `now` is a monotonic clock; `unix_offset_s` (Unix time minus that
    clock, taken once) places the schedule's Unix-time windows on it.
    """

    def __init__(
        self,
        rate: float,
        start: float,
        max_batch: int = 512,
        max_lag_s: float = 0.1,
        bursts: BurstSchedule | None = None,
        unix_offset_s: float = 0.0,
    ):
        self.base_rate = rate
        self.max_batch = max_batch
        self.bursts = bursts if rate > 0 else None
        self._max_lag_s = max_lag_s
        self._unix_offset_s = unix_offset_s
        # Without bursts this stays infinite: due() then pays one comparison for the feature.
        self._next_change = math.inf
        self._anchor(rate, start)
        if self.bursts is not None:
            self._follow_schedule(start)

    def _anchor(self, rate: float, start: float) -> None:
        self.rate = rate
        self._start = start
        self._emitted = 0
        self._max_lag_ticks = max(1, int(rate * self._max_lag_s))

    def _follow_schedule(self, now: float) -> None:
        unix_now = now + self._unix_offset_s
        rate = self.bursts.rate if self.bursts.in_burst(unix_now) else self.base_rate
        # The new rate counts from the boundary just crossed, not from when the loop noticed
        # it, and ticks still owed at the old rate up to the boundary are carried over.
        boundary = min(self._next_change, now)
        carried = int((boundary - self._start) * self.rate) - self._emitted
        self._anchor(rate, boundary)
        self._emitted = -max(0, min(carried, self._max_lag_ticks))
        self._next_change = self.bursts.next_change(unix_now) - self._unix_offset_s

    def due(self, now: float) -> int:
        """Ticks to generate now (at most max_batch); counts them as emitted."""
        if now >= self._next_change:
            self._follow_schedule(now)
        if self.rate <= 0:
            return self.max_batch
        owed = int((now - self._start) * self.rate) - self._emitted
        if owed > self._max_lag_ticks:
            self._emitted += owed - self._max_lag_ticks
            owed = self._max_lag_ticks
        count = max(0, min(owed, self.max_batch))
        self._emitted += count
        return count

    def seconds_until_next(self, now: float) -> float:
        """Seconds until at least one more tick is due, or the rate changes (0 when due)."""
        if self.rate <= 0:
            return 0.0
        next_due_at = self._start + (self._emitted + 1) / self.rate
        return max(0.0, min(next_due_at, self._next_change) - now)
