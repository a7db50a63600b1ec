"""Checkpoint records of the Kafka audit trail: what the mirror writes beside the ticks, inside the
same transactions, so that a reader can prove the trail complete (docs/audit-trail.md).

They go to a companion topic (`kafka.checkpoint_topic`, default ``<kafka.topic>.checkpoints``):
a plain consumer of the tick topic still sees only ticks. Each record's key is the writing
service instance (its `transactional.id`); its value is one JSON object:

- ``type``: ``"checkpoint"`` (written with every committed transaction) or ``"close"`` (the last
  record of an epoch, written at a clean shutdown: nothing more will be published in it).
- ``instance``: the writer's transactional.id; ``epoch``: the service epoch the record is about.
- ``ts``: when it was written (ns since the Unix epoch).
- ``batch``: the last hand-off batch (numbered 1, 2, ... per epoch) whose ticks are in this and
  earlier transactions: a restarted mirror resumes after it.
- ``ticks``: how many ticks of the epoch the mirror has written up to and including this record.
- ``last_seq``: per symbol, the last seq *published* (deltas: only symbols that moved since the
  instance's previous record of the epoch; merge by maximum). Ticks dropped before reaching the
  mirror count as published, so a reader finds them missing.
- ``dropped``: ticks of the epoch published but never handed to the mirror (running count).

Every tick with seq <= last_seq[symbol] of a committed record was published before that record
was committed, so a `read_committed` reader must find it in the tick topic.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

CHECKPOINT_TOPIC_SUFFIX: Final = ".checkpoints"
TYPE_CHECKPOINT: Final = "checkpoint"
TYPE_CLOSE: Final = "close"
RECORD_TYPES: Final = (TYPE_CHECKPOINT, TYPE_CLOSE)


def checkpoint_topic_for(topic: str, configured: str = "") -> str:
    """The companion topic of `topic`: `configured` if set, else ``<topic>.checkpoints``."""
    return configured or f"{topic}{CHECKPOINT_TOPIC_SUFFIX}"


def checkpoint_partition(instance: str, partitions: int) -> int:
    """The partition an instance writes its checkpoints to: fixed per instance, so its last one
    is found by reading one partition from the end."""
    return zlib.crc32(instance.encode()) % partitions


@dataclass
class Checkpoint:
    """One checkpoint record (see the module docstring for the fields)."""

    type: str
    instance: str
    epoch: int
    ts: int
    batch: int
    ticks: int
    dropped: int = 0
    last_seq: dict[str, int] = field(default_factory=dict)

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "type": self.type,
                "instance": self.instance,
                "epoch": self.epoch,
                "ts": self.ts,
                "batch": self.batch,
                "ticks": self.ticks,
                "dropped": self.dropped,
                "last_seq": self.last_seq,
            }
        )


def decode_checkpoint(value: bytes) -> Checkpoint:
    """A checkpoint record's value; raises ValueError naming what is wrong."""
    try:
        fields: Any = orjson.loads(value)
    except orjson.JSONDecodeError as error:
        raise ValueError(f"not JSON: {error}") from None
    if not isinstance(fields, dict):
        raise ValueError("not a JSON object")
    if fields.get("type") not in RECORD_TYPES:
        raise ValueError(f"type must be one of {', '.join(RECORD_TYPES)}")
    for name in ("epoch", "ts", "batch", "ticks", "dropped"):
        value_of = fields.get(name, 0 if name == "dropped" else None)
        if not isinstance(value_of, int) or isinstance(value_of, bool) or value_of < 0:
            raise ValueError(f"{name} must be a whole number >= 0")
    instance, last_seq = fields.get("instance"), fields.get("last_seq")
    if not isinstance(instance, str) or not instance:
        raise ValueError("instance must be a non-empty string")
    if not isinstance(last_seq, dict) or not all(
        isinstance(seq, int) and not isinstance(seq, bool) and seq >= 1 for seq in last_seq.values()
    ):
        raise ValueError("last_seq must map symbols to seqs >= 1")
    return Checkpoint(
        type=fields["type"],
        instance=instance,
        epoch=fields["epoch"],
        ts=fields["ts"],
        batch=fields["batch"],
        ticks=fields["ticks"],
        dropped=fields.get("dropped", 0),
        last_seq=last_seq,
    )
