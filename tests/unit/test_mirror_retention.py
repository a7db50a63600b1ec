"""What the service keeps for the mirror: every batch until it is committed, within a bound;
and the checkpoint records' format."""

from __future__ import annotations

import pytest
import zmq

from feedsvc.config import KafkaConfig, LogConfig
from feedsvc.protocol.checkpoints import (
    TYPE_CLOSE,
    Checkpoint,
    checkpoint_partition,
    checkpoint_topic_for,
    decode_checkpoint,
)
from feedsvc.server.mirror import MirrorHandoff
from feedsvc.server.mirror.producer import producer_settings

FRAME = b"SYM " + b"x" * 95  # 100 bytes


@pytest.fixture
def handoff() -> MirrorHandoff:
    # No process is started: only the retention logic runs.
    config = KafkaConfig(max_retained_bytes=1024 * 1024, handoff_batch_ticks=100)
    return MirrorHandoff(zmq.Context.instance(), config, LogConfig(), epoch=7)


def fill(handoff: MirrorHandoff, batches: int, ticks: int = 100) -> None:
    for batch in range(batches):
        for _ in range(ticks):
            handoff.append(FRAME)
        handoff.flush(float(batch))


def test_every_batch_is_retained_until_committed(handoff: MirrorHandoff) -> None:
    fill(handoff, 5)
    stats = handoff.stats
    assert (stats.handed_off, stats.retained_ticks, stats.dropped) == (500, 500, 0)
    assert handoff.backlog == 500
    handoff._forget_committed(3)  # the mirror reported batches 1-3 committed
    assert stats.retained_ticks == 200
    assert [batch_id for batch_id, _, _ in handoff._retained] == [4, 5]
    handoff._forget_committed(2)  # an older report changes nothing
    assert stats.retained_ticks == 200


def test_past_the_retained_bound_new_batches_are_dropped_and_counted(
    handoff: MirrorHandoff,
) -> None:
    # 100 ticks of 101 bytes per batch (frames plus separators): ~10 KB; 1 MiB holds 103.
    fill(handoff, 120)
    stats = handoff.stats
    assert stats.retained_bytes <= 1024 * 1024
    assert stats.dropped > 0 and stats.handed_off + stats.dropped == 12_000
    assert stats.undelivered == 12_000
    handoff._forget_committed(10**6)
    assert stats.retained_bytes == 0 and stats.retained_ticks == 0


def test_without_a_process_the_mirror_is_reported_down(handoff: MirrorHandoff) -> None:
    problem = handoff.problem()
    assert problem is not None and "mirror process is down" in problem


def test_the_producer_writes_in_transactions_under_a_stable_id() -> None:
    settings = producer_settings(KafkaConfig(topic="t", transactional_id="desk-a"))
    assert settings["transactional.id"] == "desk-a"
    assert settings["enable.idempotence"] is True and settings["acks"] == "all"
    # librdkafka refuses a message timeout longer than the transaction timeout.
    assert settings["message.timeout.ms"] <= settings["transaction.timeout.ms"]
    default = producer_settings(KafkaConfig(topic="t"))["transactional.id"]
    assert default.startswith("feedsvc-") and default.endswith("-t")


def test_a_checkpoint_record_round_trips_and_bad_ones_are_named() -> None:
    record = Checkpoint(TYPE_CLOSE, "desk-a", 7, 123, 42, 4200, 3, {"AAPL": 17})
    assert decode_checkpoint(record.encode()) == record
    assert checkpoint_topic_for("ticks") == "ticks.checkpoints"
    assert checkpoint_topic_for("ticks", "audit") == "audit"
    assert checkpoint_partition("desk-a", 6) == checkpoint_partition("desk-a", 6) < 6
    for bad, named in (
        (b"nope", "JSON"),
        (b'{"type": "x"}', "type"),
        (b'{"type": "close", "instance": "a", "epoch": -1}', "epoch"),
        (
            b'{"type":"close","instance":"a","epoch":1,"ts":1,"batch":1,"ticks":1,'
            b'"last_seq":{"A":0}}',
            "last_seq",
        ),
    ):
        with pytest.raises(ValueError, match=named):
            decode_checkpoint(bad)
