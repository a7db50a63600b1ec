"""bench_mirror's "transactions" runs: paced `feedsvc serve` runs, mirror off, on (this tree) and
on from another source tree (--baseline-root: the mirror without transactions), each with the
publish scenario's ipc subscriber defining the window; the CPU of serve (own and waited-for
children), its mirror child and the broker from /proc; the checkpoint topic read back and the
topics' log bytes; and in the lag runs a read_committed reader that times each tick's visibility.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import subprocess
import sys
import threading
import time
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from feedsvc.bench.kafka import PROJECT_ROOT, KafkaBroker
from feedsvc.bench.procs import (
    ProcessError,
    free_tcp_port,
    kill_process,
    mirror_process_pid,
    process_cpu_seconds,
    read_summary,
    serve_command,
    stop_process,
    wait_until_serving,
)
from feedsvc.bench.scenarios.mirror_analysis import PARTITIONS, lag_summary, mirror_lags_s
from feedsvc.bench.scenarios.mirror_cost import (
    cost_per_tick,
    cost_plan_labels,
    parse_stat_times,
    tick_ts_ns,
    visibility_figures,
    visibility_series,
    window_lags,
)
from feedsvc.bench.scenarios.mirror_pollers import PublishedPoller, RunMonitor, WatermarkPoller
from feedsvc.bench.scenarios.mirror_runs import EXIT_MARGIN_S, mirror_settings, new_topic
from feedsvc.bench.scenarios.publish import (
    FINISH_MARGIN_S,
    BenchError,
    serve_settings,
    subscriber_command,
)
from feedsvc.bench.scenarios.publish_report import summarize
from feedsvc.bench.scenarios.publish_roles import (
    BOUNDARY_TIMEOUT_S,
    FIRST_MESSAGE_TIMEOUT_S,
    POLL_INTERVAL_S,
)
from feedsvc.protocol.checkpoints import checkpoint_topic_for

Progress = Callable[[str], None]

COST_RUN_INDEX: Final = 2_000
SERVE_START_TIMEOUT_S: Final = 60.0
TOPIC_WAIT_TIMEOUT_S: Final = 60.0
CHECKPOINT_READ_TIMEOUT_S: Final = 60.0
CONSUME_BATCH: Final = 10_000
WARM_UP_RUN_S: Final = 5.0
TWIN_READY_TIMEOUT_S: Final = 60.0


@dataclass
class CostPlan:
    """One paced `feedsvc serve` run of the "transactions" section."""

    label: str
    root: Path
    mirror: bool
    rate: float
    run_index: int
    visibility: bool
    # Mirror OFF with `mirror_twin` beside it: the mirror's load on the machine, not on serve.
    twin: bool = False


def cost_plans(options: argparse.Namespace) -> list[CostPlan]:
    baseline: Path | None = options.baseline_root
    plans = []
    for index, label in enumerate(cost_plan_labels(options.repeats, baseline is not None)):
        is_lag = label.startswith("lag-")
        plans.append(
            CostPlan(
                label=label,
                root=baseline if label.endswith("no-txn") and baseline else PROJECT_ROOT,
                mirror=label not in ("off", "off-twin"),
                rate=float(options.lag_rate if is_lag else options.cost_rate),
                run_index=COST_RUN_INDEX + index,
                visibility=is_lag,
                twin=label == "off-twin",
            )
        )
    return plans


def warm_up_plans(options: argparse.Namespace) -> list[CostPlan]:
    """Unmeasured mirror-ON runs before the measured ones, one per source tree, at the lag
    rate (the broker's JIT warms with the invocations)."""
    roots = [PROJECT_ROOT, *([options.baseline_root] if options.baseline_root else [])]
    return [
        CostPlan("warm-up", root, True, float(options.lag_rate), COST_RUN_INDEX - 1 - n, False)
        for n, root in enumerate(roots)
    ]


class CostMonitor(RunMonitor):
    """The CPU of serve (own, and its waited-for children's cutime + cstime, which must stay
    flat while the mirror child lives), its mirror child and the broker, sampled at every call
    (every POLL_INTERVAL_S, and once more right after the window): RunMonitor's 0.5 s steps
    would leave up to half a second at the window's end uncounted."""

    def __init__(self, broker: KafkaBroker, twin_pid: int | None = None) -> None:
        super().__init__(broker)
        self._mirror: int | None = None
        self._twin = twin_pid
        self._twin_mirror: int | None = None

    def __call__(self, serve_pid: int) -> None:
        now = time.monotonic()
        if self._mirror is None:
            self._mirror = mirror_process_pid(serve_pid)
        try:
            stat_text = Path(f"/proc/{serve_pid}/stat").read_text()
        except OSError:
            return
        own_s, children_s = parse_stat_times(stat_text, os.sysconf("SC_CLK_TCK"))
        self.record("serve", serve_pid, now, own_s)
        self.record("serve_children", serve_pid, now, children_s)
        if self._twin is not None and self._twin_mirror is None:
            self._twin_mirror = mirror_process_pid(self._twin)
        for name, pid in (
            ("mirror", self._mirror),
            ("broker", self.broker.pid()),
            ("twin", self._twin),
            ("twin_mirror", self._twin_mirror),
        ):
            cpu_s = None if pid is None else process_cpu_seconds(pid)
            if pid is not None and cpu_s is not None:
                self.record(name, pid, now, cpu_s)
            elif name == "mirror":
                # Gone: serve restarts a dead mirror; record() adds the successor's CPU on.
                self._mirror = None

    @property
    def mirror_pid(self) -> int | None:
        return self._mirror


def reader_settings(bootstrap: str, group: str) -> dict[str, Any]:
    """A plain read_committed reader (librdkafka's defaults otherwise, as kcat's)."""
    return {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
        "enable.partition.eof": True,
        "log_level": 2,
    }


def wait_for_partitions(consumer: Consumer, topic: str, stop: threading.Event) -> list[int]:
    """The topic's partitions once it has PARTITIONS of them (serve creates it at start)."""
    deadline = time.monotonic() + TOPIC_WAIT_TIMEOUT_S
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            metadata = consumer.list_topics(topic, timeout=1.0).topics.get(topic)
        except KafkaException:
            metadata = None
        ready = metadata is not None and metadata.error is None
        if ready and len(metadata.partitions) >= PARTITIONS:
            return sorted(metadata.partitions)
        stop.wait(0.2)
    return []


class VisibilityReader:
    """A read_committed consumer thread on the tick topic from its start: per consume() batch
    its receive time (monotonic) and count, and per tick `time_ns() at receipt - ts`."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.lags_ns: array[int] = array("q")
        self.batches: list[tuple[float, int]] = []
        self.unparsed = 0
        self.cpu_s = 0.0
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="visibility", daemon=True)

    def __enter__(self) -> VisibilityReader:
        self._thread.start()
        return self

    def __exit__(self, *_exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15.0)

    def _run(self) -> None:
        consumer = Consumer(reader_settings(self.bootstrap, f"bench-visibility-{self.topic}"))
        try:
            partitions = wait_for_partitions(consumer, self.topic, self._stop)
            if not partitions:
                self.error = f"topic {self.topic} did not appear"
                return
            consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in partitions])
            started_cpu = time.thread_time()
            self._consume(consumer)
            self.cpu_s = time.thread_time() - started_cpu
        finally:
            consumer.close()

    def _consume(self, consumer: Consumer) -> None:
        append, time_ns, monotonic = self.lags_ns.append, time.time_ns, time.monotonic
        while not self._stop.is_set():
            messages = consumer.consume(CONSUME_BATCH, timeout=0.1)
            if not messages:
                continue
            received_ns, received_at = time_ns(), monotonic()
            counted = 0
            for message in messages:
                if message.error() is not None:
                    continue
                published_ns = tick_ts_ns(message.value() or b"")
                if published_ns is None:
                    self.unparsed += 1
                    continue
                append(received_ns - published_ns)
                counted += 1
            self.batches.append((received_at, counted))


def read_checkpoints(bootstrap: str, topic: str) -> dict[str, Any]:
    """Every committed record of the checkpoint topic: how many, their key and value bytes."""
    figures: dict[str, Any] = {"topic": topic, "records": None, "key_bytes": 0, "value_bytes": 0}
    consumer = Consumer(reader_settings(bootstrap, f"bench-checkpoints-{topic}"))
    try:
        metadata = consumer.list_topics(topic, timeout=10.0).topics.get(topic)
        if metadata is None or metadata.error is not None or not metadata.partitions:
            return figures
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in metadata.partitions])
        at_end: set[int] = set()
        records = 0
        deadline = time.monotonic() + CHECKPOINT_READ_TIMEOUT_S
        while len(at_end) < len(metadata.partitions) and time.monotonic() < deadline:
            for message in consumer.consume(1_000, timeout=0.5):
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        at_end.add(message.partition())
                    continue
                records += 1
                figures["key_bytes"] += len(message.key() or b"")
                figures["value_bytes"] += len(message.value() or b"")
        figures["records"] = records
        figures["complete"] = len(at_end) == len(metadata.partitions)
    except KafkaException as error:
        figures["error"] = str(error)
    finally:
        consumer.close()
    return figures


def log_bytes(data_dir: Path, topic: str) -> int | None:
    """Bytes of the topic's log segments (*.log of its partition folders) in the broker's data
    directory: records, batch headers and transaction markers as stored (lz4-compressed)."""
    folders = [
        folder
        for folder in data_dir.rglob(f"{topic}-*")
        if folder.is_dir() and folder.name[len(topic) + 1 :].isdigit()
    ]
    if not folders:
        return None
    return sum(segment.stat().st_size for folder in folders for segment in folder.glob("*.log"))


@contextlib.contextmanager
def _optional(manager: Any) -> Iterator[Any]:
    if manager is None:
        yield None
    else:
        with manager as entered:
            yield entered


def start_twin(
    plan: CostPlan,
    options: argparse.Namespace,
    broker: KafkaBroker,
    log_path: Path,
    cleanup: contextlib.ExitStack,
) -> subprocess.Popen[bytes]:
    """`mirror_twin` at the run's rate on its own topic, once its mirror process reports."""
    command = [
        sys.executable,
        "-m",
        "feedsvc.bench.scenarios.mirror_twin",
        f"--bootstrap={broker.bootstrap}",
        f"--topic={new_topic('twin')}",
        f"--rate={plan.rate:g}",
        f"--symbols={options.symbols}",
        f"--partitions={PARTITIONS}",
        *(f"--set={setting}" for setting in options.set),
    ]
    twin_log = cleanup.enter_context(log_path.with_suffix(".twin.log").open("wb"))
    twin = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=twin_log)
    cleanup.callback(kill_process, twin)
    assert twin.stdout is not None
    ready, _, _ = select.select([twin.stdout], [], [], TWIN_READY_TIMEOUT_S)
    if not ready or not twin.stdout.readline().startswith(b"ready"):
        raise BenchError(f"the mirror twin did not start; see {log_path.with_suffix('.twin.log')}")
    return twin


