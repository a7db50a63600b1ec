"""Which mirrored messages are ticks, and which ticks a replay outputs: `decode_tick` (with
`malformed_reason` saying why a message is not one) and `TickFilter`, the exact --symbol,
--since and --until selection on a tick's own fields."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson


def decode_tick(payload: bytes | None) -> dict[str, Any] | None:
    """Decode one message value into a tick, or None if it is not one (`malformed_reason` says
    why).

    A tick needs what replay and the audit rely on: a string sym, an integer seq >= 1, integer
    epoch and ts. Other fields pass through unchecked.
    """
    if payload is None:
        return None
    try:
        tick = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    # `type(...) is`, not isinstance: bool is an int subclass, and this runs for every message.
    if (
        type(tick) is dict
        and type(tick.get("sym")) is str
        and type(seq := tick.get("seq")) is int
        and seq >= 1
        and type(tick.get("epoch")) is int
        and type(tick.get("ts")) is int
    ):
        return tick
    return None


def malformed_reason(payload: bytes | None) -> str:
    """Why `decode_tick` returns None for `payload`."""
    if payload is None:
        return "no value (tombstone)"
    try:
        tick = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return "not JSON"
    if type(tick) is not dict:
        return "not a JSON object"
    if type(tick.get("sym")) is not str:
        return "no string sym"
    for name in ("seq", "epoch", "ts"):
        if type(tick.get(name)) is not int:
            return f"no integer {name}"
    if tick["seq"] < 1:
        return "seq below 1"
    return "a valid tick"


@dataclass
class TickFilter:
    """--symbol and the exact --since/--until window on ts."""

    symbols: frozenset[str] | None = None
    since_ns: int | None = None
    until_ns: int | None = None

    def accepts(self, tick: Mapping[str, Any]) -> bool:
        """Whether `tick` (a decoded tick) is one of the selected symbols inside the window."""
        if self.symbols is not None and tick["sym"] not in self.symbols:
            return False
        ts = tick["ts"]
        if self.since_ns is not None and ts < self.since_ns:
            return False
        return self.until_ns is None or ts < self.until_ns
