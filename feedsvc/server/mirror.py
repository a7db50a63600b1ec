"""The side path to Kafka: every published frame is handed to a mirror process that produces it.

Why a process and not a thread: an inline ``produce()`` per tick cut the publish rate to 0.56x on
the 2-core machine, and a thread would still share the GIL with the hot path. The hot path only
appends each frame to a list; the service hands the list over as one ZeroMQ frame (frames joined by
newlines; JSON from orjson never holds a raw newline and symbols cannot) every
``kafka.handoff_batch_ticks`` ticks or ``kafka.handoff_max_delay_ms``. The mirror process splits
it and calls ``produce()`` with key = symbol and value = the payload exactly as broadcast.

Buffering is librdkafka's (``queue.buffering.max.messages`` / ``max.kbytes``): while Kafka is slow
or down the ticks wait there, retried until ``message.timeout.ms``. When that queue is full the
mirror process stops reading the hand-off socket; when the hand-off socket's queue is full too,
the service drops the batch and counts it (``dropped``), so the hot path never waits.

Accounting: ``produced`` ticks were accepted by librdkafka; ``delivered`` were acknowledged by
Kafka (acks=all, idempotent); ``failed`` got a delivery error; ``dropped`` never reached librdkafka.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import orjson
import zmq

from feedsvc.config import KAFKA_CONNECTION_PREFIXES, KafkaConfig, LogConfig
from feedsvc.logs import RateLimiter, setup_logging
from feedsvc.protocol.ticks import TOPIC_DELIMITER
from feedsvc.secret_refs import resolve_secrets

log = logging.getLogger("feedsvc.mirror")

FRAME_SEPARATOR: Final = b"\n"
# An empty hand-off frame tells the mirror process to flush and exit.
END_OF_STREAM: Final = b""
STATS_INTERVAL_S: Final = 0.5
CALLBACK_POLL_INTERVAL_S: Final = 0.1
# How long the service waits for the mirror process to come up and connect.
STARTUP_TIMEOUT_S: Final = 30.0
TOPIC_CREATE_RETRY_S: Final = 2.0
WARNING_INTERVAL_S: Final = 10.0

# Settings feedsvc relies on; kafka.producer may add to them and override the tuning ones.
PRODUCER_DEFAULTS: Final[dict[str, Any]] = {
    "acks": "all",
    "enable.idempotence": True,
    # Bigger, fewer produce requests: the broker shares the machine's cores with the hot path.
    "linger.ms": 50,
    "batch.num.messages": 10_000,
    "compression.type": "lz4",
    # The topic is created by feedsvc with its partitions and retention, never by accident.
    "allow.auto.create.topics": False,
    # Only failures call back into Python: a callback per acknowledged tick cost the mirror
    # process CPU the hot path needs, and stalled it for seconds while a backlog of a million
    # acknowledgements was served after an outage. Acknowledged ticks are counted from the
    # producer's queue length instead (see _MirrorProducer.queued).
    "delivery.report.only.error": True,
    # Connection failures reach error_cb, which logs them rate-limited; not librdkafka's stderr.
    "log_level": 2,
}
# Settings a kafka.producer entry may not change: the accounting and durability depend on them.
FIXED_PRODUCER_SETTINGS: Final = ("acks", "enable.idempotence", "delivery.report.only.error")


@dataclass
class MirrorStats:
    """Counts of ticks on the side path; the service reports them and exposes them as metrics."""

    handed_off: int = 0
    dropped: int = 0
    produced: int = 0
    delivered: int = 0
    failed: int = 0
    queued: int = 0
    broker_up: bool = False
    finished: bool = False

    @property
    def undelivered(self) -> int:
        """Ticks published but not acknowledged by Kafka (so far, or for good once finished)."""
        return self.handed_off + self.dropped - self.delivered


def producer_settings(config: KafkaConfig) -> dict[str, Any]:
    """librdkafka settings: feedsvc's defaults, then kafka.producer (its ${env:..} and
    ${file:..} secrets read now), then the fixed ones."""
    settings: dict[str, Any] = {**PRODUCER_DEFAULTS, **resolve_secrets(config.producer)}
    settings["bootstrap.servers"] = config.bootstrap
    settings["queue.buffering.max.messages"] = config.max_buffered_ticks
    settings["message.timeout.ms"] = config.delivery_timeout_ms
    for key in FIXED_PRODUCER_SETTINGS:
        settings[key] = PRODUCER_DEFAULTS[key]
    return settings


class MirrorHandoff:
    """The service's end of the side path: collects frames and hands them over in batches.

    ``append`` is the list's own append, called by the publisher once per tick; ``flush_if_due``
    runs once per loop pass.
    """

    def __init__(
        self,
        context: zmq.Context,
        config: KafkaConfig,
        log_config: LogConfig,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.stats = MirrorStats()
        self._pending: list[bytes] = []
        self.append = self._pending.append
        self._clock = clock
        self._last_flush = clock()
        self._max_delay_s = config.handoff_max_delay_ms / 1000
        self._folder = tempfile.mkdtemp(prefix="feedsvc-mirror-")
        handoff_endpoint = f"ipc://{self._folder}/handoff"
        stats_endpoint = f"ipc://{self._folder}/stats"
        self._push = context.socket(zmq.PUSH)
        self._push.setsockopt(zmq.SNDHWM, config.handoff_queue_batches)
        self._push.setsockopt(zmq.LINGER, 0)
        self._push.bind(handoff_endpoint)
        self._stats_pull = context.socket(zmq.PULL)
        self._stats_pull.setsockopt(zmq.LINGER, 0)
        self._stats_pull.bind(stats_endpoint)
        spawn = multiprocessing.get_context("spawn")
        self._process = spawn.Process(
            target=run_mirror_process,
            args=(config, log_config, handoff_endpoint, stats_endpoint),
            name="feedsvc-mirror",
            daemon=True,
        )
        self._process_dead_logged = False
        self._closed = False

    def start(self) -> None:
        """Start the mirror process and wait until it is connected (so no batch meets no peer)."""
        self._process.start()
        if not self._stats_pull.poll(int(STARTUP_TIMEOUT_S * 1000)):
            raise RuntimeError(f"the Kafka mirror process did not start in {STARTUP_TIMEOUT_S} s")
        self.receive_stats()

    def flush_if_due(self, now: float) -> None:
        pending = self._pending
        if pending and (
            len(pending) >= self.config.handoff_batch_ticks
            or now - self._last_flush >= self._max_delay_s
        ):
            self.flush(now)

    @property
    def backlog(self) -> int:
        """Ticks published but neither acknowledged nor failed nor dropped yet."""
        stats = self.stats
        return max(0, stats.handed_off + len(self._pending) - stats.delivered - stats.failed)

    def seconds_until_flush(self, now: float) -> float:
        """How long the service loop may sleep before pending frames are due."""
        if not self._pending:
            return self._max_delay_s
        return max(0.0, self._last_flush + self._max_delay_s - now)

    def flush(self, now: float) -> None:
        """Hand the pending frames over as one batch; a full hand-off queue drops it, counted."""
        pending = self._pending
        self._last_flush = now
        if not pending:
            return
        try:
            self._push.send(FRAME_SEPARATOR.join(pending), zmq.NOBLOCK)
            self.stats.handed_off += len(pending)
        except zmq.Again:
            self.stats.dropped += len(pending)
        pending.clear()

    def receive_stats(self) -> None:
        """Take the mirror process's latest counts (it sends them every STATS_INTERVAL_S)."""
        latest = None
        while True:
            try:
                latest = self._stats_pull.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
        if latest is not None:
            reported = orjson.loads(latest)
            stats = self.stats
            stats.produced = reported["produced"]
            stats.delivered = reported["delivered"]
            stats.failed = reported["failed"]
            stats.queued = reported["queued"]
            stats.broker_up = reported["broker_up"]
            stats.finished = reported["finished"]
        process_lost = not self._process.is_alive() and not self.stats.finished
        if process_lost and not self._process_dead_logged:
            log.error(
                "the Kafka mirror process exited (code %s): ticks are no longer mirrored",
                self._process.exitcode,
            )
            self._process_dead_logged = True

    def close(self, timeout_s: float) -> MirrorStats:
        """Hand over the rest, let the mirror process flush to Kafka within timeout_s, and stop.

        Returns the final counts; ``undelivered`` is what Kafka never acknowledged.
        """
        if self._closed:
            return self.stats
        self._closed = True
        self.flush(self._clock())
        deadline = time.monotonic() + timeout_s
        self._push.setsockopt(zmq.SNDTIMEO, int(timeout_s * 1000))
        try:
            self._push.send(END_OF_STREAM)
        except zmq.Again:
            log.error("the Kafka mirror process did not take the end of stream in %s s", timeout_s)
        while not self.stats.finished and self._process.is_alive():
            remaining = deadline + 1.0 - time.monotonic()
            if remaining <= 0:
                break
            if self._stats_pull.poll(int(min(remaining, 0.5) * 1000)):
                self.receive_stats()
        self._process.join(timeout=max(0.0, deadline + 2.0 - time.monotonic()))
        if self._process.is_alive():
            self._process.kill()
            self._process.join(timeout=5)
        self.receive_stats()
        self._push.close()
        self._stats_pull.close()
        shutil.rmtree(self._folder, ignore_errors=True)
        return self.stats


