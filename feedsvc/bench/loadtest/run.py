"""One `feedsvc loadtest` run: a publisher (``feedsvc serve``, or the raw baseline) and N
subscriber processes, measured for the window, stopped, and summarized; and the step profile's
series of such runs.

The service runs with its synthetic feed at ``--rate`` (sync, ingest off; metrics on loopback
only with ``--mirror``, for the mirror's lag). The measurement starts on a whole Unix second
(`window.measurement_start`), publisher CPU and RSS are sampled from /proc once a second, and all
subscribers are stopped at once so the fast ones' `behind_at_stop` stays near 0.
"""

from __future__ import annotations

import argparse
import select
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Final

import orjson

from feedsvc.bench.loadtest.analysis import (
    MIRROR_METRICS,
    mirror_figures,
    step_figures,
    step_targets,
    steps_section,
    summarize,
)
from feedsvc.bench.loadtest.roles import READY_LINE, SERVER_KEY_NAME
from feedsvc.bench.loadtest.window import MeasuredWindow, burst_schedule, measurement_start
from feedsvc.bench.procs import (
    endpoint,
    free_tcp_port,
    kill_process,
    log_tail,
    process_cpu_seconds,
    process_rss_bytes,
    serve_command,
    stop_process,
)
from feedsvc.bench.report import Progress, cores, rate

READY_TIMEOUT_S: Final = 30.0
STOP_TIMEOUT_S: Final = 60.0
SAMPLE_INTERVAL_S: Final = 1.0
SCRAPE_TIMEOUT_S: Final = 0.5
LOG_TAIL_LINES: Final = 20
# After the feed handler stopped: time for its last ticks to pass the publisher.
FEED_SETTLE_S: Final = 0.5
# Before the window: the feed handler's start (an interpreter) and connect.
FEED_START_S: Final = 1.0
ROLES_MODULE: Final = "feedsvc.bench.loadtest"

progress = Progress("loadtest")


class LoadtestError(RuntimeError):
    """A run could not be made; str() says which process failed and why."""


def serve_settings(
    args: argparse.Namespace,
    ticks_endpoint: str,
    metrics_port: int,
    ingest_endpoint: str | None = None,
) -> list[str]:
    """The `--set` pairs of the service under test: its synthetic feed at --rate, or with an
    `ingest_endpoint` (--source ingest) only what the feed handler pushes there."""
    settings = [
        f"publisher.endpoints=[{ticks_endpoint}]",
        f"ingest.endpoint={ingest_endpoint or ''}",
        "sync.endpoint=",
        "recovery.endpoint=",
        f"metrics.port={metrics_port}",
        "metrics.host=127.0.0.1",
    ]
    if ingest_endpoint is None:
        settings += [
            "synthetic.enabled=true",
            f"synthetic.rate={args.rate}",
            f"synthetic.symbols={args.symbols}",
        ]
    else:
        settings.append("synthetic.enabled=false")
    if args.curve_dir is not None:
        settings += [
            "curve.enabled=true",
            f"curve.server_secret={args.curve_dir / SERVER_KEY_NAME}.key_secret",
            f"curve.authorized_keys={args.curve_dir / 'authorized'}",
        ]
    bursts = burst_schedule(args)
    if bursts is not None:
        settings += [
            f"synthetic.burst_rate={bursts.rate}",
            f"synthetic.burst_every_s={bursts.every_s}",
            f"synthetic.burst_duration_s={bursts.duration_s}",
        ]
    if args.mirror:
        settings += [
            "kafka.enabled=true",
            f"kafka.bootstrap={args.kafka_bootstrap}",
            f"kafka.topic={args.kafka_topic or 'loadtest-' + uuid.uuid4().hex[:12]}",
        ]
    else:
        settings.append("kafka.enabled=false")
    return [*settings, *args.set]


def role_command(args: argparse.Namespace, role: str, ticks_endpoint: str, slow: bool) -> list[str]:
    """The command line of one hidden role (see `worker.main`)."""
    command = [
        sys.executable,
        "-m",
        ROLES_MODULE,
        f"--role={role}",
        f"--endpoint={ticks_endpoint}",
        f"--rate={args.rate}",
        f"--symbols={args.symbols}",
        f"--slow-fraction={args.slow_fraction}",
        f"--batch={args.ingest_batch}",
    ]
    if args.curve_dir is not None:
        command.append(f"--curve-dir={args.curve_dir}")
    bursts = burst_schedule(args)
    if role == "raw-publisher" and bursts is not None:
        command += [
            f"--burst-rate={bursts.rate}",
            f"--burst-every={bursts.every_s}",
            f"--burst-duration={bursts.duration_s}",
        ]
    return [*command, "--slow-role"] if slow else command


