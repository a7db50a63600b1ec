"""Inside the mirror process: librdkafka's transactional producer writing ticks and checkpoint
records, creating the topics, and finding where a predecessor's committed work ended.

Exactly once across a crash is Kafka's own mechanism: one stable `transactional.id` per service
instance; `init_transactions()` of a new producer fences the old one and aborts its open
transaction, so a read_committed reader sees each committed transaction once and nothing of an
aborted one. Each transaction ends with a checkpoint record naming its last hand-off batch, so
the next producer knows which batches are already in Kafka and which the service must re-send.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Final

import orjson

from feedsvc.config import KAFKA_CONNECTION_PREFIXES, KafkaConfig
from feedsvc.logs import RateLimiter
from feedsvc.protocol.checkpoints import (
    TYPE_CHECKPOINT,
    TYPE_CLOSE,
    Checkpoint,
    checkpoint_partition,
    decode_checkpoint,
)
from feedsvc.secret_refs import resolve_secrets
from feedsvc.server.mirror.wire import (
    FRAME_SEPARATOR,
    checkpoint_topic,
    split_batch,
    transactional_id,
)

log = logging.getLogger("feedsvc.mirror")

WARNING_INTERVAL_S: Final = 10.0
TOPIC_CREATE_RETRY_S: Final = 2.0
# Blocking Kafka calls are made in slices this long, so the process still reports and notices
# its parent's death while Kafka does not answer.
CALL_SLICE_S: Final = 1.0
# How far back from a partition's end a predecessor's last checkpoint is looked for, per step.
RESUME_SCAN_STEP: Final = 200
RESUME_SCAN_TIMEOUT_S: Final = 30.0

# Settings feedsvc relies on; kafka.producer may add to them and override the tuning ones.
PRODUCER_DEFAULTS: Final[dict[str, Any]] = {
    "acks": "all",
    "enable.idempotence": True,
    # Bigger, fewer produce requests: the broker shares the machine's cores with the hot path.
    "linger.ms": 50,
    "batch.num.messages": 10_000,
    "compression.type": "lz4",
    # The topics are created by feedsvc with their partitions and retention, never by accident.
    "allow.auto.create.topics": False,
    # Only failures call back into Python: a callback per acknowledged tick cost the mirror
    # process CPU the hot path needs. Committed ticks are counted per transaction instead.
    "delivery.report.only.error": True,
    # Connection failures reach error_cb, which logs them rate-limited; not librdkafka's stderr.
    "log_level": 2,
}
# Settings a kafka.producer entry may not change: the accounting and durability depend on them.
FIXED_PRODUCER_SETTINGS: Final = ("acks", "enable.idempotence", "delivery.report.only.error")


def producer_settings(config: KafkaConfig) -> dict[str, Any]:
    """librdkafka settings: feedsvc's defaults, then kafka.producer (its ${env:..} and
    ${file:..} secrets read now), then the fixed ones and the transaction's."""
    settings: dict[str, Any] = {**PRODUCER_DEFAULTS, **resolve_secrets(config.producer)}
    settings["bootstrap.servers"] = config.bootstrap
    settings["queue.buffering.max.messages"] = config.max_buffered_ticks
    settings["message.timeout.ms"] = config.delivery_timeout_ms
    for key in FIXED_PRODUCER_SETTINGS:
        settings[key] = PRODUCER_DEFAULTS[key]
    settings["transactional.id"] = transactional_id(config)
    # librdkafka requires message.timeout.ms <= transaction.timeout.ms; an open transaction of
    # a process that died is aborted by its successor's init_transactions, not by this timeout.
    settings["transaction.timeout.ms"] = max(60_000, config.delivery_timeout_ms)
    return settings


