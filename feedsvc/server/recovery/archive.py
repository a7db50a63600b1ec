"""Recovery from the Kafka mirror: a symbol's ticks of a seq range, found in its partition.

The mirror writes each tick with its symbol as key and the frame's payload as value, so a
symbol's ticks are in one partition, in (epoch, seq) order (an epoch is its service's start
time: later runs have larger ones). The first offset of a range is found by binary search over
the partition's offsets, each probe reading forward to the symbol's next record; then the range
is read in order. Only committed transactions are read (read_committed), as replay does, so
what comes back is the audit trail's view. Runs in the recovery reader process, never in the
service's loop.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Iterator
from typing import Final, NamedTuple

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from feedsvc.protocol.ticks import TOPIC_DELIMITER

# Records read per consume() call.
CONSUME_BATCH: Final = 500
# How far a probe reads past its offset for the symbol's next record at most.
PROBE_RECORDS: Final = 20_000
KAFKA_TIMEOUT_S: Final = 5.0


class ArchiveMiss(Exception):
    """The range is not (entirely) in Kafka; `oldest` is the symbol's oldest seq of that epoch
    found there (None: none)."""

    def __init__(self, detail: str, oldest: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.oldest = oldest


class _Found(NamedTuple):
    offset: int
    epoch: int
    seq: int


def default_partition(symbol: str, partition_count: int) -> int:
    """The partition librdkafka's default partitioner (consistent_random: CRC32 of the key)
    puts a symbol's ticks in; the others are searched too if it is not there."""
    return zlib.crc32(symbol.encode()) % partition_count


class Archive:
    """Looks ranges up in `topic` with an assign-only read_committed `consumer`."""

    def __init__(self, consumer: Consumer, topic: str, partitions: list[int]) -> None:
        self._consumer = consumer
        self._topic = topic
        self._partitions = partitions

    def frames(
        self, symbol: str, epoch: int, first: int, last: int, deadline: float
    ) -> list[bytes]:
        """The broadcast frames of seqs first..last of `symbol` in `epoch`, in order.

        Raises ArchiveMiss when they are not all there (or the deadline passes)."""
        key = symbol.encode()
        preferred = default_partition(symbol, len(self._partitions))
        ordered = [self._partitions[preferred]]
        ordered += [p for p in self._partitions if p != ordered[0]]
        for partition in ordered:
            try:
                return self._frames_in(partition, key, epoch, first, last, deadline)
            except ArchiveMiss as miss:
                if miss.oldest is not None or time.monotonic() >= deadline:
                    # The symbol is in this partition: the others cannot have it.
                    raise
        raise ArchiveMiss(f"no tick of {symbol} in epoch {epoch} is in Kafka")

    def _frames_in(
        self, partition: int, key: bytes, epoch: int, first: int, last: int, deadline: float
    ) -> list[bytes]:
        low, high = self._watermarks(partition)
        found = self._first_at_or_after(partition, key, (epoch, first), low, high, deadline)
        if found is None or found.epoch != epoch:
            raise ArchiveMiss("the symbol has no tick of this epoch from that seq on in Kafka")
        if found.seq > first:
            raise ArchiveMiss(
                f"seqs before {found.seq} of this epoch are no longer in Kafka (retention)",
                found.seq,
            )
        frames: list[bytes] = []
        prefix = key + TOPIC_DELIMITER
        for record_key, value, _offset in self._records(partition, found.offset, high, deadline):
            if record_key != key:
                continue
            tick = orjson.loads(value)
            if tick.get("epoch") != epoch or tick.get("seq", 0) < first:
                continue
            if tick["seq"] != first + len(frames):
                raise ArchiveMiss(
                    f"seq {first + len(frames)} is missing in Kafka (dropped at the mirror's "
                    "retained bound, or not committed)",
                    found.seq,
                )
            frames.append(prefix + value)
            if tick["seq"] == last:
                return frames
        raise ArchiveMiss(
            f"Kafka holds this epoch's ticks only up to seq {first + len(frames) - 1} so far",
            found.seq,
        )

    def _first_at_or_after(
        self,
        partition: int,
        key: bytes,
        target: tuple[int, int],
        low: int,
        high: int,
        deadline: float,
    ) -> _Found | None:
        """The first record of `key` at or after the smallest offset whose next `key` record
        has (epoch, seq) >= target: binary search, each probe a short forward read."""
        best: _Found | None = None
        while low < high:
            middle = (low + high) // 2
            found = self._probe(partition, key, middle, high, deadline)
            if found is None or (found.epoch, found.seq) >= target:
                if found is not None:
                    best = found
                high = middle
            else:
                low = found.offset + 1
        return best

    def _probe(
        self, partition: int, key: bytes, offset: int, high: int, deadline: float
    ) -> _Found | None:
        for read, (record_key, value, record_offset) in enumerate(
            self._records(partition, offset, high, deadline)
        ):
            if record_key == key:
                tick = orjson.loads(value)
                return _Found(record_offset, tick["epoch"], tick["seq"])
            if read >= PROBE_RECORDS:
                break
        return None

    def _records(
        self, partition: int, start: int, end: int, deadline: float
    ) -> Iterator[tuple[bytes | None, bytes, int]]:
        """(key, value, offset) from `start` up to `end` (exclusive), committed only."""
        consumer = self._consumer
        consumer.assign([TopicPartition(self._topic, partition, start)])
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ArchiveMiss("Kafka did not answer in time")
            messages = consumer.consume(CONSUME_BATCH, timeout=min(remaining, 1.0))
            for message in messages:
                if message.error() is not None:
                    if message.error().code() == KafkaError._PARTITION_EOF:
                        return
                    raise ArchiveMiss(f"Kafka: {message.error().str()}")
                if message.offset() >= end:
                    return
                yield message.key(), message.value(), message.offset()

    def _watermarks(self, partition: int) -> tuple[int, int]:
        try:
            return self._consumer.get_watermark_offsets(
                TopicPartition(self._topic, partition), timeout=KAFKA_TIMEOUT_S, cached=False
            )
        except KafkaException as error:
            raise ArchiveMiss(f"Kafka: {error.args[0].str()}") from None
