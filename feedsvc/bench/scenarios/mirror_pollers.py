"""What bench_mirror watches while a run goes on, each in its own thread or poll callback: the CPU
of serve, its mirror child and the broker; Kafka's high watermarks (acknowledged ticks); the
service's published count on /metrics; and Part B's broker outage."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Final

import confluent_kafka
from confluent_kafka import KafkaException, TopicPartition

from feedsvc.bench.kafka import BrokerError, KafkaBroker
from feedsvc.bench.procs import mirror_process_pid, process_cpu_seconds
from feedsvc.bench.scenarios.mirror_analysis import OUTAGE_AFTER_START_S, PARTITIONS
from feedsvc.bench.scenarios.publish_report import count_at
from feedsvc.bench.scrape import PUBLISHED_TOTAL, scrape
from feedsvc.replay.reader import make_consumer

CPU_SAMPLE_INTERVAL_S: Final = 0.5
WATERMARK_INTERVAL_S: Final = 1.0
WATERMARK_REQUEST_TIMEOUT_S: Final = 1.0
PUBLISHED_POLL_INTERVAL_S: Final = 0.25
# How long the mirror may take to get its first ticks acknowledged (process start, topic creation).
FIRST_ACK_TIMEOUT_S: Final = 60.0


def broker_step(step: Callable[[], str], progress: Callable[[str], None]) -> float:
    """Run a broker step (KafkaBroker.start or .stop), show what scripts/kafka.sh printed;
    returns its seconds. Raises BrokerError as the step does."""
    started = time.monotonic()
    output = step().strip()
    if output:
        progress(output)
    return time.monotonic() - started


class RunMonitor:
    """Samples the CPU of the serve process, its mirror child and the broker while a run goes on.

    Called by the publish scenario's measure() with the serve pid every poll. A name whose pid
    changes (the broker restarting) carries its count on from the old pid's last sample.
    """

    def __init__(self, broker: KafkaBroker) -> None:
        self.broker = broker
        self.cpu_by_name: dict[str, list[tuple[float, float]]] = {}
        self._last_by_name: dict[str, tuple[int, float, float]] = {}
        self._mirror_pid: int | None = None
        self._next_sample = 0.0

    def __call__(self, serve_pid: int) -> None:
        now = time.monotonic()
        if now < self._next_sample:
            return
        self._next_sample = now + CPU_SAMPLE_INTERVAL_S
        if self._mirror_pid is None:
            self._mirror_pid = mirror_process_pid(serve_pid)
        pids = {"serve": serve_pid, "mirror": self._mirror_pid, "broker": self.broker.pid()}
        for name, pid in pids.items():
            cpu_s = None if pid is None else process_cpu_seconds(pid)
            if pid is None or cpu_s is None:
                continue
            self.record(name, pid, now, cpu_s)

    def record(self, name: str, pid: int, at: float, cpu_s: float) -> None:
        """One CPU reading of `name` (process `pid`) at monotonic time `at`."""
        last_pid, last_cpu_s, base_s = self._last_by_name.get(name, (pid, 0.0, 0.0))
        if last_pid != pid:
            base_s += last_cpu_s
        self._last_by_name[name] = (pid, cpu_s, base_s)
        self.cpu_by_name.setdefault(name, []).append((at, base_s + cpu_s))

    @property
    def mirror_pid(self) -> int | None:
        return self._mirror_pid

    def cores(self, name: str, start: float, end: float) -> float | None:
        """Mean cores `name` used between two monotonic times; None without samples around them."""
        samples = self.cpu_by_name.get(name, [])
        covered = 2 * CPU_SAMPLE_INTERVAL_S
        if (
            end <= start
            or not samples
            or samples[0][0] > start + covered
            or samples[-1][0] < end - covered
        ):
            return None
        return (count_at(samples, end) - count_at(samples, start)) / (end - start)


class _SamplingThread:
    """(monotonic time, count) samples taken by `_run` in a daemon thread, between __enter__ and
    __exit__."""

    name = "sampler"
    join_timeout_s = 5.0

    def __init__(self) -> None:
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)

    def __enter__(self) -> _SamplingThread:
        self._thread.start()
        return self

    def __exit__(self, *_exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.join_timeout_s)

    def _run(self) -> None:
        raise NotImplementedError


class WatermarkPoller(_SamplingThread):
    """Acknowledged ticks over time: the sum of the topic's high watermarks, asked every second
    in a thread (with acks=all on a single broker, the high watermark counts acknowledged records).
    While the broker is down or the topic does not exist yet, samples are simply missing."""

    name = "watermarks"
    join_timeout_s = PARTITIONS * WATERMARK_REQUEST_TIMEOUT_S + 10

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__()
        self.bootstrap = bootstrap
        self.topic = topic

    def acknowledged(self) -> int:
        return self.samples[-1][1] if self.samples else 0

    def _run(self) -> None:
        consumer = make_consumer(self.bootstrap)
        try:
            next_at = time.monotonic()
            while not self._stop.wait(max(0.0, next_at - time.monotonic())):
                next_at += WATERMARK_INTERVAL_S
                sample = self._sample(consumer)
                if sample is not None:
                    self.samples.append(sample)
                next_at = max(next_at, time.monotonic())
        finally:
            consumer.close()

    def _sample(self, consumer: confluent_kafka.Consumer) -> tuple[float, int] | None:
        asked_at = time.monotonic()
        total = 0
        for partition in range(PARTITIONS):
            try:
                offsets = consumer.get_watermark_offsets(
                    TopicPartition(self.topic, partition),
                    timeout=WATERMARK_REQUEST_TIMEOUT_S,
                    cached=False,
                )
            except KafkaException:
                return None
            if offsets is None:
                return None
            total += offsets[1]
        return (asked_at + time.monotonic()) / 2, total


class PublishedPoller(_SamplingThread):
    """The service's published count over time, from its Prometheus endpoint
    (``feedsvc_ticks_published_total``), every PUBLISHED_POLL_INTERVAL_S in a thread."""

    name = "published"

    def __init__(self, port: int) -> None:
        super().__init__()
        self.port = port

    def _run(self) -> None:
        while not self._stop.wait(PUBLISHED_POLL_INTERVAL_S):
            asked_at = time.monotonic()
            try:
                samples = scrape(self.port, timeout_s=1.0)
            except (OSError, ValueError):
                continue  # not up yet, or stopping
            published = samples.get(PUBLISHED_TOTAL)
            if published is not None:
                self.samples.append(((asked_at + time.monotonic()) / 2, int(published)))


class OutageController:
    """Part B's broker outage, in a thread: once the mirror's first ticks are acknowledged and
    OUTAGE_AFTER_START_S more have passed, stop the broker, keep it down for `outage_s`, start it.
    Monotonic times of each step are kept for the report."""

    def __init__(
        self,
        broker: KafkaBroker,
        acknowledged: Callable[[], int],
        outage_s: float,
        progress: Callable[[str], None],
    ) -> None:
        self.broker = broker
        self.acknowledged = acknowledged
        self.outage_s = outage_s
        self.progress = progress
        self.times: dict[str, float] = {}
        self.error: str | None = None
        self._abort = threading.Event()
        self._thread = threading.Thread(target=self._run, name="outage", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def finish(self, timeout_s: float) -> None:
        """Stop waiting (a restart already under way is let finish) and join the thread."""
        self._abort.set()
        self._thread.join(timeout=timeout_s)

    def _run(self) -> None:
        try:
            deadline = time.monotonic() + FIRST_ACK_TIMEOUT_S
            while self.acknowledged() == 0:
                if self._abort.wait(0.2):
                    return
                if time.monotonic() > deadline:
                    self.error = f"Kafka acknowledged nothing within {FIRST_ACK_TIMEOUT_S:.0f} s"
                    return
            self.times["first_ack"] = time.monotonic()
            if self._abort.wait(OUTAGE_AFTER_START_S):
                return
            self.progress("outage: stopping the broker")
            self.times["stop_issued"] = time.monotonic()
            broker_step(self.broker.stop, self.progress)
            self.times["stopped"] = time.monotonic()
            self.progress(f"outage: broker down; starting it again in {self.outage_s:g} s")
            if self._abort.wait(self.outage_s):
                return
            self.progress("outage: starting the broker again")
            self.times["start_issued"] = time.monotonic()
            broker_step(self.broker.start, self.progress)
            self.times["answering"] = time.monotonic()
            self.progress("outage: broker answers again; the mirror should be draining its backlog")
        except BrokerError as error:
            self.error = str(error)
