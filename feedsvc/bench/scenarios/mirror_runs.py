"""bench_mirror's runs: Part A's OFF/ON and paced runs and Part B's outage run, each one
`feedsvc serve` with the publish scenario's subscriber (feedsvc.bench.scenarios.publish.measure),
plus the mirror settings, the pollers, and `feedsvc replay --verify` over the outage topic."""

from __future__ import annotations

import argparse
import contextlib
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson

from feedsvc.bench.kafka import PROJECT_ROOT, START_TIMEOUT_S, KafkaBroker
from feedsvc.bench.procs import ProcessError, free_tcp_port, read_summary
from feedsvc.bench.scenarios.mirror_analysis import (
    OUTAGE_AFTER_START_S,
    OUTAGE_RATE,
    PACED_RATE,
    PARTITIONS,
    WATERMARK_MAX_GAP_S,
    broker_back_at,
    broker_down_times,
    kept_publishing,
    lag_summary,
    marks_as_samples,
    mirror_lags_s,
    mirror_shutdown,
    outage_backlog,
    outage_no_loss,
    outage_phases,
    outage_publishing,
    per_second_rates,
    rate_between,
)
from feedsvc.bench.scenarios.mirror_pollers import (
    OutageController,
    PublishedPoller,
    RunMonitor,
    WatermarkPoller,
)
from feedsvc.bench.scenarios.mirror_report import describe_run
from feedsvc.bench.scenarios.publish import BenchError, measure, run_log_path

REPLAY_TIMEOUT_S: Final = 900.0
# Beyond kafka.flush_timeout_s, how long the service may take to exit after SIGTERM.
EXIT_MARGIN_S: Final = 60.0
OUTAGE_RUN_INDEX: Final = 1_000
# The service's log lines kept in the JSON for people to read (not the periodic rate lines);
# no figure comes from them: those come from its --summary-file and /metrics.
SERVICE_EVENT: Final = re.compile(r" (WARNING|ERROR) |Kafka|mirror|stopping")

Progress = Callable[[str], None]


def mirror_settings(bootstrap: str, topic: str, flush_timeout_s: float) -> list[str]:
    return [
        "kafka.enabled=true",
        f"kafka.bootstrap={bootstrap}",
        f"kafka.topic={topic}",
        f"kafka.partitions={PARTITIONS}",
        f"kafka.flush_timeout_s={flush_timeout_s:g}",
    ]


def new_topic(label: str) -> str:
    return f"bench-mirror-{label}-{uuid.uuid4().hex[:8]}"


def serve_summary(run_index: int, workdir: Path) -> dict[str, Any] | None:
    """The --summary-file of a measure()d feedsvc run; None if serve did not write one."""
    path = run_log_path("feedsvc", run_index, workdir).with_suffix(".summary.json")
    try:
        return read_summary(path)
    except ProcessError:
        return None


@dataclass
class RunPlan:
    """One `feedsvc serve` run of Part A."""

    label: str
    mirror: bool
    rate: float
    run_index: int
    settings: list[str] = field(default_factory=list)


def rate_plans(repeats: int) -> list[RunPlan]:
    """Part A: `repeats` alternating OFF/ON runs at full speed, then one OFF and one ON paced."""
    plans = [
        RunPlan(f"max-{'on' if mirror else 'off'}", mirror, 0.0, 0)
        for _ in range(repeats)
        for mirror in (False, True)
    ]
    plans += [RunPlan("paced-off", False, PACED_RATE, 0), RunPlan("paced-on", True, PACED_RATE, 0)]
    for index, plan in enumerate(plans):
        plan.run_index = index
    return plans


