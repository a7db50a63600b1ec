"""Checkpoint records are outside input to `replay --verify` (anyone who can write the topic
writes them): any bytes go through replay's own reading code and end as a counted malformed
record or a claim, and the audit still reports."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from feedsvc.replay import command
from feedsvc.replay.audit import AuditVerifier
from feedsvc.replay.reader import PartitionRange
from tests.conftest import fuzz_examples


def _json_bytes(value: object) -> bytes:
    # The standard library writes integers of any size, as a hostile writer may.
    return json.dumps(value).encode()


FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
ALMOST_RECORDS = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["checkpoint", "close", "other", 1]),
        "instance": st.text(max_size=6) | st.integers(),
        "epoch": st.integers(-2, 3),
        "ts": st.integers(-1, 10**19),
        "batch": st.integers(-1, 5) | st.booleans(),
        "ticks": st.integers(-1, 10**6),
        "last_seq": st.dictionaries(st.text(max_size=5), st.integers(-1, 10**6) | st.text()),
    },
    optional={"dropped": st.integers(-1, 10) | st.none()},
).map(_json_bytes)


class Message:
    def __init__(self, value: bytes | None, offset: int) -> None:
        self._value, self._offset = value, offset

    def value(self) -> bytes | None:
        return self._value

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset


@settings(FUZZ, max_examples=fuzz_examples(200))
@given(
    values=st.lists(
        st.binary(max_size=64) | JSON_VALUES.map(_json_bytes) | ALMOST_RECORDS | st.none(),
        max_size=12,
    )
)
@example(
    values=[
        None,
        b"",
        b"{}",
        b'{"type":"close","instance":"a","epoch":1,"ts":1,"batch":1,"ticks":1,"last_seq":{"A":3}}',
    ]
)
def test_any_checkpoint_topic_content_is_counted_and_the_audit_still_reports(
    values: list[bytes | None],
) -> None:
    span = PartitionRange(0, 0, len(values))

    def read_partition(*_args: Any) -> Iterator[list[Message]]:
        yield [Message(value, offset) for offset, value in enumerate(values)]

    said: list[str] = []
    verifier = AuditVerifier()
    verifier.observe({"sym": "A", "epoch": 1, "seq": 1})
    # Kafka is replaced by the messages; everything after the read is replay's own code.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(command, "checkpoint_ranges", lambda *_args: [span])
        patch.setattr(command, "read_partition", read_partition)
        command._read_checkpoints(None, "t.checkpoints", verifier, said.append)  # type: ignore[arg-type]
    report = verifier.report()
    summary = {**report.summary(), **report.checkpoint_summary()}
    # Every record is either used or counted malformed, and the result is still a JSON report.
    assert summary["checkpoints"] == len(values)
    assert 0 <= summary["malformed_checkpoints"] <= len(values)
    assert len(said) == min(summary["malformed_checkpoints"], command.MALFORMED_DETAIL_LIMIT)
    orjson.dumps(summary)
    assert all(isinstance(line, str) for line in report.lines() + report.checkpoint_lines())
    if summary["malformed_checkpoints"]:
        assert not report.ok
