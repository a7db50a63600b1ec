"""The Kafka side of replay: `make_consumer` for assign()-only reading, the metadata, watermark
and offsets-by-time requests (each with a timeout), `read_partition`, which reads one planned
`PartitionRange` in offset order, and `read_checkpoints`, the whole checkpoint topic. The only
replay module that loads librdkafka."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from feedsvc.replay.errors import KafkaProblem, ReplayError
from feedsvc.replay.progress import ReadProgress
from feedsvc.secret_refs import SecretError, resolve_secrets

# Every metadata, watermark and offsets_for_times request waits at most this long; an unreachable
# broker fails the first of them, so replay gives up within this time (well under 30 s).
KAFKA_REQUEST_TIMEOUT_S: Final = 10.0
# A partition that delivers nothing for this long before its captured end is an error (the broker
# went away mid-replay), never a hang.
READ_IDLE_TIMEOUT_S: Final = 30.0
# How long offsets are asked again while a partition's leader changes (a broker failover).
LEADER_CHANGE_WAIT_S: Final = 15.0
_LEADER_CHANGE_ERRORS: Final = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.OFFSET_NOT_AVAILABLE,
        KafkaError.LEADER_NOT_AVAILABLE,
    }
)
CONSUME_WAIT_S: Final = 0.5
CONSUME_BATCH_MESSAGES: Final = 2_000

# Errors after which a partition cannot be read on; others are transient and retried.
_UNREADABLE_PARTITION: Final = frozenset(
    {
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_TOPIC,
        KafkaError._UNKNOWN_PARTITION,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
    }
)

_LOGIN_ERRORS: Final = frozenset(
    {KafkaError._AUTHENTICATION, KafkaError._SSL, KafkaError.SASL_AUTHENTICATION_FAILED}
)


class LastKafkaError:
    """The last error librdkafka reported through error_cb: the cause named in our messages."""

    def __init__(self) -> None:
        self.last: KafkaError | None = None

    def record(self, error: KafkaError) -> None:
        """The consumer's error_cb."""
        self.last = error

    def cause(self) -> str:
        """ " (last error: ...)" to append to a message, or "" if there was none."""
        return "" if self.last is None else f" (last error: {self.last.str()})"

    def login_refused(self) -> bool:
        """The broker answered but refused the SASL login or the TLS handshake."""
        return self.last is not None and self.last.code() in _LOGIN_ERRORS


# Settings replay decides itself (with bootstrap.servers, group.id and error_cb): -X cannot
# change them, because the read plan depends on them.
REPLAY_CONSUMER_SETTINGS: Final[Mapping[str, Any]] = {
    "enable.auto.commit": False,
    # Only committed transactions: the mirror's aborted ones (a crash, a fenced producer) would
    # read as duplicates, and a checkpoint is only a proof together with the ticks it commits.
    "isolation.level": "read_committed",
    "enable.auto.offset.store": False,
    # The end of a partition ends its read even when its last offsets hold no message
    # (transaction markers, compaction).
    "enable.partition.eof": True,
    # Only if data was deleted by retention after the offsets were looked up.
    "auto.offset.reset": "earliest",
    # A fetch long-polls the broker this long when a partition has no newer data, which
    # is the case at the end of every partition read; the next partition's first fetch
    # waits behind it (500 ms per partition with the default).
    "fetch.wait.max.ms": 10,
    # Asking for an unknown topic must not create it (brokers may auto-create).
    "allow.auto.create.topics": False,
    # Connection failures reach error_cb and our error messages, not librdkafka's stderr.
    "log_level": 2,
}
_SET_BY_REPLAY: Final = frozenset(
    {*REPLAY_CONSUMER_SETTINGS, "bootstrap.servers", "group.id", "error_cb"}
)


