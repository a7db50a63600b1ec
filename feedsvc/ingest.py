"""Where ticks come from: the built-in synthetic feed and the PULL ingest socket's decoder."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator
from typing import Final

import orjson

from feedsvc.ticks import (
    REJECT_BAD_OPTIONAL_FIELD,
    REJECT_NOT_JSON,
    REJECT_REASONS,
    REJECT_TOO_LARGE,
    Tick,
    tick_problem,
)

# Table lengths are distinct primes so the combined walk does not repeat for ~10^19 ticks,
# while each tick costs only list indexing instead of several random() calls.
_SYMBOL_TABLE: Final = 65_521
_STEP_TABLE: Final = 65_519
_SIZE_TABLE: Final = 65_497
_SPREADS_CENTS: Final = (1, 2, 3)
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


def synthetic_symbols(count: int) -> list[str]:
    """Fixed-width names (SYN0000, SYN0001, ...) so no symbol is a prefix of another."""
    width = max(4, len(str(count - 1)))
    return [f"SYN{index:0{width}d}" for index in range(count)]


class SyntheticFeed:
    """Random-walk bid/ask quotes with sizes over a fixed set of symbols.

    Prices move in whole cents around a per-symbol mid; the spread is 1 to 3 cents and sizes are
    round lots. Symbols are drawn uniformly at random.
    """

    def __init__(self, symbol_count: int, seed: int = 0) -> None:
        rng = random.Random(seed or None)
        self.symbols = synthetic_symbols(symbol_count)
        self._mid_cents = [rng.randint(1_000, 50_000) for _ in self.symbols]
        # choices() fills a table in one call: start-up stays well under a second.
        self._symbol_draws = rng.choices(range(symbol_count), k=_SYMBOL_TABLE)
        self._step_draws = rng.choices((-2, -1, -1, 0, 0, 0, 1, 1, 2), k=_STEP_TABLE)
        self._size_draws = [lots * 100 for lots in rng.choices(range(1, 51), k=_SIZE_TABLE)]
        self._draw = 0

    def generate(self, count: int) -> list[Tick]:
        """The next `count` ticks, without seq/epoch/ts (the publisher stamps those)."""
        draw = self._draw
        symbols, mids = self.symbols, self._mid_cents
        ticks: list[Tick] = []
        append = ticks.append
        # zip over table slices: no per-tick index arithmetic (this runs at full publish rate).
        for index, step, bid_size, ask_size, spread in zip(
            _wrapped_slice(self._symbol_draws, draw, count),
            _wrapped_slice(self._step_draws, draw, count),
            _wrapped_slice(self._size_draws, draw, count),
            _wrapped_slice(self._size_draws, draw + 7, count),
            _spreads(draw, count),
            strict=True,
        ):
            mid = mids[index] + step
            if mid < 10:
                mid = 10
            mids[index] = mid
            append(
                {
                    "sym": symbols[index],
                    "bid": (mid - spread) / 100,
                    "ask": (mid + spread) / 100,
                    "bid_size": bid_size,
                    "ask_size": ask_size,
                }
            )
        self._draw = draw + count
        return ticks


def _spreads(start: int, count: int) -> Iterator[int]:
    first = start % len(_SPREADS_CENTS)
    return itertools.islice(itertools.cycle(_SPREADS_CENTS), first, first + count)


def _wrapped_slice(table: list[int], start: int, count: int) -> list[int]:
    """`count` items of `table` from `start`, wrapping around (count <= len(table))."""
    start %= len(table)
    end = start + count
    if end <= len(table):
        return table[start:end]
    return table[start:] + table[: end - len(table)]


class BurstSchedule:
    """Market-open style spikes: `rate` ticks/s for `duration_s` out of every `every_s`.

    Windows start at whole multiples of `every_s` on the Unix clock (with every_s 60: at the top
    of each minute), so every process given the same settings bursts at the same moments.
    """

    def __init__(self, rate: float, every_s: float, duration_s: float) -> None:
        if not 0 < duration_s < every_s:
            raise ValueError(f"need 0 < duration_s < every_s, got {duration_s} and {every_s}")
        self.rate = rate
        self.every_s = every_s
        self.duration_s = duration_s

    def in_burst(self, unix_s: float) -> bool:
        """Whether the Unix time `unix_s` lies in a burst window."""
        return unix_s % self.every_s < self.duration_s

    def next_change(self, unix_s: float) -> float:
        """The Unix time of the next window start or end after `unix_s`."""
        phase = unix_s % self.every_s
        window_start = unix_s - phase
        if phase < self.duration_s:
            return window_start + self.duration_s
        return window_start + self.every_s

    def windows(self, start_unix_s: float, end_unix_s: float) -> list[tuple[float, float]]:
        """The burst windows overlapping [start, end), clipped to it, in Unix seconds."""
        windows = []
        window_start = start_unix_s - start_unix_s % self.every_s
        while window_start < end_unix_s:
            clipped = (
                max(window_start, start_unix_s),
                min(window_start + self.duration_s, end_unix_s),
            )
            if clipped[0] < clipped[1]:
                windows.append(clipped)
            window_start += self.every_s
        return windows


class RatePacer:
    """How many ticks are due now to hold `rate` ticks/s; rate 0 means as fast as possible.

    Falling behind by more than `max_lag_s` forgets the excess instead of bursting to catch up.
    With `bursts` (and a rate above 0) the rate follows the schedule: `bursts.rate` inside its
    windows, `rate` outside. `now` is a monotonic clock; `unix_offset_s` (Unix time minus that
    clock, taken once) places the schedule's Unix-time windows on it.
    """

    def __init__(
        self,
        rate: float,
        start: float,
        max_batch: int = 512,
        max_lag_s: float = 0.1,
        bursts: BurstSchedule | None = None,
        unix_offset_s: float = 0.0,
    ):
        self.base_rate = rate
        self.max_batch = max_batch
        self.bursts = bursts if rate > 0 else None
        self._max_lag_s = max_lag_s
        self._unix_offset_s = unix_offset_s
        # Without bursts this stays infinite: due() then pays one comparison for the feature.
        self._next_change = math.inf
        self._anchor(rate, start)
        if self.bursts is not None:
            self._follow_schedule(start)

    def _anchor(self, rate: float, start: float) -> None:
        self.rate = rate
        self._start = start
        self._emitted = 0
        self._max_lag_ticks = max(1, int(rate * self._max_lag_s))

    def _follow_schedule(self, now: float) -> None:
        unix_now = now + self._unix_offset_s
        rate = self.bursts.rate if self.bursts.in_burst(unix_now) else self.base_rate
        # The new rate counts from the boundary just crossed, not from when the loop noticed
        # it, and ticks still owed at the old rate up to the boundary are carried over.
        boundary = min(self._next_change, now)
        carried = int((boundary - self._start) * self.rate) - self._emitted
        self._anchor(rate, boundary)
        self._emitted = -max(0, min(carried, self._max_lag_ticks))
        self._next_change = self.bursts.next_change(unix_now) - self._unix_offset_s

    def due(self, now: float) -> int:
        """Ticks to generate now (at most max_batch); counts them as emitted."""
        if now >= self._next_change:
            self._follow_schedule(now)
        if self.rate <= 0:
            return self.max_batch
        owed = int((now - self._start) * self.rate) - self._emitted
        if owed > self._max_lag_ticks:
            self._emitted += owed - self._max_lag_ticks
            owed = self._max_lag_ticks
        count = max(0, min(owed, self.max_batch))
        self._emitted += count
        return count

    def seconds_until_next(self, now: float) -> float:
        """Seconds until at least one more tick is due, or the rate changes (0 when due)."""
        if self.rate <= 0:
            return 0.0
        next_due_at = self._start + (self._emitted + 1) / self.rate
        return max(0.0, min(next_due_at, self._next_change) - now)
