"""Benchmark for issue "hot path publish rate": feedsvc's delivered tick rate against raw pyzmq.

What it measures, in one run on one machine:

baseline
    A raw pyzmq PUB (no feedsvc code) in its own process, sending pre-encoded 100-byte single
    frames (``b"SYN0001 "`` + padding + a 10-digit counter) as fast as a Python loop can.
feedsvc
    A real ``feedsvc serve`` process with the synthetic feed at ``synthetic.rate=0`` (as fast as
    possible), no ingest socket and one ipc publisher endpoint: the whole hot path (generate,
    sequence, stamp, orjson-encode, send).

Both are read by the same subscriber: a separate process (this script in a hidden role, so it
shares no GIL with the publisher) with one SUB socket over ipc subscribed to everything. The
primary figure is what that subscriber *received* per second over a steady window (after a
warm-up), because a PUB socket silently drops for a subscriber whose queue is full: a "sent" rate
alone can look good while ticks are lost.

How drops are counted exactly without slowing the subscriber's counting loop: around the window
the subscriber decodes messages until it has seen every key once (feedsvc: each symbol and its
``seq``; baseline: the frame counter). Per key, everything received in the window lies in
``[first position after the start, first position after the end)``, so the positions sent in the
window are the sum of those spans and ``dropped = sent - received``. In between, the subscriber
only counts frames. The baseline publisher also counts its own sends (the "sent/s" column); the
baseline counter wraps at 2**17, which is unwrapped with those counts.

Why a ratio and not an absolute target: the absolute rate depends on the machine and on whatever
else runs on it (others run tests on these 2 cores). Baseline and feedsvc alternate, each is
repeated, and the medians are compared; the target is feedsvc >= 0.5 x baseline. To judge noise,
each window also records the CPU used by the publisher, the subscriber, every other process and
hypervisor steal (/proc), and the table adds two less drift-sensitive ratios: per adjacent
(baseline, feedsvc) pair, and ticks delivered per CPU-second of the publisher process.

Usage: python scripts/bench_publish.py [--duration 5] [--repeats 3] [--symbols 50] [--json FILE]
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
import zmq

from feedsvc.bench.loadtest import process_cpu_seconds

TARGET_RATIO = 0.5
FRAME_BYTES = 100
COUNTER_DIGITS = 10
# Frames the baseline cycles through; the counter in each frame is its index in this ring. Large
# enough that the messages in flight (HWMs + kernel buffers) stay far below half of it.
RING_SIZE = 2**17
# Baseline sends between two clock samples (and stop checks).
SEND_CHUNK = 4_096
# Frames received between two clock checks in the subscriber's counting loop.
RECV_BATCH = 256
# Same queue settings for both publishers, and feedsvc's defaults: a fair comparison.
DEFAULT_HWM = 10_000
SNDBUF_BYTES = 262_144
HEARTBEAT_TOPIC_BYTE = ord("_")
FIRST_MESSAGE_TIMEOUT_S = 30.0
# A recv that waits this long means the publisher stalled or died.
RECV_TIMEOUT_MS = 3_000
# Longest time spent finding every key's position at either edge of the window.
BOUNDARY_TIMEOUT_S = 3.0
STOP_TIMEOUT_S = 15.0
POLL_INTERVAL_S = 0.1
# Spread of the repeats (max - min over median) above which the figures are called noisy.
NOISY_SPREAD = 0.10

KINDS = ("baseline", "feedsvc")
LABELS = {"baseline": "baseline (raw pyzmq PUB)", "feedsvc": "feedsvc serve"}


class BenchError(RuntimeError):
    """A measurement could not be made; str() says which process failed and why."""


def synthetic_symbols(count: int) -> list[str]:
    """The same names as feedsvc's synthetic feed (SYN0000, ...), without importing feedsvc."""
    width = max(4, len(str(count - 1)))
    return [f"SYN{index:0{width}d}" for index in range(count)]