def _wait_ready(subscriber: subprocess.Popen[bytes], publisher: subprocess.Popen[bytes]) -> None:
    assert subscriber.stdout is not None
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if publisher.poll() is not None:
            raise LoadtestError(f"the publisher exited early with code {publisher.returncode}")
        if subscriber.poll() is not None:
            raise LoadtestError(f"a subscriber exited early with code {subscriber.returncode}")
        readable, _, _ = select.select([subscriber.stdout], [], [], 0.1)
        if readable and subscriber.stdout.readline().strip() == READY_LINE:
            return
    raise LoadtestError(f"a subscriber got no tick within {READY_TIMEOUT_S:.0f} s")


def _collect(process: subprocess.Popen[bytes], timeout_s: float) -> bytes:
    """The output of a subscriber already sent SIGTERM, once it exits (read while it writes: its
    result can be larger than a pipe holds).

    Never a second SIGTERM: a worker restores the default handler once its loop is over, and a
    second signal then would kill it before it printed its result.
    """
    try:
        output, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate(timeout=5)
        raise LoadtestError(f"process {process.pid} did not stop on SIGTERM") from None
    return output or b""


def _subscriber_result(output: bytes, label: str, exit_code: int | None) -> dict[str, Any]:
    """The last JSON line a worker printed (a subscriber's, or the feed handler's)."""
    lines = [line for line in output.splitlines() if line.strip().startswith(b"{")]
    if not lines:
        raise LoadtestError(f"{label}: a subscriber reported nothing (exit code {exit_code})")
    return orjson.loads(lines[-1])


def _scrape_mirror(opener: urllib.request.OpenerDirector, port: int) -> dict[str, float | None]:
    try:
        with opener.open(f"http://127.0.0.1:{port}/metrics", timeout=SCRAPE_TIMEOUT_S) as reply:
            return mirror_figures(reply.read().decode("utf-8", "replace"))
    except (OSError, ValueError):
        # A missed scrape (the service busy, or not listening yet) is a gap in the series.
        return dict.fromkeys(MIRROR_METRICS)


def progress_line(label: str, sample: dict[str, Any], duration_s: float, in_burst: bool) -> str:
    """One second's progress: publisher CPU and RSS, the mirror's lag, whether in a burst."""
    rss = sample["rss_bytes"]
    parts = [
        f"{label}: {sample['t_s']:5.1f}/{duration_s:g} s",
        f"publisher CPU {cores(sample['cpu_cores'])} cores",
        f"RSS {'-' if rss is None else f'{rss / 2**20:.1f}'} MiB",
    ]
    if "mirror_lag_s" in sample:
        lag, queue = sample["mirror_lag_s"], sample["mirror_queue_ticks"]
        parts.append(
            f"mirror lag {'-' if lag is None else f'{lag:.3f}'} s "
            f"(queue {rate(queue)} ticks, {rate(sample['mirror_delivered_total'])} acked)"
        )
    if in_burst:
        parts.append("in a burst")
    return ", ".join(parts)