class MirrorProducer:
    """Ticks and checkpoints in transactions.

    Parameters
    ----------
    config:
        The kafka section.
    epoch:
        The service epoch this process mirrors (checkpoints name it).
    """

    def __init__(self, config: KafkaConfig, epoch: int) -> None:
        from confluent_kafka import Producer  # only the mirror process loads librdkafka

        self.config = config
        self.epoch = epoch
        self.instance = transactional_id(config)
        self.checkpoint_topic = checkpoint_topic(config)
        self.checkpoint_partition = checkpoint_partition(self.instance, config.partitions)
        self.produced = 0
        self.failed = 0
        self.broker_up = False
        # What is committed: the last batch, ticks of the epoch (a predecessor's included).
        self.committed_batch = 0
        self.committed_ticks = 0
        self.dropped = 0
        self._open = False
        self._open_batch = 0
        self._open_ticks = 0
        self._checkpoint_written = False
        # Per symbol, the last payload in the open transaction (its seq is read at commit).
        self._last_payload: dict[bytes, bytes] = {}
        self._warnings = RateLimiter(WARNING_INTERVAL_S, time.monotonic)
        self._topics_ready = False
        self._topic_requests: dict[str, Any] = {}
        self._next_topic_attempt = 0.0
        self._initialized = False
        self._transactions_initialized = False
        self._settings = producer_settings(config)
        self._settings["error_cb"] = self._on_error
        self._settings["on_delivery"] = self._on_delivery
        self._producer = Producer(self._settings)
        from confluent_kafka.admin import AdminClient

        self._admin = AdminClient(self._connection_settings())

    def _connection_settings(self) -> dict[str, Any]:
        return {
            key: value
            for key, value in self._settings.items()
            if key.startswith(("bootstrap.", "log_level", *KAFKA_CONNECTION_PREFIXES))
        }

    def _on_error(self, error: Any) -> None:
        from confluent_kafka import KafkaError

        if error.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT):
            if self.broker_up or self._warnings.allow():
                log.warning(
                    "Kafka at %s unreachable (%s); ticks wait in the mirror",
                    self.config.bootstrap,
                    error.str(),
                )
            self.broker_up = False
        elif self._warnings.allow():
            log.warning("Kafka error: %s", error.str())

    def _on_delivery(self, error: Any, _message: Any) -> None:
        # Called for failures only (delivery.report.only.error); the transaction then aborts.
        self.failed += 1
        if self._warnings.allow():
            log.warning("Kafka delivery failed: %s (%d so far)", error.str(), self.failed)

    @property
    def ready(self) -> bool:
        """Topics exist, transactions are initialised and the resume point is known."""
        return self._initialized

    @property
    def queued(self) -> int:
        """Ticks produced but not yet acknowledged by the broker (librdkafka's queue)."""
        return min(len(self._producer), max(0, self.produced - self.failed))

    def prepare(self, now: float) -> bool:
        """One non-blocking step (or a blocking one of at most CALL_SLICE_S) towards `ready`:
        topics, init_transactions, the resume point. Returns `ready`."""
        if self._initialized:
            return True
        # Serves error_cb: an unreachable broker is reported while the process waits for it.
        self._producer.poll(0)
        if not self._topics_ready:
            self._ensure_topics(now)
            return False
        from confluent_kafka import KafkaException

        try:
            if not self._transactions_initialized:
                self._producer.init_transactions(CALL_SLICE_S)
                self._transactions_initialized = True
            # Right after a topic is created its partitions may have no leader yet
            # (NOT_LEADER_FOR_PARTITION): the resume point is then read again on the next call.
            self._resume()
        except KafkaException as error:
            if self._warnings.allow():
                log.warning("Kafka transactions not ready yet: %s", error.args[0].str())
            return False
        self._initialized = True
        self.broker_up = True
        log.info(
            "Kafka at %s reachable; mirroring in transactions as %s (resuming after batch %d, "
            "%d ticks committed)",
            self.config.bootstrap,
            self.instance,
            self.committed_batch,
            self.committed_ticks,
        )
        return True

    def _ensure_topics(self, now: float) -> None:
        from confluent_kafka import KafkaError, KafkaException
        from confluent_kafka.admin import NewTopic

        if not self._topic_requests:
            if now < self._next_topic_attempt:
                return
            topics = [
                NewTopic(
                    name,
                    num_partitions=self.config.partitions,
                    replication_factor=self.config.replication_factor,
                    config={
                        "retention.ms": str(self.config.retention_ms),
                        "min.insync.replicas": str(self.config.min_insync_replicas),
                    },
                )
                for name in (self.config.topic, self.checkpoint_topic)
            ]
            self._topic_requests = self._admin.create_topics(topics, request_timeout=10.0)
            return
        if not all(future.done() for future in self._topic_requests.values()):
            return
        requests, self._topic_requests = self._topic_requests, {}
        self._next_topic_attempt = now + TOPIC_CREATE_RETRY_S
        for name, future in requests.items():
            try:
                future.result()
                log.info(
                    "created Kafka topic %s (%d partitions, replication %d, min.insync %d)",
                    name,
                    self.config.partitions,
                    self.config.replication_factor,
                    self.config.min_insync_replicas,
                )
            except KafkaException as error:
                if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    if self._warnings.allow():
                        log.warning("cannot create Kafka topic %s yet: %s", name, error)
                    return
        self._topics_ready = True
        if not self.broker_up:
            log.info("Kafka at %s reachable", self.config.bootstrap)
        self.broker_up = True

    def _resume(self) -> None:
        """Read this instance's last committed checkpoint: for this epoch, the batches up to its
        `batch` are in Kafka already."""
        last = last_checkpoint(self._connection_settings(), self)
        if last is not None and last.epoch == self.epoch:
            self.committed_batch, self.committed_ticks = last.batch, last.ticks
            self.dropped = last.dropped

    def produce_batch(self, batch_id: int, batch: bytes) -> None:
        """Produce every frame of a hand-off batch into the open transaction (opening one);
        waits (serving callbacks) while librdkafka's queue is full."""
        if batch_id <= max(self.committed_batch, self._open_batch):
            return  # already in Kafka, or in this transaction: a re-sent batch
        if not self._open:
            self._producer.begin_transaction()
            self._open = True
        produce, poll, topic = self._producer.produce, self._producer.poll, self.config.topic
        fields = split_batch(batch)
        for symbol, payload in zip(fields[::2], fields[1::2], strict=True):
            while True:
                try:
                    produce(topic, payload, symbol)
                    break
                except BufferError:
                    poll(0.05)
        # The last payload per symbol, with C-level dict building; seqs are read at commit.
        self._last_payload.update(zip(fields[::2], fields[1::2], strict=True))
        ticks = batch.count(FRAME_SEPARATOR) + 1
        self.produced += ticks
        self._open_ticks += ticks
        self._open_batch = batch_id

    @property
    def open_ticks(self) -> int:
        return self._open_ticks

    def commit(self, close: dict[str, Any] | None = None) -> bool:
        """Write a checkpoint (a close record with `close`) and commit the open transaction,
        waiting at most CALL_SLICE_S. Returns True once committed; False while Kafka does not
        answer (call again). Raises MirrorAbort when the transaction cannot be committed."""
        from confluent_kafka import KafkaException

        if not self._open and close is None:
            return True
        try:
            if not self._open:
                self._producer.begin_transaction()
                self._open = True
            if not self._checkpoint_written:
                self._write_checkpoint(close)
            self._producer.commit_transaction(CALL_SLICE_S)
        except KafkaException as error:
            kafka_error = error.args[0]
            if kafka_error.retriable():
                return False
            raise MirrorAbort(kafka_error.str()) from None
        self._open = False
        self._checkpoint_written = False
        self.committed_batch = max(self.committed_batch, self._open_batch)
        self.committed_ticks += self._open_ticks
        self._open_ticks = 0
        self._last_payload.clear()
        self.broker_up = True
        return True

    def _write_checkpoint(self, close: dict[str, Any] | None) -> None:
        last_seq = {
            symbol.decode(): orjson.loads(payload)["seq"]
            for symbol, payload in self._last_payload.items()
        }
        if close is not None:
            # The service's own last seq per symbol: every tick published in the epoch.
            for symbol, seq in close["last_seq"].items():
                last_seq[symbol] = max(seq, last_seq.get(symbol, 0))
            self.dropped = close["dropped"]
        record = Checkpoint(
            type=TYPE_CLOSE if close is not None else TYPE_CHECKPOINT,
            instance=self.instance,
            epoch=self.epoch,
            ts=time.time_ns(),
            batch=max(self.committed_batch, self._open_batch),
            ticks=self.committed_ticks + self._open_ticks,
            dropped=self.dropped,
            last_seq=last_seq,
        )
        self._producer.produce(
            self.checkpoint_topic,
            record.encode(),
            self.instance,
            partition=self.checkpoint_partition,
        )
        self._checkpoint_written = True

    def poll(self, timeout_s: float) -> None:
        self._producer.poll(timeout_s)


