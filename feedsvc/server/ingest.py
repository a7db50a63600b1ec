"""The PULL ingest socket's decoder: frames from feed handlers into valid ticks, rejections
counted by reason (docs/ingest-protocol.md)."""

from __future__ import annotations

from typing import Final

import orjson

from feedsvc.protocol.ticks import (
    REJECT_BAD_OPTIONAL_FIELD,
    REJECT_NOT_JSON,
    REJECT_REASONS,
    REJECT_TOO_LARGE,
    Tick,
    tick_problem,
)

# Deepest nesting of a tick with its pass-through fields (the tick itself is level 1). orjson
# reads 1024 levels but writes only 254: a deeper tick would pass here and fail in the hot path.
MAX_TICK_NESTING: Final = 64
_CONTAINERS: Final = (list, dict)


def _nested_deeper_than(tick: Tick, limit: int) -> bool:
    pending: list[tuple[object, int]] = [(tick, 1)]
    while pending:
        value, depth = pending.pop()
        if depth > limit:
            return True
        children = value.values() if isinstance(value, dict) else value
        pending.extend((child, depth + 1) for child in children if type(child) in _CONTAINERS)
    return False


class IngestDecoder:
    """Turns ingest frames into valid ticks and counts what it rejects, by reason.

    A frame holds one JSON object or a JSON array of objects (a batch). Invalid ticks in a batch
    are rejected one by one; the valid ones in the same batch are kept.
    """

    def __init__(self, max_message_bytes: int) -> None:
        self.max_message_bytes = max_message_bytes
        self.rejected_by_reason: dict[str, int] = dict.fromkeys(REJECT_REASONS, 0)

    def decode(self, frame: bytes) -> list[Tick]:
        """Decode one ingest frame; returns the acceptable ticks in order."""
        if len(frame) > self.max_message_bytes:
            self.rejected_by_reason[REJECT_TOO_LARGE] += 1
            return []
        try:
            decoded = orjson.loads(frame)
        except orjson.JSONDecodeError:
            self.rejected_by_reason[REJECT_NOT_JSON] += 1
            return []
        candidates: list[object] | tuple[object] = (
            decoded if isinstance(decoded, list) else (decoded,)
        )
        # A tick nested deeper than MAX_TICK_NESTING holds more than that many brackets of its
        # own, and every other object in the frame at least one: counting them (in C) spares
        # the walk for every frame that cannot hold such a tick, whatever else it holds.
        brackets = frame.count(b"{") + frame.count(b"[")
        check_nesting = (
            brackets > MAX_TICK_NESTING
            and brackets - list(map(type, candidates)).count(dict) >= MAX_TICK_NESTING
        )
        accepted: list[Tick] = []
        for candidate in candidates:
            reason = tick_problem(candidate)
            if (
                reason is None
                and check_nesting
                and _nested_deeper_than(candidate, MAX_TICK_NESTING)  # type: ignore[arg-type]
            ):
                reason = REJECT_BAD_OPTIONAL_FIELD
            if reason is None:
                accepted.append(candidate)  # type: ignore[arg-type]
            else:
                self.rejected_by_reason[reason] += 1
        return accepted

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected_by_reason.values())
