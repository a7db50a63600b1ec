"""What one hop through libzmq's own proxy costs on this machine, without any feedsvc code: the
floor under `feedsvc relay`'s hop (docs/performance.md "The relay tier").

A raw pyzmq PUB sends 100-byte frames stamped with time.time_ns() at --rate per second over tcp
on loopback; one SUB receives them directly, through a bare `zmq.proxy` (XSUB -> PUB, C, in a
process of its own) or through `feedsvc relay` (zmq.proxy_steerable and its control, monitor
and heartbeat sockets). Runs rotate direct / proxy / relay, --repeats rounds of --duration s;
reported: p50 / p99 per mode (median over runs) and each hop's added p50 per round.

Usage: python scripts/bench_proxy_hop.py [--rate 5000] [--duration 5] [--repeats 3] [--json F]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import zmq

from feedsvc.bench.procs import free_tcp_port
from feedsvc.bench.scenarios.relay import RelayProcess

MODES = ("direct", "proxy", "relay")

SETTLE_S = 0.5
PADDING = b"x" * 70


def _proxy(front: str, back: str) -> None:
    context = zmq.Context()
    xsub, pub = context.socket(zmq.XSUB), context.socket(zmq.PUB)
    xsub.connect(front)
    xsub.send(b"\x01")  # subscribe to everything, as the relay does (its PUB keeps clients')
    pub.bind(back)
    zmq.proxy(xsub, pub)  # until the run kills this process


def _publish(endpoint: str, rate: float, duration_s: float) -> None:
    context = zmq.Context()
    pub = context.socket(zmq.PUB)
    pub.bind(endpoint)
    time.sleep(SETTLE_S)
    interval, start = 1.0 / rate, time.monotonic()
    count = int(rate * duration_s)
    for index in range(count):  # bounded: rate x duration frames
        due = start + index * interval
        while time.monotonic() < due:
            pass
        pub.send(b"T %d " % time.time_ns() + PADDING)
    time.sleep(0.2)
    pub.close(linger=0)
    context.term()


def run(mode: str, rate: float, duration_s: float) -> dict[str, float]:
    source, hop = f"tcp://127.0.0.1:{free_tcp_port()}", f"tcp://127.0.0.1:{free_tcp_port()}"
    relay = None
    if mode == "relay":
        relay = RelayProcess(source, hop, Path(tempfile.mkdtemp()) / "relay.log", [])
        relay.wait_until_serving()
    publisher = multiprocessing.Process(target=_publish, args=(source, rate, duration_s))
    proxy = multiprocessing.Process(target=_proxy, args=(source, hop), daemon=True)
    publisher.start()
    if mode == "proxy":
        proxy.start()
    context = zmq.Context()
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"T ")
    sub.setsockopt(zmq.RCVTIMEO, 2000)
    sub.connect(source if mode == "direct" else hop)
    latencies: list[int] = []
    try:
        for _ in range(int(rate * duration_s) + 1):  # bounded: what the publisher sends
            try:
                frame = sub.recv()
            except zmq.Again:
                break
            latencies.append(time.time_ns() - int(frame.split(b" ", 2)[1]))
    finally:
        publisher.join(timeout=duration_s + 10)
        if proxy.is_alive():
            proxy.kill()  # by its own pid
        if relay is not None:
            relay.close()  # by its own pid
        sub.close(linger=0)
        context.term()
    # The first half second settles the connections; measure the rest.
    kept = latencies[int(rate * SETTLE_S) :]
    if len(kept) < 2:
        raise RuntimeError(f"{mode}: only {len(latencies)} frames arrived")
    quantiles = statistics.quantiles(kept, n=100)
    return {"p50_us": quantiles[49] / 1000, "p99_us": quantiles[98] / 1000, "count": len(kept)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=5_000.0)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    options = parser.parse_args(argv)
    rounds: list[dict[str, dict[str, float]]] = []
    for index in range(options.repeats):
        results = {}
        for mode in MODES:
            print(f"bench_proxy_hop: round {index + 1}/{options.repeats} {mode}", file=sys.stderr)
            results[mode] = run(mode, options.rate, options.duration)
        rounds.append(results)
    summary: dict[str, Any] = {}
    for mode in MODES:
        summary[mode] = {
            key: statistics.median(results[mode][key] for results in rounds)
            for key in ("p50_us", "p99_us")
        }
        print(
            f"{mode:>7}: p50 {summary[mode]['p50_us']:.0f} us, p99 {summary[mode]['p99_us']:.0f} us"
        )
    for mode in MODES[1:]:
        added = [results[mode]["p50_us"] - results["direct"]["p50_us"] for results in rounds]
        summary[f"{mode}_adds_p50_us"] = added
        print(
            f"{mode} hop adds (p50, per round): "
            + ", ".join(f"{value:+.0f}" for value in added)
            + " us"
        )
    if options.json:
        document = {"settings": {**vars(options), "json": str(options.json)}, "rounds": rounds}
        options.json.write_text(json.dumps({**document, "summary": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
