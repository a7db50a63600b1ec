#!/usr/bin/env python3
"""What CurveZMQ costs: `feedsvc serve` flat out over tcp to one raw SUB, Curve off and on.

Runs alternate (off, on, off, on, ...) so both see the same machine; prints published/s (from the
service's /metrics) and received/s (the SUB), and the ratios ON/OFF of the medians.

    .venv/bin/python scripts/bench_curve.py --duration 6 --repeats 3
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import zmq

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from feedsvc.curve import CurveClientKeys, connect, create_key_pair  # noqa: E402
from tests.conftest import free_tcp_port, metric_samples  # noqa: E402

DRAIN_LIMIT = 200_000


def _published(metrics_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as reply:
        return metric_samples(reply.read())["feedsvc_ticks_published_total"]


def _run(keys: Path, curve: bool, duration_s: float) -> tuple[float, float]:
    """(published/s, received/s) over one window."""
    port, metrics_port = free_tcp_port(), free_tcp_port()
    settings = [
        f"publisher.endpoints=[tcp://127.0.0.1:{port}]",
        "ingest.endpoint=",
        "sync.endpoint=",
        "kafka.enabled=false",
        f"metrics.port={metrics_port}",
        "synthetic.rate=0",
    ]
    if curve:
        settings += [
            "curve.enabled=true",
            f"curve.server_secret={keys / 'server.key_secret'}",
            f"curve.authorized_keys={keys / 'authorized'}",
        ]
    args = [sys.executable, "-m", "feedsvc.cli", "serve"]
    for setting in settings:
        args += ["--set", setting]
    service = subprocess.Popen(args, stderr=subprocess.DEVNULL, cwd=PROJECT_ROOT)
    context = zmq.Context()
    subscriber = context.socket(zmq.SUB)
    subscriber.rcvhwm = 100_000
    subscriber.subscribe(b"")
    client_keys = CurveClientKeys.from_files(keys / "server.key", keys / "client.key_secret")
    connect(subscriber, f"tcp://127.0.0.1:{port}", client_keys if curve else None)
    try:
        if not subscriber.poll(20_000):
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
        service.terminate()
        service.wait(timeout=15)
        subscriber.close(linger=0)
        context.term()
    return published / elapsed, received / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per window")
    parser.add_argument("--repeats", type=int, default=3, help="windows per mode")
    args = parser.parse_args()
    keys = Path(tempfile.mkdtemp(prefix="bench-curve-"))
    try:
        create_key_pair(keys, "server")
        create_key_pair(keys, "client")
        (keys / "authorized").mkdir()
        shutil.copy(keys / "client.key", keys / "authorized")
        runs: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
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
    medians = {
        curve: (
            statistics.median(p for p, _ in results),
            statistics.median(r for _, r in results),
        )
        for curve, results in runs.items()
    }
    (off_published, off_received), (on_published, on_received) = medians[False], medians[True]
    print(f"medians, curve off: published {off_published:,.0f}/s, received {off_received:,.0f}/s")
    print(f"medians, curve on:  published {on_published:,.0f}/s, received {on_received:,.0f}/s")
    print(
        f"ratio ON/OFF: published {on_published / off_published:.2f}, "
        f"received {on_received / off_received:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
