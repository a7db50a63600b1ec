"""The slow-subscriber benchmark's subscriber role, one process each: a fast subscriber recording
every tick's latency in the window, or a slow one reading 1% of the feed (conflating, or in normal
mode with a catch-up after the window so that its drops show up as gaps). Each writes its figures
as JSON to --out."""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import statistics
import time
from collections.abc import Sequence
from typing import Any, Final

from feedsvc.bench.latency import LatencyRecorder
from feedsvc.bench.sequence import SequenceGaps
from feedsvc.client import Gap, Subscriber
from feedsvc.protocol.ticks import encode_frame

SLOW_READ_FRACTION: Final = 0.01
# Ticks whose encoded size the fast subscribers sample (for the RSS bound).
FRAME_SIZE_SAMPLES: Final = 1_000
# Longest single wait of a subscriber's recv(), so every loop checks its deadline.
RECV_SLICE_S: Final = 0.5
# Phase C's catch-up is over when every symbol delivered a tick this fresh, or at the timeout.
CAUGHT_UP_AGE_MS: Final = 50.0
CATCH_UP_TIMEOUT_S: Final = 30.0


def _window_cpu(cpu_at_start: float | None, window_s: float) -> float | None:
    return None if cpu_at_start is None else (time.process_time() - cpu_at_start) / window_s


def follow_fast(subscriber: Subscriber, options: argparse.Namespace) -> dict[str, Any]:
    """Receive as fast as possible; every tick in the window goes into the latency record."""
    start_at, end_at = options.start_at, options.end_at
    recv, time_ns, monotonic = subscriber.recv, time.time_ns, time.monotonic
    latencies = LatencyRecorder()
    record = latencies.record
    sequence = SequenceGaps()
    observe = sequence.observe
    frame_bytes: list[int] = []
    first_tick_at: float | None = None
    cpu_at_start: float | None = None
    received = 0
    while (remaining_s := end_at - monotonic()) > 0:
        tick = recv(min(RECV_SLICE_S, remaining_s))
        if tick is None:
            continue
        received_ns = time_ns()
        received_at = monotonic()
        if first_tick_at is None:
            first_tick_at = received_at
        if received_at < start_at:
            continue
        if cpu_at_start is None:
            cpu_at_start = time.process_time()
        record(received_ns, tick["ts"])
        observe(tick["sym"], tick["epoch"], tick["seq"])
        received += 1
        if len(frame_bytes) < FRAME_SIZE_SAMPLES:
            frame_bytes.append(len(encode_frame(tick["sym"], tick)))
    published = sequence.published_in_span
    return {
        "first_tick_at": first_tick_at,
        "received_in_window": received,
        # Ticks published in the window on the symbols it received (their seq spans).
        "published_in_window": published,
        "missed_in_window": published - received,
        "cpu_cores": _window_cpu(cpu_at_start, end_at - start_at),
        "frame_bytes_mean": statistics.fmean(frame_bytes) if frame_bytes else None,
        "frame_bytes_max": max(frame_bytes, default=None),
        "latency": latencies.dump(per_second=False, hdr=options.histogram == "hdr")["all"],
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
    """Role: one Subscriber on one endpoint; writes its figures as JSON to --out."""
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