def measure_run(
    plan: RunPlan, options: argparse.Namespace, broker: KafkaBroker, workdir: Path
) -> dict[str, Any]:
    """One Part A run via the publish scenario's measure(), plus the mirror's and the broker's
    figures."""
    topic = new_topic(plan.label) if plan.mirror else None
    settings = [f"synthetic.rate={plan.rate:g}"]
    if topic is not None:
        settings += mirror_settings(broker.bootstrap, topic, options.flush_timeout)
        settings += options.set
    monitor = RunMonitor(broker)
    poller = WatermarkPoller(broker.bootstrap, topic) if topic is not None else None
    # The lag needs the service's own published count over time: its /metrics, on a free port.
    published_poller = None
    if topic is not None and plan.rate:
        metrics_port = free_tcp_port()
        settings += ["metrics.host=127.0.0.1", f"metrics.port={metrics_port}"]
        published_poller = PublishedPoller(metrics_port)
    with (
        poller if poller is not None else contextlib.nullcontext(),
        published_poller if published_poller is not None else contextlib.nullcontext(),
    ):
        result = measure(
            "feedsvc",
            plan.run_index,
            options,
            workdir,
            extra_settings=settings,
            stop_timeout_s=options.flush_timeout + EXIT_MARGIN_S,
            while_running=monitor,
        )
    start, end = result["window_start"], result["window_end"]
    result.update(label=plan.label, mirror=plan.mirror, rate=plan.rate, topic=topic)
    result["published_per_s"] = result["sent_per_s"] or result["received_per_s"]
    serve_cores = result["publisher_cpu_cores"]
    # The hot path's own cost per tick, whatever share of the 2 cores it got.
    result["published_per_serve_cpu_s"] = (
        result["published_per_s"] / serve_cores if serve_cores else None
    )
    result["serve_cpu_cores_sampled"] = monitor.cores("serve", start, end)
    result["mirror_cpu_cores"] = monitor.cores("mirror", start, end) if plan.mirror else 0.0
    result["broker_cpu_cores"] = monitor.cores("broker", start, end)
    result["mirror_pid_found"] = monitor.mirror_pid is not None
    known = [result["mirror_cpu_cores"], result["broker_cpu_cores"], result["other_cpu_cores"]]
    result["foreign_cpu_cores"] = (
        None if None in known else max(0.0, known[2] - known[0] - known[1])
    )
    if poller is not None:
        result["acked_per_s_window"] = rate_between(poller.samples, start, end)
        # Includes the final flush, when the mirror has the CPU to itself: its capacity.
        result["acked_per_s_peak"] = max(
            (rate for _, rate in per_second_rates(poller.samples, WATERMARK_MAX_GAP_S)),
            default=None,
        )
        result["watermark_samples"] = poller.samples
        if published_poller is not None:
            result.update(
                lag_summary(
                    mirror_lags_s(published_poller.samples, poller.samples, plan.rate, start, end)
                )
            )
        result.update(mirror_shutdown(serve_summary(plan.run_index, workdir)))
        acked, published = result.get("acked"), result.get("published")
        result["acked_fraction"] = acked / published if acked is not None and published else None
    return result


def run_rate_part(
    options: argparse.Namespace, broker: KafkaBroker, workdir: Path, progress: Progress
) -> list[dict[str, Any]]:
    """Part A: R alternating OFF/ON runs at full speed, then one OFF and one ON paced run."""
    plans = rate_plans(options.repeats)
    runs = []
    for plan in plans:
        index = plan.run_index
        rate = "max" if not plan.rate else f"{plan.rate:,.0f}/s"
        progress(
            f"[{index + 1}/{len(plans)}] rate {rate}, mirror {'ON' if plan.mirror else 'OFF'}: "
            f"{options.warmup:g} s warm-up + {options.duration:g} s window"
            + (
                f", then SIGTERM and the Kafka flush (up to {options.flush_timeout:g} s)"
                if plan.mirror
                else ""
            )
        )
        result = measure_run(plan, options, broker, workdir)
        runs.append(result)
        progress(f"[{index + 1}/{len(plans)}] {plan.label}: {describe_run(result)}")
    return runs


def verify_with_replay(bootstrap: str, topic: str) -> dict[str, Any]:
    """`feedsvc replay --verify` over the whole topic; its last stderr line is a JSON summary."""
    command = [
        sys.executable,
        "-m",
        "feedsvc.cli",
        "replay",
        "--bootstrap",
        bootstrap,
        "--topic",
        topic,
        "--verify",
        "--out",
        "/dev/null",
    ]
    started = time.monotonic()
    try:
        completed = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=REPLAY_TIMEOUT_S,
            cwd=PROJECT_ROOT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"feedsvc replay --verify took over {REPLAY_TIMEOUT_S:.0f} s") from None
    lines = completed.stderr.strip().splitlines()
    try:
        summary = orjson.loads(lines[-1]) if lines else None
    except orjson.JSONDecodeError:
        summary = None
    return {
        "command": " ".join(command),
        "exit_code": completed.returncode,
        "seconds": time.monotonic() - started,
        "summary": summary,
        "stderr_tail": lines[-5:],
    }