def raw_frames(symbol_count: int) -> list[bytes]:
    """The baseline's pre-encoded frames: topic, space, padding, a counter; FRAME_BYTES each."""
    topics = [symbol.encode() + b" " for symbol in synthetic_symbols(symbol_count)]
    frames = []
    for index in range(RING_SIZE):
        topic = topics[index % symbol_count]
        padding = b"." * (FRAME_BYTES - len(topic) - COUNTER_DIGITS)
        frames.append(topic + padding + b"%0*d" % (COUNTER_DIGITS, index))
    return frames


def raw_position(frame: bytes) -> tuple[str, int] | None:
    """Baseline frame -> (key, position): one global counter."""
    return "counter", int(frame[-COUNTER_DIGITS:])


def feedsvc_position(frame: bytes) -> tuple[str, int] | None:
    """feedsvc frame -> (symbol, seq); None for control messages (heartbeats)."""
    topic, _, payload = frame.partition(b" ")
    if topic[:1] == b"_":
        return None
    return topic.decode(), orjson.loads(payload)["seq"]


def machine_cpu_seconds() -> tuple[float, float] | None:
    """(busy, steal) CPU seconds of the whole machine since boot (/proc/stat); None if unknown."""
    try:
        fields = [
            int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        ]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    ticks = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / ticks, steal / ticks


def _subscribe(
    socket: zmq.Socket,
    position: Callable[[bytes], tuple[str, int] | None],
    expected_keys: int,
    warmup_s: float,
    duration_s: float,
    publisher_pid: int,
) -> dict[str, Any]:
    recv, monotonic = socket.recv, time.monotonic
    first_deadline = monotonic() + FIRST_MESSAGE_TIMEOUT_S
    while not socket.poll(int(POLL_INTERVAL_S * 1000)):
        if monotonic() > first_deadline:
            return {"error": f"no message within {FIRST_MESSAGE_TIMEOUT_S:.0f} s"}
    warmup_end = monotonic() + warmup_s
    while monotonic() < warmup_end:
        for _ in range(RECV_BATCH):
            recv()

    # Start edge: decode until every key has its first position in the window.
    window_start = monotonic()
    cpu_start, publisher_cpu_start = time.process_time(), process_cpu_seconds(publisher_pid)
    machine_start = machine_cpu_seconds()
    start_by_key: dict[str, int] = {}
    received = sampled_bytes = sampled = 0
    edge_deadline = window_start + BOUNDARY_TIMEOUT_S
    while len(start_by_key) < expected_keys and monotonic() < edge_deadline:
        frame = recv()
        found = position(frame)
        if found is None:
            continue
        start_by_key.setdefault(found[0], found[1])
        received += 1
        sampled += 1
        sampled_bytes += len(frame)

    # The window: count only. Heartbeats (first byte "_") are not ticks.
    window_end = window_start + duration_s
    next_mark = window_start + 1.0
    marks: list[tuple[float, int]] = [(window_start, 0)]
    now = monotonic()
    while now < window_end:
        control = 0
        for _ in range(RECV_BATCH):
            if recv()[0] == HEARTBEAT_TOPIC_BYTE:
                control += 1
        received += RECV_BATCH - control
        now = monotonic()
        if now >= next_mark:
            marks.append((now, received))
            next_mark += 1.0
    window_end = now
    cpu_end, publisher_cpu_end = time.process_time(), process_cpu_seconds(publisher_pid)
    machine_end = machine_cpu_seconds()
    marks.append((window_end, received))

    # End edge: the first position after the window, per key (not counted as received).
    end_by_key: dict[str, int] = {}
    edge_deadline = window_end + BOUNDARY_TIMEOUT_S
    while len(end_by_key) < len(start_by_key) and monotonic() < edge_deadline:
        found = position(recv())
        if found is not None and found[0] in start_by_key:
            end_by_key.setdefault(found[0], found[1])

    machine_busy = machine_steal = None
    if machine_start is not None and machine_end is not None:
        machine_busy = machine_end[0] - machine_start[0]
        machine_steal = machine_end[1] - machine_start[1]
    publisher_cpu = None
    if publisher_cpu_start is not None and publisher_cpu_end is not None:
        publisher_cpu = publisher_cpu_end - publisher_cpu_start
    return {
        "window_start": window_start,
        "window_end": window_end,
        "received": received,
        "marks": marks,
        "start_by_key": start_by_key,
        "end_by_key": end_by_key,
        "edges_complete": len(start_by_key) == expected_keys
        and len(end_by_key) == len(start_by_key),
        "mean_frame_bytes": sampled_bytes / sampled if sampled else None,
        "subscriber_cpu_s": cpu_end - cpu_start,
        "publisher_cpu_s": publisher_cpu,
        "machine_busy_cpu_s": machine_busy,
        "machine_steal_cpu_s": machine_steal,
    }