def _wait_for_subscriber(
    subscriber: subprocess.Popen[bytes],
    serve: subprocess.Popen[bytes],
    options: argparse.Namespace,
    monitor: CostMonitor,
    log_path: Path,
) -> dict[str, Any]:
    limit_s = FIRST_MESSAGE_TIMEOUT_S + options.warmup + options.duration + FINISH_MARGIN_S
    deadline = time.monotonic() + limit_s + 2 * BOUNDARY_TIMEOUT_S
    while subscriber.poll() is None:
        if serve.poll() is not None:
            raise BenchError(
                f"feedsvc serve exited early with code {serve.returncode}; see {log_path}"
            )
        if time.monotonic() > deadline:
            raise BenchError(f"the subscriber did not finish in time; see {log_path}")
        monitor(serve.pid)
        time.sleep(POLL_INTERVAL_S)
    assert subscriber.stdout is not None
    result = json.loads(subscriber.stdout.read() or b"{}")
    if "error" in result or "received" not in result:
        raise BenchError(f"subscriber: {result.get('error', 'no result')}; see {log_path}")
    return result


def run_cost(
    plan: CostPlan, options: argparse.Namespace, broker: KafkaBroker, workdir: Path
) -> dict[str, Any]:
    """One paced run: serve from `plan.root` (PYTHONPATH and cwd there), the subscriber, the
    samplers; then the summary, the checkpoint topic and the log bytes."""
    endpoint = f"ipc://{workdir}/cost-{plan.run_index}"
    log_path = workdir / f"cost-{plan.run_index}.log"
    summary_path = log_path.with_suffix(".summary.json")
    topic = new_topic(plan.label) if plan.mirror else None
    settings = [f"synthetic.rate={plan.rate:g}"]
    if topic is not None:
        settings += mirror_settings(broker.bootstrap, topic, options.flush_timeout)
        if plan.root == PROJECT_ROOT:
            settings += options.set  # this tree's keys; the other tree may not know them
    metrics_port = free_tcp_port() if plan.visibility else None
    if metrics_port is not None:
        settings += ["metrics.host=127.0.0.1", f"metrics.port={metrics_port}"]
    command = serve_command(serve_settings(endpoint, options, settings), summary_path)
    env = {**os.environ, "PYTHONPATH": str(plan.root)}
    reader = VisibilityReader(broker.bootstrap, topic) if plan.visibility and topic else None
    acked = WatermarkPoller(broker.bootstrap, topic) if plan.visibility and topic else None
    published = PublishedPoller(metrics_port) if metrics_port is not None else None
    started, load_before = time.monotonic(), os.getloadavg()[0]
    with (
        _optional(reader),
        _optional(acked),
        _optional(published),
        contextlib.ExitStack() as cleanup,
    ):
        twin = start_twin(plan, options, broker, log_path, cleanup) if plan.twin else None
        monitor = CostMonitor(broker, None if twin is None else twin.pid)
        serve_log = cleanup.enter_context(log_path.open("wb"))
        serve = subprocess.Popen(
            command, cwd=plan.root, env=env, stdout=subprocess.DEVNULL, stderr=serve_log
        )
        cleanup.callback(kill_process, serve)
        wait_until_serving(serve, log_path, SERVE_START_TIMEOUT_S)
        subscriber_log = cleanup.enter_context(log_path.with_suffix(".sub.log").open("wb"))
        subscriber = subprocess.Popen(
            subscriber_command("feedsvc", endpoint, options, serve.pid),
            stdout=subprocess.PIPE,
            stderr=subscriber_log,
        )
        cleanup.callback(stop_process, subscriber)
        raw = _wait_for_subscriber(subscriber, serve, options, monitor, log_path)
        monitor(serve.pid)
        stop_process(serve, options.flush_timeout + EXIT_MARGIN_S)
        if twin is not None:
            stop_process(twin, options.flush_timeout + EXIT_MARGIN_S)
    run_s = time.monotonic() - started
    window = summarize("feedsvc", raw, None, options.hwm)
    start, end = window["window_start"], window["window_end"]
    window_s = end - start

    def cpu_s(name: str) -> float | None:
        cores = monitor.cores(name, start, end)
        return None if cores is None else cores * window_s

    result: dict[str, Any] = {
        "label": plan.label,
        "root": str(plan.root),
        "rate": plan.rate,
        "topic": topic,
        "run_s": run_s,
        "window_s": window_s,
        "published_in_window": window["sent_in_window"],
        "published_per_s": window["sent_per_s"],
        "drop_fraction": window["drop_fraction"],
        "mean_tick_bytes": window["mean_frame_bytes"],
        "serve_cpu_s": raw["publisher_cpu_s"],
        "serve_children_cpu_s": cpu_s("serve_children"),
        # The twin's mirror process stands in the mirror's column of its row: the same load.
        "mirror_cpu_s": cpu_s("mirror") if plan.mirror else cpu_s("twin_mirror") if twin else 0.0,
        "twin_cpu_s": cpu_s("twin") if twin else None,
        "broker_cpu_s": cpu_s("broker"),
        "broker_cpu_cores": monitor.cores("broker", start, end),
        "mirror_pid_found": monitor.mirror_pid is not None,
        "serve_exit_code": serve.returncode,
        "load_average_1m_before": load_before,
    }
    try:
        summary: dict[str, Any] | None = read_summary(summary_path)
    except ProcessError:
        summary = None  # serve did not get to write it: the run's figures say so (None)
    if summary is not None:
        result["published_total"] = summary.get("published")
        mirror = summary.get("mirror") or {}
        result["delivered"] = mirror.get("delivered")
        result["flush_s"] = mirror.get("flush_s")
        result["restarts"] = mirror.get("restarts")
    if topic is not None:
        result["topic_disk_bytes"] = log_bytes(broker.data_dir, topic)
        if plan.root == PROJECT_ROOT:
            checkpoints = checkpoint_topic_for(topic)
            result["checkpoint"] = read_checkpoints(broker.bootstrap, checkpoints)
            result["checkpoint_disk_bytes"] = log_bytes(broker.data_dir, checkpoints)
    result.update(cost_per_tick(result))
    if reader is not None:
        lags = window_lags(reader.batches, reader.lags_ns, start, end)
        result.update(visibility_figures(lags))
        result["visibility_series"] = visibility_series(reader.batches, reader.lags_ns, start, end)
        result["read_total"] = len(reader.lags_ns)
        result["reader_cpu_s"] = reader.cpu_s
        result["reader_error"] = reader.error
        result["unparsed"] = reader.unparsed
    if acked is not None and published is not None:
        lag = lag_summary(mirror_lags_s(published.samples, acked.samples, plan.rate, start, end))
        result["metrics_lag_s_median"] = lag["lag_s_median"]
        result["metrics_lag_s_max"] = lag["lag_s_max"]
    return result


