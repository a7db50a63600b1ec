"""Benchmark for issue "hot path publish rate": feedsvc's delivered tick rate against raw pyzmq.

What it measures, in one run on one machine:

baseline
    A raw pyzmq PUB (no feedsvc code) in its own process, sending pre-encoded 100-byte single
    frames (``b"SYN0001 "`` + padding + a 10-digit counter) as fast as a Python loop can.
feedsvc
    A real ``feedsvc serve`` process with the synthetic feed at ``synthetic.rate=0`` (as fast as
    possible), no ingest socket and one ipc publisher endpoint: the whole hot path (generate,
    sequence, stamp, orjson-encode, send).

Both are read by the same subscriber: a separate process (``python -m
feedsvc.bench.scenarios.publish --role subscriber``, so it shares no GIL with the publisher) with
one SUB socket over ipc subscribed to everything. The primary figure is what that subscriber
*received* per second over a steady window (after a warm-up), because a PUB socket silently drops
for a subscriber whose queue is full: a "sent" rate alone can look good while ticks are lost.

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

The serve process's own count of published ticks comes from its ``--summary-file``.

Usage: python scripts/bench_publish.py [--duration 5] [--repeats 3] [--symbols 50] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

from feedsvc.bench.procs import (
    STOP_TIMEOUT_S,
    ProcessError,
    ServeProcess,
    log_tail,
    stop_process,
)
from feedsvc.bench.report import (
    Progress,
    cores,
    fraction,
    machine_facts,
    rate,
    write_json,
)
from feedsvc.bench.scenarios.publish_report import (
    KINDS,
    build_figures,
    print_report,
    summarize,
)
from feedsvc.bench.scenarios.publish_roles import (
    BOUNDARY_TIMEOUT_S,
    DEFAULT_HWM,
    FIRST_MESSAGE_TIMEOUT_S,
    FRAME_BYTES,
    POLL_INTERVAL_S,
    SNDBUF_BYTES,
    run_raw_publisher,
    run_subscriber,
)

ROLE_MODULE: Final = "feedsvc.bench.scenarios.publish"
# Beyond its first message, warm-up, window and edges: how long a subscriber may take at most.
FINISH_MARGIN_S: Final = 30.0

progress = Progress("bench_publish")


class BenchError(ProcessError):
    """A measurement could not be made; str() says which process failed and why."""


def serve_settings(
    endpoints: str, options: argparse.Namespace, extra_settings: Sequence[str] = ()
) -> list[str]:
    """`feedsvc serve`'s `--set` assignments: the synthetic feed flat out on `endpoints` (one, or
    several separated by commas), nothing else; extra_settings are applied after (so override)
    the benchmark's own."""
    return [
        f"publisher.endpoints=[{endpoints}]",
        "ingest.endpoint=",
        "sync.endpoint=",
        "recovery.endpoint=",
        "metrics.port=0",
        "synthetic.enabled=true",
        "synthetic.rate=0",
        f"synthetic.symbols={options.symbols}",
        f"publisher.sndhwm={options.hwm}",
        f"publisher.sndbuf={SNDBUF_BYTES}",
        "kafka.enabled=false",
        *extra_settings,
    ]


def set_arguments(settings: Sequence[str]) -> list[str]:
    """`--set NAME=VALUE` pairs for `feedsvc serve`."""
    return [part for setting in settings for part in ("--set", setting)]


def _max_run_s(options: argparse.Namespace) -> float:
    return FIRST_MESSAGE_TIMEOUT_S + options.warmup + options.duration + FINISH_MARGIN_S


def raw_publisher_command(endpoint: str, options: argparse.Namespace) -> list[str]:
    return [
        sys.executable,
        "-m",
        ROLE_MODULE,
        "--role=raw-publisher",
        f"--endpoint={endpoint}",
        f"--symbols={options.symbols}",
        f"--hwm={options.hwm}",
        f"--max-run={_max_run_s(options)}",
    ]


def subscriber_command(
    kind: str, endpoint: str, options: argparse.Namespace, publisher_pid: int
) -> list[str]:
    return [
        sys.executable,
        "-m",
        ROLE_MODULE,
        "--role=subscriber",
        f"--kind={kind}",
        f"--endpoint={endpoint}",
        f"--symbols={options.symbols}",
        f"--hwm={options.hwm}",
        f"--warmup={options.warmup}",
        f"--duration={options.duration}",
        f"--publisher-pid={publisher_pid}",
    ]


def run_log_path(kind: str, run_index: int, workdir: Path) -> Path:
    """Where measure() keeps the publisher's stderr of one run (feedsvc: its summary next to it,
    with the suffix .summary.json)."""
    return workdir / f"{kind}-{run_index}.log"


def _logs(*paths: Path) -> str:
    return "\n".join(f"{path}:\n{log_tail(path)}" for path in paths)


