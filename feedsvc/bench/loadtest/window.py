"""When a `feedsvc loadtest` run measures: the whole Unix seconds of its window and the burst
windows in it, the same for the service and the baseline."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Final

from feedsvc.server.pacing import BurstSchedule

# Time for the subscribers to settle after the first tick before the measured seconds begin.
SETTLE_S: Final = 0.2


def burst_schedule(args: argparse.Namespace) -> BurstSchedule | None:
    """The run's bursts (--profile burst), or None."""
    if args.profile != "burst":
        return None
    return BurstSchedule(args.rate * args.burst_factor, args.burst_every, args.burst_duration)


@dataclass(frozen=True)
class MeasuredWindow:
    """The measured part of one run: whole Unix seconds from `start_unix_s`, and its bursts."""

    start_unix_s: int
    duration_s: float
    bursts: BurstSchedule | None = None

    @property
    def seconds(self) -> range:
        """The Unix seconds measured whole (a trailing part second is left out)."""
        return range(self.start_unix_s, self.start_unix_s + int(self.duration_s))

    def burst_windows(self) -> list[tuple[float, float]]:
        """The burst windows in the window, in seconds since its start."""
        if self.bursts is None:
            return []
        start, end = self.start_unix_s, self.start_unix_s + self.duration_s
        return [(begin - start, stop - start) for begin, stop in self.bursts.windows(start, end)]


def measurement_start(now_unix_s: float, bursts: BurstSchedule | None) -> int:
    """The Unix second the measured seconds begin at.

    A whole second, so each subscriber's per-second histograms are exactly the measured seconds;
    with (whole-second) bursts, the end of a burst window, so every run of the invocation (feedsvc,
    baseline) sees the windows at the same offsets.
    """
    start = math.ceil(now_unix_s + SETTLE_S)
    if bursts is not None:
        start += round(bursts.duration_s - start) % round(bursts.every_s)
    return start