class MirrorAbort(RuntimeError):
    """The transaction cannot be committed (fenced, or it must be aborted): the process exits
    and the service re-sends what was not committed to its successor."""


def last_checkpoint(settings: dict[str, Any], producer: MirrorProducer) -> Checkpoint | None:
    """The last committed checkpoint of `producer.instance` in its checkpoint partition, read
    backwards from the end in steps; None if it never wrote one."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {
            **settings,
            "group.id": f"{producer.instance}-resume",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
        }
    )
    try:
        partition = TopicPartition(producer.checkpoint_topic, producer.checkpoint_partition)
        low, high = consumer.get_watermark_offsets(partition, timeout=10.0)
        end = high
        deadline = time.monotonic() + RESUME_SCAN_TIMEOUT_S
        while end > low and time.monotonic() < deadline:
            start = max(low, end - RESUME_SCAN_STEP)
            found = _last_in_range(consumer, partition, start, end, producer.instance, deadline)
            if found is not None:
                return found
            end = start
        return None
    finally:
        consumer.close()


def _last_in_range(
    consumer: Any, partition: Any, start: int, end: int, instance: str, deadline: float
) -> Checkpoint | None:
    from confluent_kafka import KafkaError, TopicPartition

    consumer.assign([TopicPartition(partition.topic, partition.partition, start)])
    found: Checkpoint | None = None
    while time.monotonic() < deadline:
        message = consumer.poll(1.0)
        if message is None:
            continue
        if message.error() is not None:
            if message.error().code() == KafkaError._PARTITION_EOF:
                break
            continue
        if message.offset() >= end:
            break
        if message.key() == instance.encode():
            try:
                found = decode_checkpoint(message.value())
            except ValueError as error:
                log.warning(
                    "skipped a malformed checkpoint at offset %d: %s", message.offset(), error
                )
        if message.offset() >= end - 1:
            break
    return found