def measure(
    kind: str, args: argparse.Namespace, workdir: Path, label: str | None = None
) -> dict[str, Any]:
    """One run (kind "feedsvc" or "baseline"): publisher + subscribers for args.duration s.

    `label` names the run in the progress lines (default: kind).
    """
    label = label or kind
    ticks_endpoint = endpoint(args.transport, workdir, f"{kind}-ticks")
    log_path = workdir / f"{kind}-publisher.log"
    summary_path = workdir / f"{kind}-publisher-summary.json"
    # The mirror's lag is only visible through the service's metrics endpoint.
    metrics_port = free_tcp_port() if kind == "feedsvc" and args.mirror else 0
    ingest = args.source == "ingest"
    ingest_endpoint = endpoint(args.transport, workdir, f"{kind}-ingest") if ingest else None
    if kind == "feedsvc":
        publisher_command = serve_command(
            serve_settings(args, ticks_endpoint, metrics_port, ingest_endpoint), summary_path
        )
        subscriber_role = "frame-subscriber" if ingest else "feedsvc-subscriber"
    elif ingest:
        publisher_command = [
            *role_command(args, "relay", ticks_endpoint, False),
            f"--ingest-endpoint={ingest_endpoint}",
            f"--summary-file={summary_path}",
        ]
        subscriber_role = "frame-subscriber"
    else:
        publisher_command = [
            *role_command(args, "raw-publisher", ticks_endpoint, False),
            f"--summary-file={summary_path}",
        ]
        subscriber_role = "raw-subscriber"
    feed_result: dict[str, Any] | None = None
    bursts = burst_schedule(args)
    # No proxy: the environment's http_proxy must not catch a loopback scrape.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    samples: list[dict[str, Any]] = []
    with ExitStack() as cleanup, log_path.open("wb") as log:
        publisher = subprocess.Popen(publisher_command, stdout=subprocess.DEVNULL, stderr=log)
        cleanup.callback(kill_process, publisher)
        subscribers = []
        for index in range(args.subscribers):
            slow = index >= args.subscribers - args.slow
            process = subprocess.Popen(
                role_command(args, subscriber_role, ticks_endpoint, slow), stdout=subprocess.PIPE
            )
            cleanup.callback(kill_process, process)
            subscribers.append((process, slow))
        try:
            for process, _slow in subscribers:
                _wait_ready(process, publisher)
        except LoadtestError as error:
            raise LoadtestError(
                f"{label}: {error}; publisher log:\n{log_tail(log_path, LOG_TAIL_LINES)}"
            ) from None
        feeder, settle_s = None, 0.0
        if ingest_endpoint is not None:
            # Once every subscriber has a frame (a heartbeat): it sees every tick the feed sends.
            feeder = subprocess.Popen(
                role_command(args, "feed-handler", ingest_endpoint, False), stdout=subprocess.PIPE
            )
            cleanup.callback(kill_process, feeder)
            settle_s = FEED_START_S
        window = MeasuredWindow(
            measurement_start(time.time() + settle_s, bursts), args.duration, bursts
        )
        time.sleep(max(0.0, window.start_unix_s - time.time()))
        start = time.monotonic()
        cpu_before = process_cpu_seconds(publisher.pid)
        previous_at, previous_cpu = start, cpu_before
        while (now := time.monotonic()) < start + args.duration:
            time.sleep(min(SAMPLE_INTERVAL_S, start + args.duration - now))
            if publisher.poll() is not None:
                raise LoadtestError(
                    f"{label}: the publisher exited with {publisher.returncode}; "
                    f"log:\n{log_tail(log_path, LOG_TAIL_LINES)}"
                )
            at, cpu = time.monotonic(), process_cpu_seconds(publisher.pid)
            cores_used = None
            if cpu is not None and previous_cpu is not None:
                cores_used = (cpu - previous_cpu) / (at - previous_at)
            sample = {
                "t_s": at - start,
                "cpu_cores": cores_used,
                "rss_bytes": process_rss_bytes(publisher.pid),
            }
            if metrics_port:
                sample.update(_scrape_mirror(opener, metrics_port))
            samples.append(sample)
            previous_at, previous_cpu = at, cpu
            # The second just sampled: its middle, not the boundary it ends on.
            in_burst = bursts is not None and bursts.in_burst(time.time() - SAMPLE_INTERVAL_S / 2)
            progress(progress_line(label, sample, args.duration, in_burst))
        cpu_after, end = process_cpu_seconds(publisher.pid), time.monotonic()
        if feeder is not None:
            # The feed stops first and what it sent is let through, so that every tick it sent
            # can be found at the subscribers (the report's `feed` section).
            feeder.send_signal(signal.SIGTERM)
            feed_result = _subscriber_result(
                _collect(feeder, STOP_TIMEOUT_S), f"{label} feed handler", feeder.returncode
            )
            time.sleep(FEED_SETTLE_S)
        # All at once: stopped one after another, the later ones would read further and the
        # earlier ones would look behind.
        for process, _slow in subscribers:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        results = []
        for process, slow in subscribers:
            output = _collect(process, STOP_TIMEOUT_S)
            result = _subscriber_result(output, label, process.returncode)
            result["slow"] = slow
            results.append(result)
        publisher_exit = stop_process(publisher, STOP_TIMEOUT_S)
        if publisher_exit == -signal.SIGKILL:
            raise LoadtestError(f"{label}: the publisher {publisher.pid} did not stop on SIGTERM")
    try:
        publisher_summary = orjson.loads(summary_path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        publisher_summary = None  # it did not get to write one: reported as unknown
    section = summarize(
        kind,
        results,
        samples,
        publisher_summary,
        publisher_exit,
        cpu_before,
        cpu_after,
        end - start,
        window,
    )
    if feed_result is not None:
        section["feed"] = feed_result
    return section


def measure_steps(
    kind: str, args: argparse.Namespace, workdir: Path, label: str | None = None
) -> dict[str, Any]:
    """--profile step for one kind: steady runs at rising rates until one is not sustained.

    The section's own figures are those of the last sustained step (of the first step when none
    was), plus `steps` (one summary per step run) and `max_sustained_rate` (None when none was).
    """
    step_args = argparse.Namespace(**vars(args))
    step_args.duration = args.step_duration or args.duration
    steps: list[dict[str, Any]] = []
    first_section: dict[str, Any] | None = None
    sustained_section: dict[str, Any] | None = None
    for number, target in enumerate(
        step_targets(args.rate, args.step_factor, args.max_steps), start=1
    ):
        step_args.rate = target
        section = measure(kind, step_args, workdir, label=f"{kind} step {number} ({target:,.0f}/s)")
        step = step_figures(target, section)
        steps.append(step)
        progress(
            f"{kind} step {number}: target {target:,.0f}/s, achieved "
            f"{rate(section['publish_rate'])}/s, p99 {rate(section['latency_us']['p99'])} "
            f"us, {step['gaps']} gaps at the fast subscribers: "
            + ("sustained" if step["sustained"] else "not sustained, stopping")
        )
        first_section = first_section or section
        if not step["sustained"]:
            break
        sustained_section = section
    if first_section is None:
        raise LoadtestError("--max-steps must be >= 1")
    return steps_section(steps, sustained_section or first_section)
