"""What CurveZMQ costs: `feedsvc serve` flat out over tcp to one raw SUB, Curve off and on.

Runs alternate (off, on, off, on, ...) so both see the same machine; prints published/s (from the
service's /metrics) and received/s (the SUB), and the ratios ON/OFF of the medians.

    .venv/bin/python scripts/bench_curve.py --duration 6 --repeats 3
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

import zmq

from feedsvc.bench.procs import ServeProcess, free_tcp_ports
from feedsvc.bench.report import median, ratio
from feedsvc.bench.scrape import PUBLISHED_TOTAL, scrape
from feedsvc.curve import CurveClientKeys, connect, create_key_pair

DRAIN_LIMIT: Final = 200_000
FIRST_TICK_TIMEOUT_MS: Final = 20_000
SERVE_START_TIMEOUT_S: Final = 30.0
# (published/s, received/s) of one window.
Run = tuple[float, float]


def _published(metrics_port: int) -> float:
    return scrape(metrics_port)[PUBLISHED_TOTAL]


def serve_settings(port: int, metrics_port: int, keys: Path | None) -> list[str]:
    """`--set` values of one run: tcp only, flat out, no ingest, sync or Kafka; Curve with the
    key files in `keys` when given."""
    settings = [
        f"publisher.endpoints=[tcp://127.0.0.1:{port}]",
        "ingest.endpoint=",
        "sync.endpoint=",
        "recovery.endpoint=",
        "kafka.enabled=false",
        f"metrics.port={metrics_port}",
        "synthetic.rate=0",
    ]
    if keys is not None:
        settings += [
            "curve.enabled=true",
            f"curve.server_secret={keys / 'server.key_secret'}",
            f"curve.authorized_keys={keys / 'authorized'}",
        ]
    return settings


def _run(keys: Path, curve: bool, duration_s: float) -> Run:
    """(published/s, received/s) over one window."""
    port, metrics_port = free_tcp_ports(2)
    settings = serve_settings(port, metrics_port, keys if curve else None)
    service = ServeProcess(
        [part for setting in settings for part in ("--set", setting)],
        keys / f"serve-{'on' if curve else 'off'}.log",
    )
    context = zmq.Context()
    subscriber = context.socket(zmq.SUB)
    subscriber.rcvhwm = 100_000
    subscriber.subscribe(b"")
    client_keys = CurveClientKeys.from_files(keys / "server.key", keys / "client.key_secret")
    connect(subscriber, f"tcp://127.0.0.1:{port}", client_keys if curve else None)
    try:
        service.wait_until_serving(SERVE_START_TIMEOUT_S)
        if not subscriber.poll(FIRST_TICK_TIMEOUT_MS):
            raise SystemExit("bench_curve: no tick from feedsvc serve in 20 s")
        for _ in range(DRAIN_LIMIT):  # start the window with an empty queue
            if not subscriber.poll(0):
                break
            subscriber.recv()
        published_before, started, received = _published(metrics_port), time.monotonic(), 0
        while time.monotonic() - started < duration_s:
            if subscriber.poll(100):
                subscriber.recv()
                received += 1
        elapsed = time.monotonic() - started
        published = _published(metrics_port) - published_before
    finally:
        subscriber.close(linger=0)
        context.term()
        try:
            service.terminate()
        finally:
            service.close()
    return published / elapsed, received / elapsed


def medians(runs: Mapping[bool, Sequence[Run]]) -> dict[bool, tuple[float | None, float | None]]:
    """Curve off (False) and on (True) -> the medians of (published/s, received/s)."""
    return {
        curve: (median(p for p, _ in results), median(r for _, r in results))
        for curve, results in runs.items()
    }


def _per_s(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}/s"


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def summary_lines(runs: Mapping[bool, Sequence[Run]]) -> list[str]:
    """The report's last three lines: the medians of each mode and the ratios ON/OFF."""
    by_mode = medians(runs)
    (off_published, off_received), (on_published, on_received) = by_mode[False], by_mode[True]
    return [
        f"medians, curve off: published {_per_s(off_published)}, received {_per_s(off_received)}",
        f"medians, curve on:  published {_per_s(on_published)}, received {_per_s(on_received)}",
        f"ratio ON/OFF: published {_times(ratio(on_published, off_published))}, "
        f"received {_times(ratio(on_received, off_received))}",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per window")
    parser.add_argument("--repeats", type=int, default=3, help="windows per mode")
    args = parser.parse_args(argv)
    keys = Path(tempfile.mkdtemp(prefix="bench-curve-"))
    runs: dict[bool, list[Run]] = {False: [], True: []}
    try:
        create_key_pair(keys, "server")
        create_key_pair(keys, "client")
        (keys / "authorized").mkdir()
        shutil.copy(keys / "client.key", keys / "authorized")
        for repeat in range(args.repeats):
            for curve in (False, True):
                published, received = _run(keys, curve, args.duration)
                runs[curve].append((published, received))
                print(
                    f"[{repeat + 1}/{args.repeats}] curve {'on ' if curve else 'off'}: "
                    f"published {published:,.0f}/s, received {received:,.0f}/s",
                    flush=True,
                )
    finally:
        shutil.rmtree(keys, ignore_errors=True)
    print("\n".join(summary_lines(runs)))
    return 0
