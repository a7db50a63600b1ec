"""The hand-off between the service and its mirror process: message kinds, the batch format and
the settings both sides derive from the config."""

from __future__ import annotations

import dataclasses
import socket
from typing import Final

from feedsvc.config import KafkaConfig
from feedsvc.protocol.checkpoints import checkpoint_topic_for
from feedsvc.protocol.ticks import TOPIC_DELIMITER

FRAME_SEPARATOR: Final = b"\n"
# Service -> mirror: a batch is one frame, a header line and the ticks' frames joined by
# FRAME_SEPARATOR (b"B<batch id> <dropped so far>\n<frame>\n<frame>..."); one frame costs the
# loop about two thirds of three (51 against 78 us per 400-tick flush, measured in a busy
# thread). The end of the stream is two frames: [END, JSON of the epoch's close: last seq per
# symbol, dropped count].
BATCH: Final = b"B"
END: Final = b"E"


def transactional_id(config: KafkaConfig) -> str:
    """kafka.transactional_id, or one stable per host and topic."""
    return config.transactional_id or f"feedsvc-{socket.gethostname()}-{config.topic}"


def for_shard(config: KafkaConfig, shard: str) -> KafkaConfig:
    """The mirror's config of shard `shard` (publisher.shard): without a kafka.transactional_id
    of its own, the default one gains the shard's name, so shards on one host mirroring to one
    topic do not fence each other."""
    if config.transactional_id or not shard:
        return config
    return dataclasses.replace(config, transactional_id=f"{transactional_id(config)}-{shard}")


def checkpoint_topic(config: KafkaConfig) -> str:
    return checkpoint_topic_for(config.topic, config.checkpoint_topic)


def batch_message(batch_id: int, dropped: int, frames: list[bytes]) -> bytes:
    """The hand-off message of a batch: its header line, then the frames."""
    return FRAME_SEPARATOR.join([b"%s%d %d" % (BATCH, batch_id, dropped), *frames])


def parse_batch(message: bytes) -> tuple[int, int, bytes]:
    """(batch id, dropped so far, frames joined by FRAME_SEPARATOR) of a hand-off message."""
    header, _, batch = message.partition(FRAME_SEPARATOR)
    batch_id, _, dropped = header[len(BATCH) :].partition(b" ")
    return int(batch_id), int(dropped), batch


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
