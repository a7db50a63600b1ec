"""Benchmark for issue "slow subscribers": one subscriber reading at 1% of the publish rate.

The issue's contract, measured per transport (ipc and tcp) on this machine:

- the publisher's resident memory stays under a bound derived from its queues and does not grow
  with time;
- the other (fast) subscribers are not slowed: their p99 latency stays within 1.5x of the same
  run without the slow subscriber;
- the slow subscriber, conflating, receives ticks whose age (receive time minus ``ts``) is under
  100 ms at p99; in normal mode every tick it missed is reported as a gap.

Each transport runs three phases, each with its own fresh ``feedsvc serve`` (synthetic feed at
``--rate`` ticks/s over ``--symbols`` symbols, bound to ipc and tcp at once, no ingest, no sync,
no Kafka) and its own subscriber processes (separate processes, not threads: they must not share
a GIL with each other or with this script), all on the one transport:

A  ``--fast`` fast subscribers (feedsvc.client.Subscriber, reading as fast as they can);
B  the same plus one slow subscriber in conflating mode;
C  the same plus one slow subscriber in normal mode.

A slow subscriber calls ``recv()`` on a schedule of rate/100 per second, sleeping in between.
Fast subscribers record the latency (receive ``time.time_ns()`` minus ``ts``) of every tick in the
window, kept raw during the window and turned into an HdrHistogram afterwards (the ``hdrhistogram``
package, if installed; otherwise percentiles of the sorted values, with numpy if available), so
the measurement itself costs a fast subscriber almost nothing per tick.

Why phase C has a catch-up: while the normal-mode subscriber reads at 1%, it works through an ever
older but contiguous backlog (SNDHWM + RCVHWM + kernel buffers hold about 2 s of ticks, which
take about 200 s to read at 1%), so the ticks the publisher dropped only become visible when it
finally receives a later tick of the same symbol. After the window it therefore reads as fast as
it can until it is current again, and then every jump in its per-symbol seqs must match a gap the
client reported, and ``stats.missed`` must equal the ticks published within its seq spans minus
those it received.

The publisher's RSS (VmRSS of /proc/<pid>/status) is sampled every second from the moment the
subscribers start. Its bound is the RSS before any subscriber connected plus, for every
subscriber, a full SNDHWM queue of frames (frame bytes measured, plus libzmq's per-message
overhead): the memory the README's "Dropping, on purpose" promises. Kernel socket buffers are not
part of RSS.

All figures are ratios or bounds within one run, but the p99 latencies are sensitive to other load
on the machine: the script warns when the load average is high and shows, per phase, the CPU used
by the publisher, the subscribers and everything else.

Usage: python scripts/bench_slow_subscriber.py [--rate 10000] [--duration 60] [--fast 2]
           [--transports ipc tcp] [--json FILE] [--plot FILE.png]
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import itertools
import json
import math
import os
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bench_publish
from bench_publish import (
    BenchError,
    _cores,
    _log_tail,
    _stop,
    machine_cpu_seconds,
    machine_facts,
    process_cpu_seconds,
    publisher_command,
)

from feedsvc.client import Gap, Subscriber
from feedsvc.protocol.ticks import encode_frame

TARGET_P99_RATIO = 1.5
TARGET_AGE_P99_MS = 100.0
SLOW_READ_FRACTION = 0.01
DEFAULT_RATE = 10_000.0
# Below this a 1% reader would read less than one tick per second.
MIN_RATE = 100.0
TRANSPORTS = ("ipc", "tcp")
RSS_SAMPLE_INTERVAL_S = 1.0
# RSS counts as flat when the mean of the window's last RSS_EDGE_S is within this of its first's:
# a leak of 2 bytes per tick at 10k ticks/s over 60 s would exceed it.
RSS_GROWTH_LIMIT_KB = 1_024
RSS_EDGE_S = 10.0
# Memory libzmq needs per queued message besides the frame: its 64-byte zmq_msg_t slot in the pipe,
# the ~40-byte header of the message content and the allocator's rounding.
QUEUED_MESSAGE_OVERHEAD_BYTES = 128
# HdrHistogram range in microseconds (1 us to 60 s) and precision.
LATENCY_HIGHEST_US = 60_000_000
HDR_SIGNIFICANT_DIGITS = 3
# Ticks whose encoded size the fast subscribers sample (for the RSS bound).
FRAME_SIZE_SAMPLES = 1_000
SERVE_START_TIMEOUT_S = 30.0
SERVING_LINE = "serving epoch="
# After start-up, before the baseline RSS is taken: imports and first allocations are done.
SETTLE_S = 1.0
# Longest single wait of a subscriber's recv(), so every loop checks its deadline.
RECV_SLICE_S = 0.5
# Phase C's catch-up is over when every symbol delivered a tick this fresh, or at the timeout.
CAUGHT_UP_AGE_MS = 50.0
CATCH_UP_TIMEOUT_S = 30.0
# Beyond the window and the catch-up, how long the subscribers may take to write their results.
FINISH_MARGIN_S = 30.0
POLL_INTERVAL_S = 0.05
LOAD_WARNING = 1.0
OTHER_CPU_WARNING_CORES = 0.2
# The conflating subscriber's age series written to --json is thinned to at most this many points.
MAX_AGE_SERIES_POINTS = 10_000
HISTOGRAM_KINDS = ("auto", "hdr", "raw")


@dataclass(frozen=True)
class Phase:
    key: str
    label: str
    slow_mode: str | None  # "conflate", "normal" or None (no slow subscriber)


PHASES = (
    Phase("A", "no slow subscriber", None),
    Phase("B", "+ slow conflating", "conflate"),
    Phase("C", "+ slow normal", "normal"),
)


def progress(text: str) -> None:
    print(f"bench_slow_subscriber: {text}", file=sys.stderr, flush=True)


def hdr_available() -> bool:
    return importlib.util.find_spec("hdrh") is not None


def percentile(sorted_values: Sequence[float], percent: float) -> float:
    """Nearest-rank percentile of already sorted values (the value below which `percent` % lie)."""
    if len(sorted_values) == 0:
        return math.nan
    rank = max(1, math.ceil(percent / 100 * len(sorted_values)))
    return float(sorted_values[rank - 1])


def sorted_values(values: Sequence[float]) -> Sequence[float]:
    """`values` sorted, with numpy when it is installed (much faster on 10^6 values)."""
    if importlib.util.find_spec("numpy") is not None:
        import numpy

        return numpy.sort(numpy.asarray(values))
    return sorted(values)


# The subscriber processes (hidden --role=subscriber).


class LatencyRecorder:
    """Latencies in ns, appended raw in the receive loop (an array append, ~0.1 us) and turned
    into an HdrHistogram or a file of raw values only after the window: HdrHistogram's Python
    record_value takes several microseconds, which would slow the subscriber being measured."""

    def __init__(self) -> None:
        self.values_ns = array("q")

    def dump(self, kind: str, raw_path: Path) -> dict[str, Any]:
        """The latencies as JSON-able data: an encoded HdrHistogram (us) or a raw file's path."""
        if kind == "hdr":
            from hdrh.histogram import HdrHistogram

            histogram = HdrHistogram(1, LATENCY_HIGHEST_US, HDR_SIGNIFICANT_DIGITS)
            # One record call per distinct microsecond value instead of one per tick.
            counts = collections.Counter(
                min(LATENCY_HIGHEST_US, max(1, value // 1_000)) for value in self.values_ns
            )
            for value_us, count in counts.items():
                histogram.record_value(value_us, count)
            return {"hdr": histogram.encode().decode("ascii"), "count": len(self.values_ns)}
        raw_path.write_bytes(self.values_ns.tobytes())
        return {"raw_path": str(raw_path), "count": len(self.values_ns)}


def _window_cpu(cpu_at_start: float | None, window_s: float) -> float | None:
    return None if cpu_at_start is None else (time.process_time() - cpu_at_start) / window_s


def follow_fast(subscriber: Subscriber, options: argparse.Namespace) -> dict[str, Any]:
    """Receive as fast as possible; every tick in the window goes into the latency record."""
    start_at, end_at = options.start_at, options.end_at
    recv, time_ns, monotonic = subscriber.recv, time.time_ns, time.monotonic
    latencies = LatencyRecorder()
    record = latencies.values_ns.append
    first_seq_by_symbol: dict[str, int] = {}
    last_seq_by_symbol: dict[str, int] = {}
    frame_bytes: list[int] = []
    first_tick_at: float | None = None
    cpu_at_start: float | None = None
    received = 0
    while (remaining_s := end_at - monotonic()) > 0:
        tick = recv(min(RECV_SLICE_S, remaining_s))
        if tick is None:
            continue
        latency_ns = time_ns() - tick["ts"]
        received_at = monotonic()
        if first_tick_at is None:
            first_tick_at = received_at
        if received_at < start_at:
            continue
        if cpu_at_start is None:
            cpu_at_start = time.process_time()
        record(latency_ns)
        symbol, seq = tick["sym"], tick["seq"]
        first_seq_by_symbol.setdefault(symbol, seq)
        last_seq_by_symbol[symbol] = seq
        received += 1
        if len(frame_bytes) < FRAME_SIZE_SAMPLES:
            frame_bytes.append(len(encode_frame(symbol, tick)))
    published = sum(
        last_seq_by_symbol[symbol] - first_seq + 1
        for symbol, first_seq in first_seq_by_symbol.items()
    )
    return {
        "first_tick_at": first_tick_at,
        "received_in_window": received,
        # Ticks published in the window on the symbols it received (their seq spans).
        "published_in_window": published,
        "missed_in_window": published - received,
        "cpu_cores": _window_cpu(cpu_at_start, end_at - start_at),
        "frame_bytes_mean": statistics.fmean(frame_bytes) if frame_bytes else None,
        "frame_bytes_max": max(frame_bytes, default=None),
        "latency": latencies.dump(options.histogram, options.out.with_suffix(".latencies")),
    }


def check_gaps(
    seqs_by_symbol: dict[str, list[int]], gaps: Sequence[tuple[str, int, int]]
) -> dict[str, int]:
    """Compare the gaps the client reported with the jumps in the seqs it delivered.

    Every jump from seq a to b (b > a + 1) in one symbol must have been reported as the gap
    (symbol, a + 1, b), and no gap may have been reported that is not such a jump.
    """
    jumps: set[tuple[str, int, int]] = set()
    spans = received = 0
    for symbol, seqs in seqs_by_symbol.items():
        spans += seqs[-1] - seqs[0] + 1
        received += len(seqs)
        jumps.update(
            (symbol, before + 1, after)
            for before, after in itertools.pairwise(seqs)
            if after != before + 1
        )
    reported = set(gaps)
    return {
        "published_in_spans": spans,
        "received": received,
        "missed_from_seqs": spans - received,
        "jumps": len(jumps),
        "jumps_not_reported": len(jumps - reported),
        "reported_not_jumps": len(reported - jumps),
    }


def follow_slow(
    subscriber: Subscriber, options: argparse.Namespace, gaps: list[tuple[str, int, int]]
) -> dict[str, Any]:
    """Read one tick per 1 / (rate x 1%) seconds until the window ends; in normal mode then
    catch up, so that the ticks dropped meanwhile show up as gaps."""
    start_at, end_at = options.start_at, options.end_at
    recv, time_ns, monotonic = subscriber.recv, time.time_ns, time.monotonic
    interval_s = 1.0 / (options.rate * SLOW_READ_FRACTION)
    seqs_by_symbol: dict[str, list[int]] = collections.defaultdict(list)
    # (seconds since the window started, tick age in ms) of every tick read in the window.
    ages: list[tuple[float, float]] = []
    first_tick_at: float | None = None
    cpu_at_start: float | None = None
    next_read_at = monotonic()
    while (now := monotonic()) < end_at:
        if now < next_read_at:
            time.sleep(min(next_read_at, end_at) - now)
            continue
        # A read on a fixed schedule, not a fixed sleep after each read: the rate holds however
        # long a read takes, and a late read does not start a burst of reads to make up for it.
        next_read_at += interval_s
        if next_read_at < now:
            next_read_at = now + interval_s
        tick = recv(min(RECV_SLICE_S, end_at - now))
        if tick is None:
            continue
        age_ns = time_ns() - tick["ts"]
        received_at = monotonic()
        seqs_by_symbol[tick["sym"]].append(tick["seq"])
        if first_tick_at is None:
            first_tick_at = received_at
        if start_at <= received_at < end_at:
            if cpu_at_start is None:
                cpu_at_start = time.process_time()
            ages.append((received_at - start_at, age_ns / 1e6))
    result: dict[str, Any] = {
        "first_tick_at": first_tick_at,
        "cpu_cores": _window_cpu(cpu_at_start, end_at - start_at),
        "reads_in_window": len(ages),
        "ages_ms": ages,
    }
    if options.mode != "normal":
        return result

    # Every symbol must deliver a fresh tick: only a later tick of a symbol reveals its drops.
    received_before_catch_up = sum(map(len, seqs_by_symbol.values()))
    fresh_symbols: set[str] = set()
    catch_up_started = monotonic()
    caught_up_age_ns = CAUGHT_UP_AGE_MS * 1e6
    while (
        remaining_s := catch_up_started + CATCH_UP_TIMEOUT_S - monotonic()
    ) > 0 and fresh_symbols != seqs_by_symbol.keys():
        tick = recv(min(RECV_SLICE_S, remaining_s))
        if tick is None:
            continue
        seqs_by_symbol[tick["sym"]].append(tick["seq"])
        if time_ns() - tick["ts"] < caught_up_age_ns:
            fresh_symbols.add(tick["sym"])
    result.update(
        caught_up=fresh_symbols == seqs_by_symbol.keys(),
        catch_up_s=monotonic() - catch_up_started,
        received_before_catch_up=received_before_catch_up,
        received_in_catch_up=sum(map(len, seqs_by_symbol.values())) - received_before_catch_up,
        gap_check=check_gaps(seqs_by_symbol, gaps),
    )
    return result


def run_subscriber(options: argparse.Namespace) -> int:
    """Hidden role: one Subscriber on one endpoint; writes its figures as JSON to --out."""
    gaps: list[tuple[str, int, int]] = []

    def remember_gap(gap: Gap) -> None:
        gaps.append((gap.symbol, gap.expected_seq, gap.received_seq))

    subscriber = Subscriber(
        options.endpoint,
        conflate=options.mode == "conflate",
        on_gap=remember_gap if options.mode == "normal" else None,
    )
    try:
        if options.mode == "fast":
            result = follow_fast(subscriber, options)
        else:
            result = follow_slow(subscriber, options, gaps)
    finally:
        subscriber.close()
    stats = subscriber.stats.summary()
    stats.pop("missed_by_symbol", None)
    result.update(mode=options.mode, stats=stats)
    if result["first_tick_at"] is None or result["first_tick_at"] > options.start_at:
        result["error"] = (
            f"{options.mode} subscriber got its first tick only after the window started; "
            "give it more time with --warmup"
        )
    options.out.write_text(json.dumps(result))
    return 0


# The benchmark itself.


def free_tcp_port() -> int:
    """A loopback port that is free now: the kernel picks it for a socket closed right after."""
    probe = socket.create_server(("127.0.0.1", 0))
    try:
        return probe.getsockname()[1]
    finally:
        probe.close()


def rss_kb(pid: int) -> int | None:
    """Resident set size of a process in KiB (VmRSS), None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def wait_until_serving(serve: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + SERVE_START_TIMEOUT_S
    while SERVING_LINE not in log_path.read_text(errors="replace"):
        if serve.poll() is not None:
            raise BenchError(
                f"feedsvc serve exited with code {serve.returncode}; its log ({log_path}):\n"
                f"{_log_tail(log_path)}"
            )
        if time.monotonic() > deadline:
            raise BenchError(f"feedsvc serve did not start in {SERVE_START_TIMEOUT_S:.0f} s")
        time.sleep(POLL_INTERVAL_S)


def watch_phase(
    serve: subprocess.Popen[bytes],
    subscribers: Sequence[subprocess.Popen[bytes]],
    start_at: float,
    end_at: float,
    log_path: Path,
) -> tuple[list[tuple[float, int]], dict[str, float | None]]:
    """Sample the publisher's RSS every second until all subscribers exit.

    The samples lie on a grid through the window's start, so there are samples at its start and
    end; there the publisher's and the machine's CPU counters are read too. Returns the samples
    as (seconds since the window started, KiB) and the window's CPU figures.
    """
    finish_by = end_at + CATCH_UP_TIMEOUT_S + FINISH_MARGIN_S
    now = time.monotonic()
    next_sample_at = start_at - RSS_SAMPLE_INTERVAL_S * math.floor(
        (start_at - now) / RSS_SAMPLE_INTERVAL_S
    )
    samples: list[tuple[float, int]] = []
    cpu_at_edges: list[tuple[float, float | None, tuple[float, float] | None]] = []
    while any(subscriber.poll() is None for subscriber in subscribers):
        now = time.monotonic()
        if serve.poll() is not None:
            raise BenchError(
                f"feedsvc serve exited early with code {serve.returncode}; its log "
                f"({log_path}):\n{_log_tail(log_path)}"
            )
        if now > finish_by:
            raise BenchError(f"the subscribers did not finish in time; see {log_path}")
        if now >= next_sample_at:
            rss = rss_kb(serve.pid)
            if rss is not None:
                samples.append((now - start_at, rss))
            edge = start_at if not cpu_at_edges else end_at
            if len(cpu_at_edges) < 2 and now >= edge:
                cpu_at_edges.append((now, process_cpu_seconds(serve.pid), machine_cpu_seconds()))
            next_sample_at += RSS_SAMPLE_INTERVAL_S
        time.sleep(max(0.0, min(POLL_INTERVAL_S, next_sample_at - time.monotonic())))
    cpu: dict[str, float | None] = {"publisher_cores": None, "busy_cores": None}
    cpu["steal_cores"] = None
    if len(cpu_at_edges) == 2:
        (t_start, publisher_start, machine_start), (t_end, publisher_end, machine_end) = (
            cpu_at_edges
        )
        window_s = t_end - t_start
        if publisher_start is not None and publisher_end is not None:
            cpu["publisher_cores"] = (publisher_end - publisher_start) / window_s
        if machine_start is not None and machine_end is not None:
            cpu["busy_cores"] = (machine_end[0] - machine_start[0]) / window_s
            cpu["steal_cores"] = (machine_end[1] - machine_start[1]) / window_s
    return samples, cpu


def run_phase(
    transport: str, phase: Phase, options: argparse.Namespace, workdir: Path, histogram: str
) -> dict[str, Any]:
    """One phase: a fresh feedsvc serve, its baseline RSS, the subscribers, the samples."""
    tag = f"{transport}-{phase.key}"
    ipc_endpoint = f"ipc://{workdir}/{tag}.ipc"
    tcp_endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    endpoint = ipc_endpoint if transport == "ipc" else tcp_endpoint
    # publisher_command puts its endpoint argument inside publisher.endpoints=[...]: both go in.
    command = publisher_command(
        "feedsvc", f"{ipc_endpoint}, {tcp_endpoint}", options, [f"synthetic.rate={options.rate}"]
    )
    modes = ["fast"] * options.fast + ([phase.slow_mode] if phase.slow_mode else [])
    log_path = workdir / f"{tag}.log"
    load_before = os.getloadavg()[0]
    started: list[subprocess.Popen[bytes]] = []
    with log_path.open("wb") as log:
        try:
            serve = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
            started.append(serve)
            wait_until_serving(serve, log_path)
            time.sleep(SETTLE_S)
            baseline_rss = rss_kb(serve.pid)
            start_at = time.monotonic() + options.warmup
            end_at = start_at + options.duration
            outputs: list[Path] = []
            for index, mode in enumerate(modes):
                outputs.append(workdir / f"{tag}-{index}-{mode}.json")
                started.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            str(Path(__file__).resolve()),
                            "--role=subscriber",
                            f"--mode={mode}",
                            f"--endpoint={endpoint}",
                            f"--start-at={start_at!r}",
                            f"--end-at={end_at!r}",
                            f"--rate={options.rate!r}",
                            f"--histogram={histogram}",
                            f"--out={outputs[-1]}",
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=log,
                    )
                )
            samples, cpu = watch_phase(serve, started[1:], start_at, end_at, log_path)
            results = []
            for process, output in zip(started[1:], outputs, strict=True):
                if process.returncode != 0 or not output.exists():
                    raise BenchError(
                        f"a subscriber exited with code {process.returncode}; log ({log_path}):"
                        f"\n{_log_tail(log_path)}"
                    )
                results.append(json.loads(output.read_text()))
                if "error" in results[-1]:
                    raise BenchError(results[-1]["error"])
        finally:
            for process in reversed(started):
                _stop(process)
    return summarize_phase(
        transport, phase, options, baseline_rss, samples, cpu, results, load_before
    )


def latency_figures(dumps: Sequence[dict[str, Any]]) -> dict[str, float]:
    """p50/p99/p99.9/max in ms over the merged latencies of all fast subscribers."""
    if all("hdr" in dump for dump in dumps):
        from hdrh.histogram import HdrHistogram

        merged = HdrHistogram(1, LATENCY_HIGHEST_US, HDR_SIGNIFICANT_DIGITS)
        for dump in dumps:
            merged.add(HdrHistogram.decode(dump["hdr"].encode("ascii")))
        figures = {
            f"{name}_ms": merged.get_value_at_percentile(percent) / 1_000
            for name, percent in (("p50", 50.0), ("p99", 99.0), ("p999", 99.9))
        }
        return {**figures, "max_ms": merged.get_max_value() / 1_000, "count": dumps_count(dumps)}
    values = array("q")
    for dump in dumps:
        values.frombytes(Path(dump["raw_path"]).read_bytes())
    ordered = sorted_values(values)
    figures = {
        f"{name}_ms": percentile(ordered, percent) / 1e6
        for name, percent in (("p50", 50.0), ("p99", 99.0), ("p999", 99.9))
    }
    return {**figures, "max_ms": percentile(ordered, 100.0) / 1e6, "count": len(values)}


def dumps_count(dumps: Sequence[dict[str, Any]]) -> int:
    return sum(dump["count"] for dump in dumps)


def age_figures(ages: Sequence[tuple[float, float]]) -> dict[str, float]:
    ordered = sorted(age for _, age in ages)
    return {
        "p50_ms": percentile(ordered, 50.0),
        "p99_ms": percentile(ordered, 99.0),
        "max_ms": percentile(ordered, 100.0),
    }


def rss_figures(
    samples: Sequence[tuple[float, int]],
    duration_s: float,
    baseline_kb: int | None,
    bound_kb: float,
) -> dict[str, Any]:
    """First/last/max RSS in the window, growth between its first and last part, and a slope."""
    window = [(t, kb) for t, kb in samples if -0.5 <= t <= duration_s + 0.5]
    if not window:
        return {"error": "no RSS sample in the window"}
    edge_s = min(RSS_EDGE_S, duration_s / 4)
    head = [kb for t, kb in window if t <= edge_s]
    tail = [kb for t, kb in window if t >= duration_s - edge_s]
    slope_kb_per_s = 0.0
    if len(window) >= 2:
        times = [t for t, _ in window]
        values = [kb for _, kb in window]
        slope_kb_per_s = statistics.linear_regression(times, values).slope
    growth_kb = statistics.fmean(tail or [window[-1][1]]) - statistics.fmean(head or [window[0][1]])
    max_kb = max(kb for _, kb in samples)
    return {
        "baseline_kb": baseline_kb,
        "first_kb": window[0][1],
        "last_kb": window[-1][1],
        # Over every sample, the filling of the queues before the window included.
        "max_kb": max_kb,
        "growth_kb": growth_kb,
        "slope_kb_per_min": slope_kb_per_s * 60,
        "bound_kb": bound_kb,
        "flat": growth_kb < RSS_GROWTH_LIMIT_KB,
        "under_bound": max_kb <= bound_kb,
    }


def summarize_phase(
    transport: str,
    phase: Phase,
    options: argparse.Namespace,
    baseline_rss: int | None,
    samples: list[tuple[float, int]],
    cpu: dict[str, float | None],
    results: list[dict[str, Any]],
    load_before: float,
) -> dict[str, Any]:
    fast = [result for result in results if result["mode"] == "fast"]
    slow = next((result for result in results if result["mode"] != "fast"), None)
    frame_bytes = max(result["frame_bytes_max"] or 0 for result in fast)
    # Every subscriber's queue full at once: the most the publisher's queues can hold.
    queued_kb = len(results) * options.hwm * (frame_bytes + QUEUED_MESSAGE_OVERHEAD_BYTES) / 1_024
    bound_kb = (baseline_rss or 0) + queued_kb
    subscriber_cores = [result["cpu_cores"] for result in results]
    other_cores = None
    if None not in (cpu["busy_cores"], cpu["publisher_cores"]) and None not in subscriber_cores:
        other_cores = max(0.0, cpu["busy_cores"] - cpu["publisher_cores"] - sum(subscriber_cores))
    summary: dict[str, Any] = {
        "transport": transport,
        "phase": phase.key,
        "label": phase.label,
        "load_average_1m_before": load_before,
        "fast": {
            **latency_figures([result["latency"] for result in fast]),
            "received_in_window": sum(result["received_in_window"] for result in fast),
            "missed_in_window": sum(result["missed_in_window"] for result in fast),
            "published_per_s": statistics.fmean(result["published_in_window"] for result in fast)
            / options.duration,
            "gaps": sum(result["stats"]["gaps"] for result in fast),
            "frame_bytes_mean": statistics.fmean(result["frame_bytes_mean"] for result in fast),
            "frame_bytes_max": frame_bytes,
        },
        "rss": rss_figures(samples, options.duration, baseline_rss, bound_kb),
        "rss_samples": samples,
        "rss_queued_allowance_kb": queued_kb,
        "cpu": {
            **cpu,
            "subscribers_cores": None if None in subscriber_cores else sum(subscriber_cores),
            "other_cores": other_cores,
        },
    }
    if slow is not None:
        ages = slow.pop("ages_ms")
        slow_summary = {
            **{key: value for key, value in slow.items() if key != "first_tick_at"},
            "age": age_figures(ages),
            "reads_per_s": len(ages) / options.duration,
        }
        if slow["mode"] == "conflate":
            step = max(1, math.ceil(len(ages) / MAX_AGE_SERIES_POINTS))
            slow_summary["age_series"] = [(round(t, 3), round(age, 3)) for t, age in ages[::step]]
        summary["slow"] = slow_summary
    return summary


def _ms(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:,.0f}" if value >= 1_000 else f"{value:.3g}" if value < 10 else f"{value:.1f}"


def _mb(kb: float | None) -> str:
    return "-" if kb is None else f"{kb / 1_024:.1f}"


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def evaluate(phases: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every target of the issue, per transport: what was measured and PASS or MISS."""
    targets: list[dict[str, Any]] = []
    for transport in dict.fromkeys(phase["transport"] for phase in phases):
        by_key = {phase["phase"]: phase for phase in phases if phase["transport"] == transport}
        p99_a = by_key["A"]["fast"]["p99_ms"]
        for key in ("B", "C"):
            ratio = by_key[key]["fast"]["p99_ms"] / p99_a
            targets.append(
                {
                    "transport": transport,
                    "target": f"fast p99 {key}/A <= {TARGET_P99_RATIO}",
                    "value": f"{ratio:.2f}",
                    "ratio": ratio,
                    "ok": ratio <= TARGET_P99_RATIO,
                }
            )
        age_p99 = by_key["B"]["slow"]["age"]["p99_ms"]
        targets.append(
            {
                "transport": transport,
                "target": f"slow conflating tick age p99 < {TARGET_AGE_P99_MS:g} ms",
                "value": f"{age_p99:.1f} ms",
                "ok": age_p99 < TARGET_AGE_P99_MS,
            }
        )
        normal = by_key["C"]["slow"]
        check = normal["gap_check"]
        every_gap = (
            normal["caught_up"]
            and normal["stats"]["missed"] == check["missed_from_seqs"]
            and check["jumps_not_reported"] == 0
            and check["reported_not_jumps"] == 0
        )
        targets.append(
            {
                "transport": transport,
                "target": "slow normal: every missed tick reported as a gap",
                "value": f"missed {normal['stats']['missed']:,} = {check['missed_from_seqs']:,} "
                f"from seqs, {check['jumps']:,} jumps",
                "ok": every_gap,
            }
        )
        for key, phase in by_key.items():
            rss = phase["rss"]
            targets.append(
                {
                    "transport": transport,
                    "target": f"publisher RSS {key}: max <= bound, growth < "
                    f"{RSS_GROWTH_LIMIT_KB / 1_024:g} MiB",
                    "value": f"max {_mb(rss.get('max_kb'))} <= {_mb(rss.get('bound_kb'))} MiB, "
                    f"growth {rss.get('growth_kb', math.nan) / 1_024:+.2f} MiB",
                    "ok": bool(rss.get("flat") and rss.get("under_bound")),
                }
            )
    return targets


def print_report(
    facts: dict[str, Any],
    options: argparse.Namespace,
    histogram: str,
    phases: Sequence[dict[str, Any]],
    targets: Sequence[dict[str, Any]],
) -> None:
    print(
        f"machine: {facts['cpu_count']} CPUs ({facts['cpus_usable']} usable), {facts['cpu_model']}"
    )
    print(f"         {facts['platform']}")
    print(
        f"         {facts['python']}, pyzmq {facts['pyzmq']}, libzmq {facts['libzmq']}, "
        f"orjson {facts['orjson']}; load average (1 min) at start "
        f"{facts['load_average_1m_at_start']:.2f}"
    )
    print(f"command: {shlex.join(facts['command'])}")
    slow_rate = options.rate * SLOW_READ_FRACTION
    print(
        f"settings: feed {options.rate:,.0f} ticks/s over {options.symbols} symbols; "
        f"{options.fast} fast subscribers; slow subscriber reads {slow_rate:,.0f} ticks/s; "
        f"{options.duration:g} s per phase after {options.warmup:g} s warm-up; "
        f"SNDHWM {options.hwm}, SNDBUF {bench_publish.SNDBUF_BYTES}, client RCVHWM/RCVBUF "
        f"defaults; latencies: {'HdrHistogram' if histogram == 'hdr' else 'sorted raw values'}"
    )
    print("phases: A = fast subscribers only, B = + slow conflating, C = + slow normal mode")
    for transport in dict.fromkeys(phase["transport"] for phase in phases):
        mine = [phase for phase in phases if phase["transport"] == transport]
        p99_a = mine[0]["fast"]["p99_ms"]
        print()
        print(f"== {transport} ==")
        header = (
            f"{'fast subscribers, latency ms':30} {'p50':>7} {'p99':>7} {'p99.9':>7} "
            f"{'max':>7} {'ticks':>10} {'missed':>7} {'p99/A':>6} {'pub CPU':>7} "
            f"{'subs':>5} {'other':>5} {'steal':>5} {'load':>5}"
        )
        print(header)
        print("-" * len(header))
        for phase in mine:
            fast, cpu = phase["fast"], phase["cpu"]
            ratio = fast["p99_ms"] / p99_a
            print(
                f"{phase['phase'] + ' ' + phase['label']:30} {_ms(fast['p50_ms']):>7} "
                f"{_ms(fast['p99_ms']):>7} {_ms(fast['p999_ms']):>7} {_ms(fast['max_ms']):>7} "
                f"{fast['received_in_window']:>10,} {fast['missed_in_window']:>7,} "
                f"{ratio:>6.2f} {_cores(cpu['publisher_cores']):>7} "
                f"{_cores(cpu['subscribers_cores']):>5} {_cores(cpu['other_cores']):>5} "
                f"{_cores(cpu['steal_cores']):>5} {phase['load_average_1m_before']:>5.2f}"
            )
        header = (
            f"{'publisher RSS, MiB':30} {'before':>7} {'first':>7} {'last':>7} {'max':>7} "
            f"{'growth':>7} {'slope/min':>9} {'bound':>7}"
        )
        print()
        print(header)
        print("-" * len(header))
        for phase in mine:
            rss = phase["rss"]
            print(
                f"{phase['phase'] + ' ' + phase['label']:30} {_mb(rss['baseline_kb']):>7} "
                f"{_mb(rss['first_kb']):>7} {_mb(rss['last_kb']):>7} {_mb(rss['max_kb']):>7} "
                f"{rss['growth_kb'] / 1_024:>+7.2f} {rss['slope_kb_per_min'] / 1_024:>+9.3f} "
                f"{_mb(rss['bound_kb']):>7}"
            )
        conflating = mine[1]["slow"]
        normal = mine[2]["slow"]
        check = normal["gap_check"]
        print()
        print(
            f"slow conflating (B): {conflating['reads_in_window']:,} ticks delivered "
            f"({conflating['reads_per_s']:.0f}/s), {conflating['stats']['conflated']:,} "
            f"replaced by newer ones; tick age ms p50 {_ms(conflating['age']['p50_ms'])}, "
            f"p99 {_ms(conflating['age']['p99_ms'])}, max {_ms(conflating['age']['max_ms'])}"
        )
        print(
            f"slow normal (C):     {normal['reads_in_window']:,} ticks read in the window "
            f"({normal['reads_per_s']:.0f}/s), tick age ms p50 {_ms(normal['age']['p50_ms'])}, "
            f"p99 {_ms(normal['age']['p99_ms'])}, max {_ms(normal['age']['max_ms'])}; then "
            f"{normal['received_in_catch_up']:,} more in {normal['catch_up_s']:.2f} s catching "
            f"up ({'caught up' if normal['caught_up'] else 'NOT caught up'})"
        )
        print(
            f"                     {normal['stats']['gaps']:,} gaps reported, missed "
            f"{normal['stats']['missed']:,}; from its seqs: published "
            f"{check['published_in_spans']:,} - received {check['received']:,} = "
            f"{check['missed_from_seqs']:,}; {check['jumps']:,} seq jumps, "
            f"{check['jumps_not_reported']} not reported, {check['reported_not_jumps']} "
            "reported gaps that are no jump"
        )
    print()
    header = f"{'targets':66} {'measured':44} verdict"
    print(header)
    print("-" * len(header))
    for target in targets:
        print(
            f"{target['transport'] + ': ' + target['target']:66} {target['value']:44} "
            f"{_verdict(target['ok'])}"
        )
    legend = (
        "latency: receive time_ns() - ts (stamped at publish), fast subscribers merged; "
        "ticks/missed: in the window, missed from per-symbol seq spans",
        "CPU: cores used in the window by the publisher, the subscribers, all other processes, "
        "hypervisor steal; load: 1-min load average before the phase",
        "RSS: before = with the feed running and no subscriber; first/last in the window; "
        "max over the whole phase; growth = mean of the window's last "
        f"{RSS_EDGE_S:g} s - mean of its first {RSS_EDGE_S:g} s (at most a quarter each)",
        f"bound = before + subscribers x SNDHWM x (largest frame + "
        f"{QUEUED_MESSAGE_OVERHEAD_BYTES} B libzmq per-message overhead)",
        "slow normal: drops show up as gaps only once it reads a later tick, hence the catch-up "
        f"after the window (until every symbol delivered a tick < {CAUGHT_UP_AGE_MS:g} ms old)",
    )
    print("\n".join(f"  {line}" for line in legend))
    for note in report_notes(facts, phases):
        print(f"note: {note}")


def report_notes(facts: dict[str, Any], phases: Sequence[dict[str, Any]]) -> list[str]:
    notes = []
    if facts["load_average_1m_at_start"] > LOAD_WARNING:
        notes.append(
            f"the load average was {facts['load_average_1m_at_start']:.2f} at start: the machine "
            "was busy, latency percentiles are sensitive to that; consider a rerun"
        )
    for phase in phases:
        name = f"{phase['transport']} {phase['phase']}"
        other = phase["cpu"]["other_cores"]
        if other is not None and other > OTHER_CPU_WARNING_CORES:
            notes.append(
                f"{name}: other processes used {other:.2f} cores during the window: "
                "the latency figures are disturbed, consider a rerun"
            )
        if phase["fast"]["missed_in_window"]:
            notes.append(
                f"{name}: the fast subscribers missed {phase['fast']['missed_in_window']:,} "
                "ticks (they did not keep up)"
            )
    return notes


def plot(phases: Sequence[dict[str, Any]], path: Path) -> None:
    """RSS over time per phase and the slow conflating subscriber's tick age, per transport."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as pyplot
    except ImportError:
        progress("--plot needs matplotlib (pip install matplotlib); no plot written")
        return
    transports = list(dict.fromkeys(phase["transport"] for phase in phases))
    figure, axes = pyplot.subplots(
        len(transports), 2, figsize=(13, 4 * len(transports)), squeeze=False
    )
    for row, transport in enumerate(transports):
        rss_axis, age_axis = axes[row]
        for phase in (phase for phase in phases if phase["transport"] == transport):
            samples = phase["rss_samples"]
            line = rss_axis.plot(
                [t for t, _ in samples],
                [kb / 1_024 for _, kb in samples],
                label=f"{phase['phase']} {phase['label']}",
            )[0]
            rss_axis.axhline(
                phase["rss"]["bound_kb"] / 1_024, color=line.get_color(), linestyle=":"
            )
            if phase["phase"] == "B":
                series = phase["slow"]["age_series"]
                age_axis.plot([t for t, _ in series], [age for _, age in series], ".", ms=2)
        rss_axis.set(
            title=f"{transport}: publisher RSS (dotted: bound)",
            xlabel="s since the window started",
            ylabel="MiB",
        )
        rss_axis.legend(fontsize="small")
        age_axis.axhline(TARGET_AGE_P99_MS, color="red", linestyle="--", label="target p99")
        age_axis.set(
            title=f"{transport}: slow conflating subscriber, tick age",
            xlabel="s since the window started",
            ylabel="ms",
            yscale="log",
        )
        age_axis.legend(fontsize="small")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    print(f"plot written to {path}")


def run_benchmark(options: argparse.Namespace) -> int:
    histogram = options.histogram
    if histogram == "auto":
        histogram = "hdr" if hdr_available() else "raw"
    elif histogram == "hdr" and not hdr_available():
        print("bench_slow_subscriber: --histogram hdr needs `pip install hdrhistogram`")
        return 2
    facts = {
        **machine_facts(),
        "command": [sys.executable, *sys.argv],
        "histogram": histogram,
    }
    if facts["load_average_1m_at_start"] > LOAD_WARNING:
        progress(
            f"warning: load average {facts['load_average_1m_at_start']:.2f}: the machine is "
            "busy; the figures are ratios within this run but latency is still sensitive"
        )
    per_phase_s = 3 + SETTLE_S + options.warmup + options.duration
    progress(
        f"{len(options.transports)} transports x {len(PHASES)} phases, about "
        f"{len(options.transports) * len(PHASES) * per_phase_s / 60:.1f} min"
    )
    workdir = Path(tempfile.mkdtemp(prefix="bench-slow-"))
    phases: list[dict[str, Any]] = []
    try:
        for transport in options.transports:
            for phase in PHASES:
                progress(f"[{transport} {phase.key}] {phase.label}: starting")
                result = run_phase(transport, phase, options, workdir, histogram)
                phases.append(result)
                fast, rss = result["fast"], result["rss"]
                slow = result.get("slow")
                slow_text = (
                    ""
                    if slow is None
                    else f", slow age p99 {_ms(slow['age']['p99_ms'])} ms, "
                    f"{slow['stats']['gaps']:,} gaps"
                )
                progress(
                    f"[{transport} {phase.key}] fast p99 {_ms(fast['p99_ms'])} ms, "
                    f"missed {fast['missed_in_window']:,}; RSS max {_mb(rss['max_kb'])} MiB, "
                    f"growth {rss['growth_kb'] / 1_024:+.2f} MiB{slow_text}; "
                    f"other CPU {_cores(result['cpu']['other_cores'])}"
                )
    except BenchError as error:
        progress(f"{error}\n(logs kept in {workdir})")
        return 1
    targets = evaluate(phases)
    print_report(facts, options, histogram, phases, targets)
    shutil.rmtree(workdir, ignore_errors=True)
    if options.json:
        options.json.parent.mkdir(parents=True, exist_ok=True)
        figures = {
            "machine": facts,
            "settings": {
                "rate": options.rate,
                "symbols": options.symbols,
                "fast_subscribers": options.fast,
                "slow_reads_per_s": options.rate * SLOW_READ_FRACTION,
                "duration_s": options.duration,
                "warmup_s": options.warmup,
                "sndhwm": options.hwm,
                "sndbuf_bytes": bench_publish.SNDBUF_BYTES,
                "histogram": histogram,
            },
            "targets": targets,
            "phases": phases,
            "load_average_1m_at_end": os.getloadavg()[0],
        }
        options.json.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"figures written to {options.json}")
    if options.plot:
        plot(phases, options.plot)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="A subscriber reading at 1% of the publish rate: publisher memory, the "
        "other subscribers' latency, conflated tick age, gap reporting."
    )
    parser.add_argument("--rate", type=float, default=DEFAULT_RATE, help="feed ticks/s in total")
    parser.add_argument("--symbols", type=int, default=50, help="synthetic symbols")
    parser.add_argument("--fast", type=int, default=2, help="fast subscribers per phase")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per phase window")
    parser.add_argument(
        "--warmup",
        type=float,
        default=5.0,
        help="seconds from the subscribers' start to the window",
    )
    parser.add_argument(
        "--hwm", type=int, default=bench_publish.DEFAULT_HWM, help="the publisher's SNDHWM"
    )
    parser.add_argument(
        "--transports",
        nargs="+",
        choices=TRANSPORTS,
        default=list(TRANSPORTS),
        metavar="T",
        help="ipc and/or tcp (default: both)",
    )
    parser.add_argument(
        "--histogram",
        choices=HISTOGRAM_KINDS,
        default="auto",
        help="fast latencies in an HdrHistogram (auto: if installed) or as sorted raw values",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--plot", type=Path, default=None, help="RSS and tick-age plot (PNG)")
    hidden = argparse.SUPPRESS
    parser.add_argument("--role", choices=("subscriber",), help=hidden)
    parser.add_argument("--mode", choices=("fast", "conflate", "normal"), help=hidden)
    parser.add_argument("--endpoint", help=hidden)
    parser.add_argument("--start-at", type=float, help=hidden)
    parser.add_argument("--end-at", type=float, help=hidden)
    parser.add_argument("--out", type=Path, help=hidden)
    return parser


def _exit_on_sigterm(_signum: int, _frame: object) -> None:
    # SystemExit unwinds through the finally blocks, which stop every started process by pid.
    sys.exit(128 + signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    options = build_parser().parse_args(argv)
    if options.role == "subscriber":
        return run_subscriber(options)
    if (
        options.duration <= 0
        or options.warmup < 0
        or options.rate < MIN_RATE
        or options.fast < 1
        or options.symbols < 1
        or options.hwm < 1
    ):
        print(
            f"bench_slow_subscriber: --duration must be > 0, --warmup >= 0, --rate >= "
            f"{MIN_RATE:g} (the slow subscriber reads 1% of it), --fast, --symbols, --hwm >= 1",
            file=sys.stderr,
        )
        return 2
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    return run_benchmark(options)


if __name__ == "__main__":
    sys.exit(main())