def run_subscriber(args: argparse.Namespace) -> int:
    """Hidden role: one SUB socket; prints its counts as one JSON line on stdout."""
    context = zmq.Context()
    socket = context.socket(zmq.SUB)
    socket.setsockopt(zmq.RCVHWM, args.hwm)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.RCVTIMEO, RECV_TIMEOUT_MS)
    socket.setsockopt(zmq.SUBSCRIBE, b"")
    socket.connect(args.endpoint)
    is_raw = args.kind == "baseline"
    try:
        result = _subscribe(
            socket,
            raw_position if is_raw else feedsvc_position,
            1 if is_raw else args.symbols,
            args.warmup,
            args.duration,
            args.publisher_pid,
        )
    except zmq.Again:
        result = {"error": f"the publisher went quiet for {RECV_TIMEOUT_MS} ms"}
    finally:
        socket.close(linger=0)
        context.term()
    print(json.dumps(result))
    return 0


def run_raw_publisher(args: argparse.Namespace) -> int:
    """Hidden role: the baseline PUB; sends until SIGTERM (or max_run_s), then prints samples."""
    stop_requested = False

    def request_stop(_signum: int, _frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGTERM, request_stop)
    frames = raw_frames(args.symbols)
    chunks = [frames[index : index + SEND_CHUNK] for index in range(0, RING_SIZE, SEND_CHUNK)]
    context = zmq.Context(io_threads=1)
    socket = context.socket(zmq.PUB)
    socket.setsockopt(zmq.SNDHWM, args.hwm)
    socket.setsockopt(zmq.SNDBUF, SNDBUF_BYTES)
    socket.setsockopt(zmq.LINGER, 0)
    socket.bind(args.endpoint)
    send, monotonic = socket.send, time.monotonic
    samples: list[tuple[float, int]] = [(monotonic(), 0)]
    deadline = samples[0][0] + args.max_run
    sent = 0
    try:
        while not stop_requested:
            for chunk in chunks:
                for frame in chunk:
                    send(frame)
                sent += SEND_CHUNK
                now = monotonic()
                samples.append((now, sent))
                if stop_requested or now > deadline:
                    stop_requested = True
                    break
    finally:
        socket.close(linger=0)
        context.term()
    print(json.dumps({"samples": samples}))
    return 0


def _count_at(samples: list[tuple[float, int]], at: float) -> float:
    """The publisher's send count at monotonic time `at`, interpolated between samples."""
    times = [sample[0] for sample in samples]
    index = bisect.bisect_left(times, at)
    if index <= 0:
        return float(samples[0][1])
    if index >= len(samples):
        return float(samples[-1][1])
    (t_before, n_before), (t_after, n_after) = samples[index - 1], samples[index]
    return n_before + (n_after - n_before) * (at - t_before) / (t_after - t_before)


def _unwrap(counter: int, estimate: float) -> int:
    """The send index whose ring counter is `counter`, nearest the publisher's own count."""
    return counter + RING_SIZE * round((estimate - counter) / RING_SIZE)


