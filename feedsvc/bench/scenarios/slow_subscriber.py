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
no Kafka) and its own subscriber processes (``python -m feedsvc.bench.scenarios.slow_subscriber
--role subscriber``: separate processes, not threads, so they share no GIL with each other or with
the orchestrator), all on the one transport:

A  ``--fast`` fast subscribers (feedsvc.client.Subscriber, reading as fast as they can);
B  the same plus one slow subscriber in conflating mode;
C  the same plus one slow subscriber in normal mode.

A slow subscriber calls ``recv()`` on a schedule of rate/100 per second, sleeping in between.
Fast subscribers record the latency (receive ``time.time_ns()`` minus ``ts``) of every tick in the
window, kept raw during the window and turned into an HdrHistogram afterwards (the ``hdrhistogram``
package, if installed; otherwise percentiles of the sorted values), so the measurement itself
costs a fast subscriber almost nothing per tick (feedsvc.bench.latency).

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
on the machine: the benchmark warns when the load average is high and shows, per phase, the CPU
used by the publisher, the subscribers and everything else.

Usage: python scripts/bench_slow_subscriber.py [--rate 10000] [--duration 60] [--fast 2]
           [--transports ipc tcp] [--json FILE] [--plot FILE.png]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import orjson

from feedsvc.bench.latency import hdr_available
from feedsvc.bench.procs import (
    ProcessError,
    ServeProcess,
    free_tcp_port,
    log_tail,
    machine_cpu_seconds,
    process_cpu_seconds,
    process_rss_bytes,
    stop_process,
)
from feedsvc.bench.report import Progress, machine_facts, write_json
from feedsvc.bench.scenarios.publish import serve_settings, set_arguments
from feedsvc.bench.scenarios.publish_roles import DEFAULT_HWM, SNDBUF_BYTES
from feedsvc.bench.scenarios.slow_plot import plot
from feedsvc.bench.scenarios.slow_report import (
    LOAD_WARNING,
    PHASES,
    Phase,
    evaluate,
    phase_progress,
    print_report,
    summarize_phase,
)
from feedsvc.bench.scenarios.slow_roles import (
    CATCH_UP_TIMEOUT_S,
    SLOW_READ_FRACTION,
    run_subscriber,
)

ROLE_MODULE: Final = "feedsvc.bench.scenarios.slow_subscriber"
DEFAULT_RATE: Final = 10_000.0
# Below this a 1% reader would read less than one tick per second.
MIN_RATE: Final = 100.0
TRANSPORTS: Final = ("ipc", "tcp")
RSS_SAMPLE_INTERVAL_S: Final = 1.0
SERVE_START_TIMEOUT_S: Final = 30.0
# After start-up, before the baseline RSS is taken: imports and first allocations are done.
SETTLE_S: Final = 1.0
# Beyond the window and the catch-up, how long the subscribers may take to write their results.
FINISH_MARGIN_S: Final = 30.0
POLL_INTERVAL_S: Final = 0.05
HISTOGRAM_KINDS: Final = ("auto", "hdr", "raw")

progress = Progress("bench_slow_subscriber")


class BenchError(ProcessError):
    """A phase could not be measured; str() says which process failed and why."""


def _rss_kb(pid: int) -> int | None:
    rss = process_rss_bytes(pid)
    return None if rss is None else rss // 1_024


def _logs(*paths: Path) -> str:
    return "\n".join(f"{path}:\n{log_tail(path)}" for path in paths)


def watch_phase(
    serve: subprocess.Popen[bytes],
    subscribers: Sequence[subprocess.Popen[bytes]],
    start_at: float,
    end_at: float,
    logs: Sequence[Path],
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
                f"feedsvc serve exited early with code {serve.returncode}; its log:\n"
                f"{_logs(logs[0])}"
            )
        if now > finish_by:
            raise BenchError(f"the subscribers did not finish in time; see {logs[-1]}")
        if now >= next_sample_at:
            rss = _rss_kb(serve.pid)
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


def subscriber_command(
    mode: str,
    endpoint: str,
    start_at: float,
    end_at: float,
    options: argparse.Namespace,
    histogram: str,
    out: Path,
) -> list[str]:
    return [
        sys.executable,
        "-m",
        ROLE_MODULE,
        "--role=subscriber",
        f"--mode={mode}",
        f"--endpoint={endpoint}",
        f"--start-at={start_at!r}",
        f"--end-at={end_at!r}",
        f"--rate={options.rate!r}",
        f"--histogram={histogram}",
        f"--out={out}",
    ]


