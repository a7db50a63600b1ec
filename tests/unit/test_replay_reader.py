"""Replay's offset reads around a broker failover: retried while leadership moves, an error
otherwise."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from feedsvc.replay import reader
from feedsvc.replay.errors import KafkaProblem


class FlakyConsumer:
    """Answers get_watermark_offsets with these errors first, then (0, 42)."""

    def __init__(self, *codes: int) -> None:
        self.codes = list(codes)
        self.calls = 0

    def get_watermark_offsets(self, *_args: Any, **_kwargs: Any) -> tuple[int, int]:
        self.calls += 1
        if self.codes:
            raise KafkaException(KafkaError(self.codes.pop(0)))
        return (0, 42)


def test_offsets_are_asked_again_while_a_partition_leader_changes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(reader.time, "sleep", lambda _s: None)
    consumer = FlakyConsumer(KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.OFFSET_NOT_AVAILABLE)
    assert reader.watermarks(consumer, "ticks", [0]) == {0: (0, 42)}  # type: ignore[arg-type]
    assert consumer.calls == 3


def test_other_errors_and_a_leader_that_never_settles_are_reported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(reader.time, "sleep", lambda _s: None)
    with pytest.raises(KafkaProblem, match="partition 0"):
        reader.watermarks(FlakyConsumer(KafkaError.TOPIC_AUTHORIZATION_FAILED), "ticks", [0])  # type: ignore[arg-type]
    monkeypatch.setattr(reader, "LEADER_CHANGE_WAIT_S", 0.0)
    endless = FlakyConsumer(*[KafkaError.NOT_LEADER_FOR_PARTITION] * 100)
    with pytest.raises(KafkaProblem, match="partition 0"):
        reader.watermarks(endless, "ticks", [0])  # type: ignore[arg-type]
    assert endless.calls == 1