def summarize(
    kind: str,
    subscriber: dict[str, Any],
    publisher_samples: list[tuple[float, int]] | None,
    hwm: int,
) -> dict[str, Any]:
    """Turn the subscriber's (and baseline publisher's) raw counts into rates and drops.

    The baseline's ring counter is unwrapped with the publisher's own count, which is safe only
    while far fewer than RING_SIZE / 2 messages are in flight: bounded HWMs guarantee that.
    """
    start, end = subscriber["window_start"], subscriber["window_end"]
    window_s = end - start
    received = subscriber["received"]
    start_by_key, end_by_key = subscriber["start_by_key"], subscriber["end_by_key"]
    sent_in_window: int | None = None
    sent_per_s: float | None = None
    if kind == "baseline" and publisher_samples:
        sent_per_s = (_count_at(publisher_samples, end) - _count_at(publisher_samples, start)) / (
            window_s
        )
        if subscriber["edges_complete"] and 0 < hwm <= RING_SIZE // 8:
            first = _unwrap(start_by_key["counter"], _count_at(publisher_samples, start))
            after = _unwrap(end_by_key["counter"], _count_at(publisher_samples, end))
            sent_in_window = after - first
    elif subscriber["edges_complete"]:
        sent_in_window = sum(end_by_key[key] - start_by_key[key] for key in start_by_key)
        sent_per_s = sent_in_window / window_s
    dropped = None if sent_in_window is None else sent_in_window - received
    marks = subscriber["marks"]
    per_second = [
        (count_after - count_before) / (t_after - t_before)
        for (t_before, count_before), (t_after, count_after) in itertools.pairwise(marks)
        if t_after - t_before >= 0.5
    ]
    publisher_cpu_s, busy_s = subscriber["publisher_cpu_s"], subscriber["machine_busy_cpu_s"]
    other_cpu_s = None
    if publisher_cpu_s is not None and busy_s is not None:
        other_cpu_s = max(0.0, busy_s - publisher_cpu_s - subscriber["subscriber_cpu_s"])
    steal_s = subscriber["machine_steal_cpu_s"]
    return {
        "kind": kind,
        # Monotonic clock (system-wide on Linux): other processes' samples can be aligned to it.
        "window_start": start,
        "window_end": end,
        "marks": marks,
        "window_s": window_s,
        "received": received,
        "received_per_s": received / window_s,
        "received_per_s_each_second": per_second,
        "sent_in_window": sent_in_window,
        "sent_per_s": sent_per_s,
        "dropped": dropped,
        "drop_fraction": None
        if dropped is None or not sent_in_window
        else dropped / sent_in_window,
        "mean_frame_bytes": subscriber["mean_frame_bytes"],
        "subscriber_cpu_cores": subscriber["subscriber_cpu_s"] / window_s,
        "publisher_cpu_cores": None if publisher_cpu_s is None else publisher_cpu_s / window_s,
        # Ticks delivered per CPU-second the publisher used: less sensitive to other load.
        "received_per_publisher_cpu_s": received / publisher_cpu_s if publisher_cpu_s else None,
        "other_cpu_cores": None if other_cpu_s is None else other_cpu_s / window_s,
        "steal_cpu_cores": None if steal_s is None else steal_s / window_s,
    }


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM this process (by its pid), then SIGKILL if it has not exited in time."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=STOP_TIMEOUT_S)