def split_batch(batch: bytes) -> list[bytes]:
    """Split a hand-off batch into [symbol, payload, symbol, payload, ...].

    Two C-level passes over the whole batch when no payload holds a space (orjson writes none
    outside strings): about half the CPU of partitioning frame by frame, which the mirror
    process spends on every tick. A pass-through string with a space takes the per-frame path.
    """
    fields = batch.replace(FRAME_SEPARATOR, TOPIC_DELIMITER).split(TOPIC_DELIMITER)
    # Every frame holds the topic's space, so exactly two fields per frame means no other space.
    if len(fields) == 2 * (batch.count(FRAME_SEPARATOR) + 1):
        return fields
    fields = []
    for frame in batch.split(FRAME_SEPARATOR):
        symbol, _, payload = frame.partition(TOPIC_DELIMITER)
        fields += (symbol, payload)
    return fields


class _MirrorProducer:
    """Inside the mirror process: batches in, produce(), delivery accounting, topic creation."""

    def __init__(self, config: KafkaConfig) -> None:
        from confluent_kafka import Producer  # only the mirror process loads librdkafka

        self.config = config
        self.produced = 0
        self.failed = 0
        self.broker_up = False
        self._warnings = RateLimiter(WARNING_INTERVAL_S, time.monotonic)
        self._topic_ready = False
        self._delivered_when_down = 0
        self._topic_request: Any = None
        self._next_topic_attempt = 0.0
        settings = producer_settings(config)
        settings["error_cb"] = self._on_error
        settings["on_delivery"] = self._on_delivery
        self._producer = Producer(settings)
        from confluent_kafka.admin import AdminClient

        self._admin = AdminClient(
            {
                key: value
                for key, value in settings.items()
                if key.startswith(("bootstrap.", "log_level", *KAFKA_CONNECTION_PREFIXES))
            }
        )

    def _on_error(self, error: Any) -> None:
        from confluent_kafka import KafkaError

        if error.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT):
            if self.broker_up or self._warnings.allow():
                log.warning(
                    "Kafka at %s unreachable (%s); ticks wait in the producer queue",
                    self.config.bootstrap,
                    error.str(),
                )
            self.broker_up = False
            self._delivered_when_down = self.delivered
        elif self._warnings.allow():
            log.warning("Kafka error: %s", error.str())

    def _on_delivery(self, error: Any, _message: Any) -> None:
        # Called for failures only (delivery.report.only.error).
        self.failed += 1
        if self._warnings.allow():
            log.warning("Kafka delivery failed: %s (%d so far)", error.str(), self.failed)

    @property
    def topic_ready(self) -> bool:
        return self._topic_ready

    @property
    def queued(self) -> int:
        """Ticks produced but neither acknowledged nor failed yet.

        len(producer) also counts a few protocol requests, so this errs on the side of "not yet
        acknowledged" (never the other way); after a completed flush it is exactly 0.
        """
        return min(len(self._producer), self.produced - self.failed)

    @property
    def delivered(self) -> int:
        """Ticks Kafka acknowledged (a lower bound while requests are in flight)."""
        return self.produced - self.failed - self.queued

    def ensure_topic(self, now: float) -> None:
        """Create kafka.topic with its partitions and retention once the broker answers.

        Never blocks: the request runs in librdkafka's thread and is checked on later calls.
        """
        if self._topic_ready:
            return
        if self._topic_request is None:
            if now >= self._next_topic_attempt:
                self._request_topic()
            return
        if not self._topic_request.done():
            return
        request, self._topic_request = self._topic_request, None
        self._next_topic_attempt = now + TOPIC_CREATE_RETRY_S
        from confluent_kafka import KafkaError, KafkaException

        try:
            request.result()
            log.info(
                "created Kafka topic %s (%d partitions, retention %d ms)",
                self.config.topic,
                self.config.partitions,
                self.config.retention_ms,
            )
        except KafkaException as error:
            if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                if self._warnings.allow():
                    log.warning("cannot create Kafka topic %s yet: %s", self.config.topic, error)
                return
        self._topic_ready = True
        if not self.broker_up:
            log.info("Kafka at %s reachable; mirroring", self.config.bootstrap)
        self.broker_up = True

    def _request_topic(self) -> None:
        from confluent_kafka.admin import NewTopic

        topic = NewTopic(
            self.config.topic,
            num_partitions=self.config.partitions,
            replication_factor=self.config.replication_factor,
            config={"retention.ms": str(self.config.retention_ms)},
        )
        futures = self._admin.create_topics([topic], request_timeout=10.0)
        self._topic_request = futures[self.config.topic]

    def produce_batch(self, batch: bytes) -> None:
        """Produce every frame of a hand-off batch; waits (serving callbacks) while the queue is
        full, which in turn backs up the hand-off socket."""
        produce, poll, topic = self._producer.produce, self._producer.poll, self.config.topic
        fields = iter(split_batch(batch))
        for symbol, payload in zip(fields, fields, strict=True):
            while True:
                try:
                    produce(topic, payload, symbol)
                    break
                except BufferError:
                    poll(0.05)
        self.produced += batch.count(FRAME_SEPARATOR) + 1

    def poll(self, timeout_s: float) -> None:
        self._producer.poll(timeout_s)
        self._notice_broker_back()

    def _notice_broker_back(self) -> None:
        # error_cb reports the outage; acknowledgements moving again report the recovery.
        if self.broker_up or not self._topic_ready:
            return
        delivered = self.delivered
        if delivered > self._delivered_when_down:
            log.info("Kafka at %s reachable again; mirroring", self.config.bootstrap)
            self.broker_up = True
        self._delivered_when_down = delivered

    def flush(self, timeout_s: float) -> int:
        """Wait up to timeout_s for every produced tick to be acknowledged; returns how many
        are still not."""
        return self._producer.flush(timeout_s)

    def stats(self, finished: bool = False) -> bytes:
        return orjson.dumps(
            {
                "produced": self.produced,
                "delivered": self.delivered,
                "failed": self.failed,
                "queued": self.queued,
                "broker_up": self.broker_up,
                "finished": finished,
            }
        )