def make_consumer(
    bootstrap: str,
    errors: LastKafkaError | None = None,
    settings: Mapping[str, Any] | None = None,
) -> Consumer:
    """A consumer for assign()-only reading: nothing is ever committed for its throwaway group.

    `settings` are extra librdkafka settings for reaching the cluster (security, SASL, SSL);
    a value "${env:NAME}" or "${file:PATH}" is read from there now.

    Raises
    ------
    ReplayError
        A setting replay sets itself, a secret that cannot be read, or one librdkafka refuses;
        the message never holds a secret.
    """
    errors = errors or LastKafkaError()
    settings = settings or {}
    taken = sorted(_SET_BY_REPLAY.intersection(settings))
    if taken:
        raise ReplayError(f"Kafka setting {taken[0]} is set by replay itself and cannot be changed")
    try:
        resolved = resolve_secrets(settings)
    except SecretError as error:
        raise ReplayError(f"Kafka setting {error}") from None
    try:
        return Consumer(
            {
                **resolved,
                **REPLAY_CONSUMER_SETTINGS,
                "bootstrap.servers": bootstrap,
                # Required by the client; unique so it can never share state with a real group.
                "group.id": f"feedsvc-replay-{uuid.uuid4().hex}",
                "error_cb": errors.record,
            }
        )
    except KafkaException as error:
        message = error.args[0].str()
        for name, value in resolved.items():
            if value != settings[name] and str(value):
                message = message.replace(str(value), f"<{name}>")
        raise ReplayError(f"librdkafka refused the Kafka settings: {message}") from None


def topic_partitions(consumer: Consumer, topic: str) -> list[int]:
    """The partition ids of `topic` (one metadata request with a timeout).

    Raises
    ------
    ReplayError
        The broker does not answer in time, or the topic does not exist.
    """
    partitions = existing_topic_partitions(consumer, topic)
    if partitions is None:
        raise KafkaProblem(f"topic {topic!r} does not exist (check --topic)")
    return partitions


def existing_topic_partitions(consumer: Consumer, topic: str) -> list[int] | None:
    """The partition ids of `topic`, or None if there is no such topic.

    Raises
    ------
    ReplayError
        The broker does not answer in time, or the topic is not readable.
    """
    try:
        metadata = consumer.list_topics(topic, timeout=KAFKA_REQUEST_TIMEOUT_S)
    except KafkaException as error:
        raise KafkaProblem(
            f"Kafka does not answer: {error.args[0].str()}; is a broker running at that "
            "address (--bootstrap)?"
        ) from None
    topic_metadata = metadata.topics.get(topic)
    if topic_metadata is None or topic_metadata.error is not None:
        if (
            topic_metadata is None
            or topic_metadata.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART
        ):
            return None
        raise KafkaProblem(f"topic {topic!r} is not readable: {topic_metadata.error.str()}")
    if not topic_metadata.partitions:
        raise KafkaProblem(f"topic {topic!r} has no partitions")
    return sorted(topic_metadata.partitions)


def watermarks(
    consumer: Consumer, topic: str, partitions: Iterable[int]
) -> dict[int, tuple[int, int]]:
    """(low, high) offsets per partition, asked from the broker now."""
    result = {}
    for partition in partitions:
        offsets = _watermark_offsets(consumer, TopicPartition(topic, partition))
        if offsets is None:
            raise KafkaProblem(
                f"no answer for the offsets of {topic} partition {partition} within "
                f"{KAFKA_REQUEST_TIMEOUT_S:g} s"
            )
        result[partition] = offsets
    return result


def _watermark_offsets(consumer: Consumer, partition: TopicPartition) -> tuple[int, int] | None:
    """One partition's (low, high), asked again while its leadership is moving: right after a
    broker failover on a cluster the new leader briefly answers NOT_LEADER_FOR_PARTITION or
    OFFSET_NOT_AVAILABLE ("high watermark not caught up"), for at most LEADER_CHANGE_WAIT_S."""
    deadline = time.monotonic() + LEADER_CHANGE_WAIT_S
    while True:
        try:
            return consumer.get_watermark_offsets(
                partition, timeout=KAFKA_REQUEST_TIMEOUT_S, cached=False
            )
        except KafkaException as error:
            kafka_error = error.args[0]
            moving = kafka_error.code() in _LEADER_CHANGE_ERRORS
            if not moving or time.monotonic() >= deadline:
                raise KafkaProblem(
                    f"cannot read the offsets of {partition.topic} partition "
                    f"{partition.partition}: {kafka_error.str()}"
                ) from None
            time.sleep(0.2)