def _log_tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def publisher_command(
    kind: str, endpoint: str, options: argparse.Namespace, extra_settings: Sequence[str] = ()
) -> list[str]:
    """The publisher's command line; extra_settings are further feedsvc `--set` assignments,
    applied after (so overriding) the benchmark's own."""
    if kind == "baseline":
        max_run_s = FIRST_MESSAGE_TIMEOUT_S + options.warmup + options.duration + 30.0
        return [
            sys.executable,
            str(Path(__file__).resolve()),
            "--role=raw-publisher",
            f"--endpoint={endpoint}",
            f"--symbols={options.symbols}",
            f"--hwm={options.hwm}",
            f"--max-run={max_run_s}",
        ]
    settings = [
        f"publisher.endpoints=[{endpoint}]",
        "ingest.endpoint=",
        "sync.endpoint=",
        "metrics.port=0",
        "synthetic.enabled=true",
        "synthetic.rate=0",
        f"synthetic.symbols={options.symbols}",
        f"publisher.sndhwm={options.hwm}",
        f"publisher.sndbuf={SNDBUF_BYTES}",
        "kafka.enabled=false",
        *extra_settings,
    ]
    return [
        sys.executable,
        "-m",
        "feedsvc.cli",
        "serve",
        *[part for setting in settings for part in ("--set", setting)],
    ]


def run_log_path(kind: str, run_index: int, workdir: Path) -> Path:
    """Where measure() keeps the publisher's and subscriber's stderr of one run."""
    return workdir / f"{kind}-{run_index}.log"


def measure(
    kind: str,
    run_index: int,
    options: argparse.Namespace,
    workdir: Path,
    extra_settings: Sequence[str] = (),
    stop_timeout_s: float = STOP_TIMEOUT_S,
    while_running: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """One measurement: start the publisher and the subscriber, collect, stop both by pid.

    extra_settings go to publisher_command(); stop_timeout_s bounds the publisher's exit after
    SIGTERM; while_running(publisher pid) is called every POLL_INTERVAL_S until the subscriber
    is done (to sample other processes).
    """
    endpoint = f"ipc://{workdir}/{kind}-{run_index}"
    log_path = run_log_path(kind, run_index, workdir)
    summary_path = log_path.with_suffix(".summary.json")
    subscriber_command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--role=subscriber",
        f"--kind={kind}",
        f"--endpoint={endpoint}",
        f"--symbols={options.symbols}",
        f"--hwm={options.hwm}",
        f"--warmup={options.warmup}",
        f"--duration={options.duration}",
    ]
    load_before = os.getloadavg()[0]
    started: list[subprocess.Popen[bytes]] = []
    with log_path.open("wb") as log:
        try:
            command = publisher_command(kind, endpoint, options, extra_settings)
            if kind == "feedsvc":
                command[4:4] = ["--summary-file", str(summary_path)]  # after "serve"
            publisher = subprocess.Popen(
                command,
                stdout=subprocess.PIPE if kind == "baseline" else subprocess.DEVNULL,
                stderr=log,
            )
            started.append(publisher)
            subscriber = subprocess.Popen(
                [*subscriber_command, f"--publisher-pid={publisher.pid}"],
                stdout=subprocess.PIPE,
                stderr=log,
            )
            started.append(subscriber)
            deadline = (
                time.monotonic()
                + FIRST_MESSAGE_TIMEOUT_S
                + options.warmup
                + options.duration
                + 2 * BOUNDARY_TIMEOUT_S
                + 30.0
            )
            while subscriber.poll() is None:
                if publisher.poll() is not None:
                    raise BenchError(
                        f"{kind} publisher exited early with code {publisher.returncode}; "
                        f"its log ({log_path}):\n{_log_tail(log_path)}"
                    )
                if time.monotonic() > deadline:
                    raise BenchError(f"{kind} subscriber did not finish in time; see {log_path}")
                if while_running is not None:
                    while_running(publisher.pid)
                time.sleep(POLL_INTERVAL_S)
            assert subscriber.stdout is not None
            subscriber_result = json.loads(subscriber.stdout.read() or b"{}")
            if "error" in subscriber_result or "received" not in subscriber_result:
                raise BenchError(
                    f"{kind} subscriber: {subscriber_result.get('error', 'no result')}; "
                    f"log ({log_path}):\n{_log_tail(log_path)}"
                )
            publisher.send_signal(signal.SIGTERM)
            try:
                publisher_output, _ = publisher.communicate(timeout=stop_timeout_s)
            except subprocess.TimeoutExpired:
                raise BenchError(
                    f"{kind} publisher did not stop on SIGTERM; see {log_path}"
                ) from None
            samples = None
            if kind == "baseline":
                try:
                    samples = [tuple(sample) for sample in json.loads(publisher_output)["samples"]]
                except (json.JSONDecodeError, KeyError):
                    raise BenchError(
                        f"baseline publisher reported no counts; see {log_path}"
                    ) from None
        finally:
            for process in reversed(started):
                _stop(process)
    result = summarize(kind, subscriber_result, samples, options.hwm)
    result["run"] = run_index
    result["load_average_1m_before"] = load_before
    if kind == "feedsvc":
        result["serve_exit_code"] = publisher.returncode
        try:
            published = json.loads(summary_path.read_text())["published"]
        except (OSError, ValueError, KeyError):
            published = None  # serve did not get to write its summary
        result["serve_published_total"] = published
    return result