def run_mirror_process(
    config: KafkaConfig, log_config: LogConfig, handoff_endpoint: str, stats_endpoint: str
) -> None:
    """Entry point of the mirror process (spawned by MirrorHandoff)."""
    setup_logging(log_config.level, log_config.format)
    # SIGINT goes to the whole process group; the service decides when the mirror stops.
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Before librdkafka starts its threads, so they inherit it (kafka.mirror_nice: the trade-off).
    os.nice(config.mirror_nice)
    producer = _MirrorProducer(config)
    context = zmq.Context()
    pull = context.socket(zmq.PULL)
    pull.setsockopt(zmq.RCVHWM, config.handoff_queue_batches)
    pull.connect(handoff_endpoint)
    stats_push = context.socket(zmq.PUSH)
    stats_push.setsockopt(zmq.LINGER, 2000)
    stats_push.connect(stats_endpoint)
    stats_push.send(producer.stats())
    next_stats = time.monotonic() + STATS_INTERVAL_S
    next_poll = time.monotonic()
    try:
        while True:
            now = time.monotonic()
            producer.ensure_topic(now)
            if pull.poll(50):
                batch = pull.recv()
                if batch == END_OF_STREAM:
                    break
                producer.produce_batch(batch)
            # Callbacks (failures, errors) are served on a timer, not per batch: at full rate a
            # poll() per batch was a visible share of this process's CPU.
            if now >= next_poll:
                producer.poll(0)
                next_poll = now + CALLBACK_POLL_INTERVAL_S
            if now >= next_stats:
                stats_push.send(producer.stats())
                next_stats = now + STATS_INTERVAL_S
        flush_deadline = time.monotonic() + config.flush_timeout_s
        # Ticks wait for the topic; a broker that appears during the flush still gets them.
        while not producer.topic_ready and time.monotonic() < flush_deadline:
            producer.ensure_topic(time.monotonic())
            producer.poll(0.2)
        remaining = producer.flush(max(0.0, flush_deadline - time.monotonic()))
        if remaining:
            log.error(
                "Kafka flush timed out after %.1f s: %d ticks not acknowledged",
                config.flush_timeout_s,
                remaining,
            )
        stats_push.send(producer.stats(finished=True))
    finally:
        pull.close(linger=0)
        stats_push.close()
        context.term()
