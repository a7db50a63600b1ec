"""Benchmark: feedsvc's publish rate with the Prometheus metrics server on vs off, same run.

The hot path pays for metrics only per batch (a byte sum and a histogram observation); the
counters are read at scrape time. This measures what that costs: `feedsvc serve` at full speed
(synthetic.rate=0) with one ipc subscriber, alternating metrics.port=0 (off) and a metrics port
scraped once a second (on, as Prometheus would). It reuses scripts/bench_publish.py's
measurement (subscriber process, windows, /proc accounting).

Usage: python scripts/bench_metrics.py [--duration 5] [--repeats 3] [--json FILE]
"""

from __future__ import annotations

import json
import socket
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import bench_publish

SCRAPE_INTERVAL_S = 1.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    options = bench_publish.build_parser().parse_args(argv)
    rates: dict[str, list[float]] = {"off": [], "on": []}
    scrapes = 0
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as folder:
        for run_index in range(options.repeats):
            for mode in ("off", "on"):
                port = _free_port()
                last_scrape = [0.0]

                def scrape(
                    _pid: int, port: int = port, last_scrape: list[float] = last_scrape
                ) -> None:
                    nonlocal scrapes
                    if time.monotonic() - last_scrape[0] < SCRAPE_INTERVAL_S:
                        return
                    last_scrape[0] = time.monotonic()
                    try:
                        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2):
                            scrapes += 1
                    except OSError:
                        pass  # not listening yet

                result = bench_publish.measure(
                    "feedsvc",
                    run_index,
                    options,
                    Path(folder),
                    extra_settings=[f"metrics.port={port if mode == 'on' else 0}"],
                    while_running=scrape if mode == "on" else None,
                )
                rates[mode].append(result["received_per_s"])
                print(
                    f"bench_metrics: run {run_index + 1} metrics {mode}: "
                    f"{result['received_per_s']:,.0f} ticks/s",
                    file=sys.stderr,
                )
    off, on = statistics.median(rates["off"]), statistics.median(rates["on"])
    print(f"metrics off: {off:,.0f} ticks/s (runs {', '.join(f'{r:,.0f}' for r in rates['off'])})")
    print(
        f"metrics on:  {on:,.0f} ticks/s (runs {', '.join(f'{r:,.0f}' for r in rates['on'])}),"
        f" scraped {scrapes} times"
    )
    print(f"ratio on/off: {on / off:.3f}")
    if options.json:
        options.json.write_text(
            json.dumps({"off": rates["off"], "on": rates["on"], "ratio": on / off})
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