def describe_cost_run(result: dict[str, Any]) -> str:
    def us(key: str) -> str:
        value = result.get(key)
        return "-" if value is None else f"{value:.2f}"

    restarts = result.get("restarts")
    text = (
        (f"MIRROR RESTARTED {restarts}x; " if restarts else "")
        + f"published {result['published_per_s'] or 0:,.0f}/s, serve {us('serve_us_per_tick')} "
        f"us/tick (children {result['serve_children_cpu_s'] or 0:.2f} s), mirror "
        f"{us('mirror_us_per_tick')}, broker {us('broker_us_per_tick')} us/tick"
    )
    text += f", load {result['load_average_1m_before']:.2f}"
    if result.get("checkpoint_bytes_per_tick") is not None:
        text += f", checkpoints {result['checkpoint_bytes_per_tick']:.2f} B/tick"
    if result.get("p99_s") is not None:
        text += (
            f"; visible p50 {result['p50_s']:.3f} p99 {result['p99_s']:.3f} max "
            f"{result['max_s']:.3f} s ({result['count']:,} ticks)"
        )
    return text


def run_transactions_part(
    options: argparse.Namespace, broker: KafkaBroker, workdir: Path, progress: Progress
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The cost runs, then the lag runs: (cost runs, lag runs)."""
    plans = cost_plans(options)
    # The broker's JIT compiles its produce and transaction paths on first use: a first measured
    # run would carry that CPU. One short unmeasured run per tree warms them.
    warm_options = argparse.Namespace(**{**vars(options), "duration": WARM_UP_RUN_S})
    for number, plan in enumerate(warm_up_plans(options)):
        progress(f"[T warm-up] broker warm-up run{'' if number == 0 else ' (other tree)'}")
        run_cost(plan, warm_options, broker, workdir)
    cost_runs: list[dict[str, Any]] = []
    lag_runs: list[dict[str, Any]] = []
    for number, plan in enumerate(plans, 1):
        tree = "" if plan.root == PROJECT_ROOT else f" from {plan.root}"
        progress(
            f"[T {number}/{len(plans)}] {plan.label}{tree} at {plan.rate:,.0f} ticks/s: "
            f"{options.warmup:g} s warm-up + {options.duration:g} s window"
        )
        result = run_cost(plan, options, broker, workdir)
        (lag_runs if plan.visibility else cost_runs).append(result)
        progress(f"[T {number}/{len(plans)}] {plan.label}: {describe_cost_run(result)}")
    return cost_runs, lag_runs