def offsets_at_time(
    consumer: Consumer, topic: str, partitions: Iterable[int], timestamp_ms: int
) -> dict[int, int | None]:
    """Per partition, the first offset whose Kafka timestamp is >= `timestamp_ms` (Kafka's
    offsets_for_times), or None where every message is older."""
    # Negative timestamps are Kafka's "latest"/"earliest" markers, not times.
    timestamp_ms = max(timestamp_ms, 0)
    queries = [TopicPartition(topic, partition, timestamp_ms) for partition in partitions]
    try:
        answers = consumer.offsets_for_times(queries, timeout=KAFKA_REQUEST_TIMEOUT_S)
    except KafkaException as error:
        raise KafkaProblem(
            f"cannot look up offsets by time in {topic}: {error.args[0].str()}"
        ) from None
    result: dict[int, int | None] = {}
    for answer in answers:
        if answer.error is not None:
            raise KafkaProblem(
                f"cannot look up offsets by time in {topic} partition {answer.partition}: "
                f"{answer.error.str()}"
            )
        result[answer.partition] = answer.offset if answer.offset >= 0 else None
    return result


@dataclass(frozen=True)
class PartitionRange:
    """Offsets [start, end) of one partition to read."""

    partition: int
    start: int
    end: int

    @property
    def size(self) -> int:
        return max(self.end - self.start, 0)


def read_partition(
    consumer: Consumer,
    topic: str,
    span: PartitionRange,
    progress: ReadProgress,
) -> Iterator[list[Message]]:
    """The messages of `span` in offset order, a batch at a time; ends at the span's end offset
    or the partition's end, whichever comes first.

    Raises
    ------
    ReplayError
        The partition cannot be read (deleted topic, no authorization), or delivers nothing for
        READ_IDLE_TIMEOUT_S before its end.
    """
    if span.size == 0:
        return
    consumer.assign([TopicPartition(topic, span.partition, span.start)])
    next_offset = span.start
    last_activity = time.monotonic()
    try:
        while next_offset < span.end:
            # consume() waits for the whole batch or the timeout: never ask for more than the
            # offsets left, or every partition's last batch would cost the full wait.
            wanted = min(CONSUME_BATCH_MESSAGES, span.end - next_offset)
            messages = consumer.consume(wanted, CONSUME_WAIT_S)
            if not messages:
                if time.monotonic() - last_activity > READ_IDLE_TIMEOUT_S:
                    raise KafkaProblem(
                        f"{topic} partition {span.partition} delivered nothing for "
                        f"{READ_IDLE_TIMEOUT_S:g} s at offset {next_offset} of {span.end}"
                    )
                continue
            last_activity = time.monotonic()
            before = next_offset
            batch = []
            for message in messages:
                if message.partition() != span.partition:
                    continue  # a late event of the previous assignment
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        next_offset = span.end
                        break
                    if error.fatal() or error.code() in _UNREADABLE_PARTITION:
                        raise KafkaProblem(
                            f"reading {topic} partition {span.partition} failed: {error.str()}"
                        )
                    # Transient (a reconnect): librdkafka retries by itself.
                    continue
                offset = message.offset()
                if offset >= span.end:
                    next_offset = span.end
                    break
                batch.append(message)
                next_offset = offset + 1
            if batch:
                yield batch
            progress.advance(min(next_offset, span.end) - before)
    finally:
        consumer.unassign()


def checkpoint_ranges(consumer: Consumer, topic: str) -> list[PartitionRange] | None:
    """What to read of the checkpoint topic `topic`: every partition whole, up to the high
    watermarks captured now; None if the topic does not exist (a mirror without checkpoints).

    Whatever the time window: checkpoints are small, and the audit decides which it uses.
    """
    partitions = existing_topic_partitions(consumer, topic)
    if partitions is None:
        return None
    return [
        PartitionRange(partition, low, high)
        for partition, (low, high) in watermarks(consumer, topic, partitions).items()
    ]
