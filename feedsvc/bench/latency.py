"""Latency recording for every benchmark: raw values appended in the receive loop, turned into
HdrHistograms (or, without hdrh, plain value lists) only after the measured window, then merged
across processes into percentiles."""

from __future__ import annotations

import collections
import importlib.util
import math
from array import array
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

NS_PER_S: Final = 1_000_000_000
NS_PER_US: Final = 1_000
# One minute: a latency beyond it is a stalled run, recorded as the highest value.
LATENCY_HIGHEST_US: Final = 60_000_000
HDR_SIGNIFICANT_DIGITS: Final = 3
PERCENTILES: Final = (("p50", 50.0), ("p99", 99.0), ("p999", 99.9))


def hdr_available() -> bool:
    return importlib.util.find_spec("hdrh") is not None


def _clamped_us(latency_ns: int) -> int:
    return min(LATENCY_HIGHEST_US, max(1, latency_ns // NS_PER_US))


class LatencyRecorder:
    """Latencies in ns, filed per second of receive time (Unix seconds).

    `record` is an array append (~0.1 us): HdrHistogram's Python `record_value` takes several
    microseconds, which would slow the subscriber being measured, so histograms are built only
    in `dump`.
    """

    def __init__(self) -> None:
        self.values_by_second: dict[int, array[int]] = {}
        self._second = -1
        self._values: array[int] = array("q")

    def record(self, received_ns: int, published_ns: int) -> None:
        """One tick: its latency, filed under the second it was received in."""
        second = received_ns // NS_PER_S
        if second != self._second:
            self._second = second
            self._values = self.values_by_second.setdefault(second, array("q"))
        self._values.append(received_ns - published_ns)

    @property
    def count(self) -> int:
        return sum(len(values) for values in self.values_by_second.values())

    def dump(self, per_second: bool = True, hdr: bool | None = None) -> dict[str, dict[str, Any]]:
        """JSON-able form for the orchestrator: per second (as text; "all" when not
        `per_second`), the count and an encoded HdrHistogram (us) if `hdr` (default: if hdrh
        is installed), else the raw values (us)."""
        groups: dict[str, Iterable[int]]
        if per_second:
            groups = {str(second): values for second, values in self.values_by_second.items()}
        else:
            groups = {"all": (v for values in self.values_by_second.values() for v in values)}
        dumps: dict[str, dict[str, Any]] = {}
        if not (hdr_available() if hdr is None else hdr):
            for key, values in groups.items():
                raw = [_clamped_us(value) for value in values]
                dumps[key] = {"count": len(raw), "raw": raw}
            return dumps
        from hdrh.histogram import HdrHistogram

        histogram = HdrHistogram(1, LATENCY_HIGHEST_US, HDR_SIGNIFICANT_DIGITS)
        for key, values in groups.items():
            # One record call per distinct microsecond value instead of one per tick.
            counts = collections.Counter(_clamped_us(value) for value in values)
            for value_us, count in counts.items():
                histogram.record_value(value_us, count)
            total = sum(counts.values())
            dumps[key] = {"count": total, "hdr": histogram.encode().decode("ascii")}
            histogram.reset()
        return dumps


def latency_percentiles(dumps: Iterable[Mapping[str, Any]]) -> dict[str, float | None]:
    """p50, p99, p999 and max (us) and the count over merged dumps (values of
    `LatencyRecorder.dump`, from any number of processes)."""
    dumps = list(dumps)
    empty: dict[str, float | None] = {"p50": None, "p99": None, "p999": None, "max": None}
    if any("hdr" in dump for dump in dumps):
        from hdrh.histogram import HdrHistogram

        merged = HdrHistogram(1, LATENCY_HIGHEST_US, HDR_SIGNIFICANT_DIGITS)
        for dump in dumps:
            if dump.get("hdr"):
                merged.add(HdrHistogram.decode(dump["hdr"].encode("ascii")))
        if merged.get_total_count() == 0:
            return {**empty, "count": 0}
        figures: dict[str, float | None] = {
            name: merged.get_value_at_percentile(percent) for name, percent in PERCENTILES
        }
        return {**figures, "max": merged.get_max_value(), "count": merged.get_total_count()}
    values = sorted(value for dump in dumps for value in dump.get("raw", []))
    if not values:
        return {**empty, "count": 0}
    figures = {name: percentile(values, percent) for name, percent in PERCENTILES}
    return {**figures, "max": values[-1], "count": len(values)}


def percentile(sorted_values: Sequence[float], percent: float) -> float:
    """Nearest-rank percentile of already sorted values (the value below which `percent` % lie);
    NaN when there are none."""
    if len(sorted_values) == 0:
        return math.nan
    rank = max(1, math.ceil(percent / 100 * len(sorted_values)))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


def percentiles(
    values: Iterable[float], fractions: Sequence[float] = (0.5, 0.99)
) -> dict[str, float | None]:
    """Nearest-rank percentiles ("p50", "p99", "p99.9" ...) of `values`, None when empty."""
    ordered = sorted(values)
    return {
        f"p{fraction * 100:g}": percentile(ordered, fraction * 100) if ordered else None
        for fraction in fractions
    }
