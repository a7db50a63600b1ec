"""Benchmark: feedsvc's publish rate with the Prometheus metrics server on vs off, same run.

The hot path pays for metrics only per batch (a byte sum and a histogram observation); the
counters are read at scrape time. This measures what that costs: `feedsvc serve` at full speed
(synthetic.rate=0) with one ipc subscriber, alternating metrics.port=0 (off) and a metrics port
scraped once a second (on, as Prometheus would). It reuses the publish scenario's measurement
(feedsvc.bench.scenarios.publish: subscriber process, windows, /proc accounting).

Usage: python scripts/bench_metrics.py [--duration 5] [--repeats 3] [--json FILE]
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from feedsvc.bench.procs import free_tcp_port
from feedsvc.bench.report import Progress, median, ratio
from feedsvc.bench.scenarios import publish
from feedsvc.bench.scrape import scrape

SCRAPE_INTERVAL_S: Final = 1.0
MODES: Final = ("off", "on")

progress = Progress("bench_metrics")


class Scraper:
    """Scrapes /metrics on `port` at most once per `interval_s` when called (publish.measure's
    while_running hook); counts the scrapes that answered."""

    def __init__(
        self,
        port: int,
        interval_s: float = SCRAPE_INTERVAL_S,
        fetch: Callable[[int], object] = scrape,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.port = port
        self.interval_s = interval_s
        self.fetch = fetch
        self.clock = clock
        self.scrapes = 0
        self._last = -float("inf")

    def __call__(self, _publisher_pid: int) -> None:
        if self.clock() - self._last < self.interval_s:
            return
        self._last = self.clock()
        try:
            self.fetch(self.port)
        except OSError:
            return  # not listening yet
        self.scrapes += 1


def _runs(rates: Sequence[float]) -> str:
    return ", ".join(f"{rate:,.0f}" for rate in rates)


def metrics_report(rates: Mapping[str, Sequence[float]], scrapes: int) -> list[str]:
    """The printed report: the median rate with metrics off and on, and their ratio."""
    off, on = median(rates["off"]), median(rates["on"])
    on_off = ratio(on, off)
    return [
        f"metrics off: {off or 0:,.0f} ticks/s (runs {_runs(rates['off'])})",
        f"metrics on:  {on or 0:,.0f} ticks/s (runs {_runs(rates['on'])}), scraped {scrapes} times",
        f"ratio on/off: {'-' if on_off is None else f'{on_off:.3f}'}",
    ]


def metrics_document(rates: Mapping[str, Sequence[float]]) -> dict[str, Any]:
    """What --json holds: every run's rate per mode and the ratio of the medians."""
    return {
        "off": list(rates["off"]),
        "on": list(rates["on"]),
        "ratio": ratio(median(rates["on"]), median(rates["off"])),
    }


def main(argv: list[str] | None = None) -> int:
    options = publish.build_parser().parse_args(argv)
    rates: dict[str, list[float]] = {mode: [] for mode in MODES}
    scrapes = 0
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as folder:
        for run_index in range(options.repeats):
            for mode in MODES:
                port = free_tcp_port()
                scraper = Scraper(port) if mode == "on" else None
                result = publish.measure(
                    "feedsvc",
                    run_index,
                    options,
                    Path(folder),
                    extra_settings=[f"metrics.port={port if mode == 'on' else 0}"],
                    while_running=scraper,
                )
                scrapes += scraper.scrapes if scraper is not None else 0
                rates[mode].append(result["received_per_s"])
                progress(
                    f"run {run_index + 1} metrics {mode}: {result['received_per_s']:,.0f} ticks/s"
                )
    for line in metrics_report(rates, scrapes):
        print(line)
    if options.json:
        options.json.write_text(json.dumps(metrics_document(rates)))
    return 0