def run_phase(
    transport: str,
    phase: Phase,
    options: argparse.Namespace,
    settings: dict[str, Any],
    workdir: Path,
) -> dict[str, Any]:
    """One phase: a fresh feedsvc serve, its baseline RSS, the subscribers, the samples."""
    tag = f"{transport}-{phase.key}"
    ipc_endpoint = f"ipc://{workdir}/{tag}.ipc"
    tcp_endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    endpoint = ipc_endpoint if transport == "ipc" else tcp_endpoint
    # serve_settings puts its endpoints inside publisher.endpoints=[...]: both go in.
    serve_args = set_arguments(
        serve_settings(
            f"{ipc_endpoint}, {tcp_endpoint}", options, [f"synthetic.rate={options.rate}"]
        )
    )
    modes = ["fast"] * options.fast + ([phase.slow_mode] if phase.slow_mode else [])
    log_path = workdir / f"{tag}.log"
    subscribers_log_path = workdir / f"{tag}.subscribers.log"
    load_before = os.getloadavg()[0]
    # Callbacks run last-in first-out: the subscribers are stopped before the service.
    with contextlib.ExitStack() as cleanup:
        serve = ServeProcess(serve_args, log_path)
        cleanup.callback(serve.close)
        cleanup.callback(stop_process, serve.popen)
        serve.wait_until_serving(SERVE_START_TIMEOUT_S)
        time.sleep(SETTLE_S)
        baseline_rss = _rss_kb(serve.pid)
        start_at = time.monotonic() + options.warmup
        end_at = start_at + options.duration
        subscribers_log = cleanup.enter_context(subscribers_log_path.open("wb"))
        outputs: list[Path] = []
        subscribers: list[subprocess.Popen[bytes]] = []
        for index, mode in enumerate(modes):
            outputs.append(workdir / f"{tag}-{index}-{mode}.json")
            command = subscriber_command(
                mode, endpoint, start_at, end_at, options, settings["histogram"], outputs[-1]
            )
            subscribers.append(
                subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subscribers_log)
            )
            cleanup.callback(stop_process, subscribers[-1])
        samples, cpu = watch_phase(
            serve.popen, subscribers, start_at, end_at, (log_path, subscribers_log_path)
        )
        results = []
        for process, output in zip(subscribers, outputs, strict=True):
            if process.returncode != 0 or not output.exists():
                raise BenchError(
                    f"a subscriber exited with code {process.returncode}; logs:\n"
                    f"{_logs(subscribers_log_path, log_path)}"
                )
            results.append(orjson.loads(output.read_bytes()))
            if "error" in results[-1]:
                raise BenchError(results[-1]["error"])
    return summarize_phase(
        transport, phase, settings, baseline_rss, samples, cpu, results, load_before
    )


def _settings(options: argparse.Namespace, histogram: str) -> dict[str, Any]:
    return {
        "rate": options.rate,
        "symbols": options.symbols,
        "fast_subscribers": options.fast,
        "slow_reads_per_s": options.rate * SLOW_READ_FRACTION,
        "duration_s": options.duration,
        "warmup_s": options.warmup,
        "sndhwm": options.hwm,
        "sndbuf_bytes": SNDBUF_BYTES,
        "histogram": histogram,
    }


def run_benchmark(options: argparse.Namespace) -> int:
    histogram = options.histogram
    if histogram == "auto":
        histogram = "hdr" if hdr_available() else "raw"
    elif histogram == "hdr" and not hdr_available():
        progress("--histogram hdr needs `pip install hdrhistogram`")
        return 2
    facts = {**machine_facts(), "command": [sys.executable, *sys.argv], "histogram": histogram}
    settings = _settings(options, histogram)
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
                result = run_phase(transport, phase, options, settings, workdir)
                phases.append(result)
                progress(phase_progress(transport, result))
    except ProcessError as error:
        progress(f"{error}\n(logs kept in {workdir})")
        return 1
    targets = evaluate(phases)
    print_report(facts, settings, phases, targets)
    shutil.rmtree(workdir, ignore_errors=True)
    if options.json:
        figures = {
            "machine": facts,
            "settings": settings,
            "targets": targets,
            "phases": phases,
            "load_average_1m_at_end": os.getloadavg()[0],
        }
        write_json(options.json, figures)
        print(f"figures written to {options.json}")
    if options.plot:
        plot(phases, options.plot, progress)
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
    parser.add_argument("--hwm", type=int, default=DEFAULT_HWM, help="the publisher's SNDHWM")
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
    # SystemExit unwinds through the cleanup stacks, which stop every started process by pid.
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
        progress(
            f"--duration must be > 0, --warmup >= 0, --rate >= {MIN_RATE:g} (the slow "
            "subscriber reads 1% of it), --fast, --symbols, --hwm >= 1"
        )
        return 2
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    return run_benchmark(options)


if __name__ == "__main__":
    sys.exit(main())