def analyse_outage(
    result: dict[str, Any],
    watermarks: list[tuple[float, int]],
    times: dict[str, float],
    monitor: RunMonitor,
) -> dict[str, Any]:
    """Published during the outage, the backlog (published - acknowledged) over time, its peak and
    when it drained, and the CPU per phase."""
    received = marks_as_samples(result)
    window = (result["window_start"], result["window_end"])
    down = (times["stop_issued"], broker_back_at(watermarks, times))
    figures: dict[str, Any] = broker_down_times(times, down[1], window[0])
    figures.update(outage_publishing(received, *down))
    backlog = outage_backlog(received, watermarks, window, down)
    drained_at = backlog.pop("drained_at", None)
    figures.update(backlog)
    if backlog["backlog"] is None:
        return figures
    figures["cpu_cores_by_phase"] = {
        phase: {name: monitor.cores(name, start, end) for name in ("serve", "mirror", "broker")}
        for phase, (start, end) in outage_phases(window, down, drained_at).items()
    }
    return figures


def run_outage_part(
    options: argparse.Namespace,
    broker: KafkaBroker,
    workdir: Path,
    restart_estimate_s: float,
    progress: Progress,
) -> dict[str, Any]:
    """Part B: 20k ticks/s, mirror on, the broker down for --outage s, then the audit."""
    topic = new_topic("outage")
    window_s = OUTAGE_AFTER_START_S + options.outage + restart_estimate_s + options.after
    run_options = argparse.Namespace(**{**vars(options), "duration": window_s, "warmup": 1.0})
    settings = [
        f"synthetic.rate={OUTAGE_RATE}",
        *mirror_settings(broker.bootstrap, topic, options.flush_timeout),
        *options.set,
    ]
    monitor = RunMonitor(broker)
    progress(
        f"outage run: {OUTAGE_RATE:,} ticks/s to topic {topic}; broker down {options.outage:g} s "
        f"about {OUTAGE_AFTER_START_S:g} s in; subscriber window {window_s:.0f} s, then SIGTERM "
        f"and the flush (up to {options.flush_timeout:g} s)"
    )
    with WatermarkPoller(broker.bootstrap, topic) as poller:
        controller = OutageController(broker, poller.acknowledged, options.outage, progress)
        controller.start()
        try:
            result = measure(
                "feedsvc",
                OUTAGE_RUN_INDEX,
                run_options,
                workdir,
                extra_settings=settings,
                stop_timeout_s=options.flush_timeout + EXIT_MARGIN_S,
                while_running=monitor,
            )
        finally:
            controller.finish(timeout_s=START_TIMEOUT_S + 10)
    if controller.error is not None:
        raise BenchError(f"outage run: {controller.error}")
    if "answering" not in controller.times:
        raise BenchError("outage run: the broker was not started again within the window")
    log_text = run_log_path("feedsvc", OUTAGE_RUN_INDEX, workdir).read_text(errors="replace")
    shutdown = mirror_shutdown(serve_summary(OUTAGE_RUN_INDEX, workdir))
    log_events = [line for line in log_text.splitlines() if SERVICE_EVENT.search(line)]
    progress(f"outage run: shutdown line: {shutdown.get('mirror_line')}")
    progress("outage run: feedsvc replay --verify over the topic")
    replay = verify_with_replay(broker.bootstrap, topic)
    progress(f"outage run: replay exit {replay['exit_code']}, summary {replay['summary']}")
    figures = analyse_outage(result, poller.samples, controller.times, monitor)
    no_loss = outage_no_loss(shutdown, replay)
    publishing = kept_publishing(figures["published_per_s_during_outage"])
    window_start = result["window_start"]
    return {
        "topic": topic,
        "run": result,
        "timeline_s": {name: at - window_start for name, at in controller.times.items()},
        "received_rates": [
            (at - window_start, rate) for at, rate in per_second_rates(marks_as_samples(result))
        ],
        "acked_rates": [
            (at - window_start, rate)
            for at, rate in per_second_rates(poller.samples, WATERMARK_MAX_GAP_S)
        ],
        "shutdown": shutdown,
        "serve_log_events": log_events,
        "watermark_samples": poller.samples,
        "replay": replay,
        "no_loss": no_loss,
        "kept_publishing": publishing,
        "verdict": "PASS" if no_loss and publishing else "MISS",
        **figures,
    }