def machine_facts() -> dict[str, Any]:
    model = None
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
        model = found.group(1).strip() if found else None
    except OSError:
        pass
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "platform": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "pyzmq": zmq.pyzmq_version(),
        "libzmq": zmq.zmq_version(),
        "orjson": orjson.__version__,
        "load_average_1m_at_start": os.getloadavg()[0],
    }


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _fraction(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _cores(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _median(values: list[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return statistics.median(known) if known else None


def report(
    facts: dict[str, Any], options: argparse.Namespace, runs: list[dict[str, Any]]
) -> dict[str, Any]:
    """Print the table on stdout; returns the figures (also written by --json)."""
    summary: dict[str, Any] = {}
    for kind in KINDS:
        mine = [run for run in runs if run["kind"] == kind]
        received = [run["received_per_s"] for run in mine]
        median_received = statistics.median(received)
        summary[kind] = {
            "received_per_s_median": median_received,
            "received_per_s_runs": received,
            "sent_per_s_median": _median([run["sent_per_s"] for run in mine]),
            "received_per_publisher_cpu_s_median": _median(
                [run["received_per_publisher_cpu_s"] for run in mine]
            ),
            "drop_fraction_median": _median([run["drop_fraction"] for run in mine]),
            "spread": (max(received) - min(received)) / median_received,
            "publisher_cpu_cores_median": _median([run["publisher_cpu_cores"] for run in mine]),
            "subscriber_cpu_cores_median": _median([run["subscriber_cpu_cores"] for run in mine]),
            "other_cpu_cores_median": _median([run["other_cpu_cores"] for run in mine]),
            "steal_cpu_cores_median": _median([run["steal_cpu_cores"] for run in mine]),
            "mean_frame_bytes": _median([run["mean_frame_bytes"] for run in mine]),
        }
    ratio = (
        summary["feedsvc"]["received_per_s_median"] / summary["baseline"]["received_per_s_median"]
    )
    sent_ratio = None
    if summary["feedsvc"]["sent_per_s_median"] and summary["baseline"]["sent_per_s_median"]:
        sent_ratio = (
            summary["feedsvc"]["sent_per_s_median"] / summary["baseline"]["sent_per_s_median"]
        )
    # Each feedsvc run over the baseline run just before it: cancels slow drifts of machine speed.
    baseline_runs = [run for run in runs if run["kind"] == "baseline"]
    feedsvc_runs = [run for run in runs if run["kind"] == "feedsvc"]
    pair_ratios = [
        feedsvc_run["received_per_s"] / baseline_run["received_per_s"]
        for baseline_run, feedsvc_run in zip(baseline_runs, feedsvc_runs, strict=True)
    ]
    efficiency_ratio = None
    efficiency = [summary[kind]["received_per_publisher_cpu_s_median"] for kind in KINDS]
    if all(efficiency):
        efficiency_ratio = efficiency[1] / efficiency[0]
    verdict = "PASS" if ratio >= TARGET_RATIO else "MISS"

    print(
        f"machine: {facts['cpu_count']} CPUs ({facts['cpus_usable']} usable), {facts['cpu_model']}"
    )
    print(f"         {facts['platform']}")
    print(
        f"         {facts['python']}, pyzmq {facts['pyzmq']}, libzmq {facts['libzmq']}, "
        f"orjson {facts['orjson']}; "
        f"load average (1 min) at start {facts['load_average_1m_at_start']:.2f}"
    )
    print(
        f"settings: {options.duration:g} s window after {options.warmup:g} s warm-up, "
        f"{options.repeats} repeats (alternating), {options.symbols} symbols, ipc, "
        f"SNDHWM=RCVHWM={options.hwm}, SNDBUF={SNDBUF_BYTES}"
    )
    print()
    header = (
        f"{'':26} {'received/s':>11} {'runs (received/s)':>30} {'sent/s':>11} "
        f"{'dropped':>8} {'frame B':>7} {'/pub CPU-s':>10} {'pub CPU':>7} {'sub CPU':>7} "
        f"{'other':>6} {'steal':>6}"
    )
    print(header)
    print("-" * len(header))
    for kind in KINDS:
        figures = summary[kind]
        runs_text = " ".join(f"{value / 1000:,.0f}k" for value in figures["received_per_s_runs"])
        print(
            f"{LABELS[kind]:26} {_rate(figures['received_per_s_median']):>11} {runs_text:>30} "
            f"{_rate(figures['sent_per_s_median']):>11} "
            f"{_fraction(figures['drop_fraction_median']):>8} "
            f"{figures['mean_frame_bytes'] or 0:>7.0f} "
            f"{_rate(figures['received_per_publisher_cpu_s_median']):>10} "
            f"{_cores(figures['publisher_cpu_cores_median']):>7} "
            f"{_cores(figures['subscriber_cpu_cores_median']):>7} "
            f"{_cores(figures['other_cpu_cores_median']):>6} "
            f"{_cores(figures['steal_cpu_cores_median']):>6}"
        )
    print("-" * len(header))
    print(f"ratio feedsvc/baseline (received): {ratio:.3f}   target >= {TARGET_RATIO}   {verdict}")
    print(
        f"ratio feedsvc/baseline (received), per adjacent pair: "
        f"{' '.join(f'{value:.3f}' for value in pair_ratios)} "
        f"(median {statistics.median(pair_ratios):.3f})"
    )
    if sent_ratio is not None:
        print(f"ratio feedsvc/baseline (sent):     {sent_ratio:.3f}")
    if efficiency_ratio is not None:
        print(f"ratio feedsvc/baseline (received per publisher CPU-second): {efficiency_ratio:.3f}")
    legend = (
        "medians",
        "received/s: ticks the subscriber got per second of the window",
        "sent/s: baseline = the publisher loop's own count; "
        "feedsvc = per-symbol seq spans seen by the subscriber",
        "dropped: (sent - received) / sent in the window",
        "/pub CPU-s: ticks received per CPU-second of the publisher process",
        "CPU: cores used in the window by the publisher (incl. its libzmq I/O thread), "
        "the subscriber, all other processes, hypervisor steal",
    )
    print("\n".join(f"  {line}" for line in legend))
    notes = []
    for kind in KINDS:
        if summary[kind]["spread"] > NOISY_SPREAD:
            notes.append(
                f"{kind} runs spread {100 * summary[kind]['spread']:.0f}% of the median: "
                "noisy (other load, see the other/steal columns, or the VM's speed varying), "
                "consider a rerun or more --repeats"
            )
        other = summary[kind]["other_cpu_cores_median"]
        if other is not None and other > 0.2:
            notes.append(
                f"{kind}: other processes used {other:.2f} cores during the windows: "
                "the figures are low, consider a rerun"
            )
        drop = summary[kind]["drop_fraction_median"]
        if drop is not None and drop > 0.01:
            notes.append(
                f"{kind}: the subscriber missed {100 * drop:.1f}% (PUB dropped at the HWM): "
                "received/s is partly the subscriber's limit"
            )
    for note in notes:
        print(f"note: {note}")
    return {
        "machine": facts,
        "settings": {
            "duration_s": options.duration,
            "warmup_s": options.warmup,
            "repeats": options.repeats,
            "symbols": options.symbols,
            "hwm": options.hwm,
            "sndbuf_bytes": SNDBUF_BYTES,
            "baseline_frame_bytes": FRAME_BYTES,
        },
        "summary": summary,
        "ratio_received": ratio,
        "ratio_received_per_pair": pair_ratios,
        "ratio_sent": sent_ratio,
        "ratio_received_per_publisher_cpu_s": efficiency_ratio,
        "target_ratio": TARGET_RATIO,
        "verdict": verdict,
        "runs": runs,
        "load_average_1m_at_end": os.getloadavg()[0],
    }


def run_benchmark(options: argparse.Namespace) -> int:
    facts = machine_facts()
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    runs: list[dict[str, Any]] = []
    total = options.repeats * len(KINDS)
    try:
        for repeat in range(options.repeats):
            for kind in KINDS:
                result = measure(kind, repeat, options, workdir)
                runs.append(result)
                drop = result["drop_fraction"]
                print(
                    f"[{len(runs)}/{total}] {kind:8} run {repeat + 1}/{options.repeats}: "
                    f"received {_rate(result['received_per_s'])}/s, "
                    f"sent {_rate(result['sent_per_s'])}/s, dropped {_fraction(drop)}, "
                    f"CPU pub {_cores(result['publisher_cpu_cores'])} "
                    f"sub {_cores(result['subscriber_cpu_cores'])} "
                    f"other {_cores(result['other_cpu_cores'])} "
                    f"steal {_cores(result['steal_cpu_cores'])}, "
                    f"load {result['load_average_1m_before']:.2f}",
                    file=sys.stderr,
                    flush=True,
                )
    except BenchError as error:
        print(f"bench_publish: {error}\n(logs kept in {workdir})", file=sys.stderr)
        return 1
    shutil.rmtree(workdir, ignore_errors=True)
    figures = report(facts, options, runs)
    if options.json:
        options.json.parent.mkdir(parents=True, exist_ok=True)
        options.json.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"figures written to {options.json}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Publish rate of feedsvc serve vs a raw pyzmq PUB, as seen by a subscriber."
    )
    parser.add_argument(
        "--duration", type=float, default=5.0, help="seconds per measurement window"
    )
    parser.add_argument("--repeats", type=int, default=3, help="measurements of each kind")
    parser.add_argument("--symbols", type=int, default=50, help="synthetic symbols (topics)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds skipped before a window")
    parser.add_argument(
        "--hwm", type=int, default=DEFAULT_HWM, help="SNDHWM of both publishers and RCVHWM"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    hidden = argparse.SUPPRESS
    parser.add_argument("--role", choices=("subscriber", "raw-publisher"), help=hidden)
    parser.add_argument("--kind", choices=KINDS, help=hidden)
    parser.add_argument("--endpoint", help=hidden)
    parser.add_argument("--publisher-pid", type=int, default=0, help=hidden)
    parser.add_argument("--max-run", type=float, default=60.0, help=hidden)
    return parser


def main(argv: list[str] | None = None) -> int:
    options = build_parser().parse_args(argv)
    if options.duration <= 0 or options.repeats < 1 or options.symbols < 1 or options.warmup < 0:
        print(
            "bench_publish: --duration, --repeats, --symbols must be positive, --warmup >= 0",
            file=sys.stderr,
        )
        return 2
    if options.role == "subscriber":
        return run_subscriber(options)
    if options.role == "raw-publisher":
        return run_raw_publisher(options)
    return run_benchmark(options)


if __name__ == "__main__":
    sys.exit(main())