def _wait_for_subscriber(
    kind: str,
    subscriber: subprocess.Popen[bytes],
    publisher: subprocess.Popen[bytes],
    options: argparse.Namespace,
    logs: Sequence[Path],
    while_running: Callable[[int], None] | None,
) -> dict[str, Any]:
    """The subscriber's JSON result once it exits; raises BenchError if the publisher exits
    first, it takes too long, or it reports an error."""
    deadline = time.monotonic() + _max_run_s(options) + 2 * BOUNDARY_TIMEOUT_S
    while subscriber.poll() is None:
        if publisher.poll() is not None:
            raise BenchError(
                f"{kind} publisher exited early with code {publisher.returncode}; its log:\n"
                f"{_logs(logs[0])}"
            )
        if time.monotonic() > deadline:
            raise BenchError(f"{kind} subscriber did not finish in time; see {logs[1]}")
        if while_running is not None:
            while_running(publisher.pid)
        time.sleep(POLL_INTERVAL_S)
    assert subscriber.stdout is not None
    result = json.loads(subscriber.stdout.read() or b"{}")
    if "error" in result or "received" not in result:
        raise BenchError(
            f"{kind} subscriber: {result.get('error', 'no result')}; logs:\n{_logs(*logs)}"
        )
    return result


def _stop_raw_publisher(
    publisher: subprocess.Popen[bytes], stop_timeout_s: float, log_path: Path
) -> list[tuple[float, int]]:
    """SIGTERM the baseline publisher and read its (time, sent) samples."""
    publisher.send_signal(signal.SIGTERM)
    try:
        output, _ = publisher.communicate(timeout=stop_timeout_s)
    except subprocess.TimeoutExpired:
        raise BenchError(f"baseline publisher did not stop on SIGTERM; see {log_path}") from None
    try:
        return [tuple(sample) for sample in json.loads(output)["samples"]]
    except (json.JSONDecodeError, KeyError):
        raise BenchError(f"baseline publisher reported no counts; see {log_path}") from None


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

    extra_settings are further `feedsvc serve` `--set` assignments (see serve_settings);
    stop_timeout_s bounds the publisher's exit after SIGTERM; while_running(publisher pid) is
    called every POLL_INTERVAL_S until the subscriber is done (to sample other processes).
    """
    endpoint = f"ipc://{workdir}/{kind}-{run_index}"
    log_path = run_log_path(kind, run_index, workdir)
    subscriber_log_path = log_path.with_suffix(".subscriber.log")
    load_before = os.getloadavg()[0]
    serve: ServeProcess | None = None
    samples = None
    # Callbacks run last-in first-out: the subscriber is stopped before the publisher.
    with contextlib.ExitStack() as cleanup:
        if kind == "feedsvc":
            serve = ServeProcess(
                set_arguments(serve_settings(endpoint, options, extra_settings)), log_path
            )
            cleanup.callback(serve.close)
            publisher = serve.popen
        else:
            publisher_log = cleanup.enter_context(log_path.open("wb"))
            publisher = subprocess.Popen(
                raw_publisher_command(endpoint, options),
                stdout=subprocess.PIPE,
                stderr=publisher_log,
            )
            cleanup.callback(stop_process, publisher)
        subscriber_log = cleanup.enter_context(subscriber_log_path.open("wb"))
        subscriber = subprocess.Popen(
            subscriber_command(kind, endpoint, options, publisher.pid),
            stdout=subprocess.PIPE,
            stderr=subscriber_log,
        )
        cleanup.callback(stop_process, subscriber)
        subscriber_result = _wait_for_subscriber(
            kind, subscriber, publisher, options, (log_path, subscriber_log_path), while_running
        )
        if serve is not None:
            try:
                serve.terminate(stop_timeout_s)
            except subprocess.TimeoutExpired:
                raise BenchError(
                    f"feedsvc publisher did not stop on SIGTERM; see {log_path}"
                ) from None
        else:
            samples = _stop_raw_publisher(publisher, stop_timeout_s, log_path)
    result = summarize(kind, subscriber_result, samples, options.hwm)
    result["run"] = run_index
    result["load_average_1m_before"] = load_before
    if serve is not None:
        result["serve_exit_code"] = publisher.returncode
        try:
            result["serve_published_total"] = serve.summary()["published"]
        except (ProcessError, KeyError):
            result["serve_published_total"] = None  # serve did not get to write its summary
    return result


def _settings(options: argparse.Namespace) -> dict[str, Any]:
    return {
        "duration_s": options.duration,
        "warmup_s": options.warmup,
        "repeats": options.repeats,
        "symbols": options.symbols,
        "hwm": options.hwm,
        "sndbuf_bytes": SNDBUF_BYTES,
        "baseline_frame_bytes": FRAME_BYTES,
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
                progress(
                    f"[{len(runs)}/{total}] {kind:8} run {repeat + 1}/{options.repeats}: "
                    f"received {rate(result['received_per_s'])}/s, "
                    f"sent {rate(result['sent_per_s'])}/s, "
                    f"dropped {fraction(result['drop_fraction'])}, "
                    f"CPU pub {cores(result['publisher_cpu_cores'])} "
                    f"sub {cores(result['subscriber_cpu_cores'])} "
                    f"other {cores(result['other_cpu_cores'])} "
                    f"steal {cores(result['steal_cpu_cores'])}, "
                    f"load {result['load_average_1m_before']:.2f}"
                )
    except ProcessError as error:
        progress(f"{error}\n(logs kept in {workdir})")
        return 1
    shutil.rmtree(workdir, ignore_errors=True)
    figures = build_figures(facts, _settings(options), runs)
    print_report(figures)
    if options.json:
        write_json(options.json, figures)
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
        progress("--duration, --repeats, --symbols must be positive, --warmup >= 0")
        return 2
    if options.role == "subscriber":
        return run_subscriber(options)
    if options.role == "raw-publisher":
        return run_raw_publisher(options)
    return run_benchmark(options)


if __name__ == "__main__":
    sys.exit(main())
