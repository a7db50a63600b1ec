"""The recovery window: every symbol's recent frames as broadcast, kept for gap recovery.

The hot path appends each frame to its symbol's list (one call per tick, found by the
publisher's per-symbol lookup it already does). A symbol's frames are contiguous in seq (a
refused tick uses no seq), so the seq of each frame follows from the first one held: no tuple,
no stamp per tick.

Age and size are bounded off the hot path. Once a second the loop takes marks, "by time t the
symbol had published up to seq s", for the symbols that published since their last mark (a
chunk of symbols per pass, so a hundred thousand of them never stall a pass). A mark older than
window_s trims its symbol up to its seq; while the frames held exceed max_bytes, the oldest
marks are trimmed early. Trimming is spread over passes (TRIM_FRAMES_PER_PASS). So a frame is
held at least window_s (unless max_bytes pushes it out), and at most about a mark interval
longer; max_bytes is overshot by at most TRIM_CHECK_S of ticks.
"""

from __future__ import annotations

import collections
import itertools
import time
from collections.abc import Callable
from typing import Final, NamedTuple

# Marks are taken this often for every symbol that published since its last one.
MARK_INTERVAL_S: Final = 1.0
# Symbols looked at per mark pass at most; more are covered over the next passes.
MARK_SYMBOLS_PER_PASS: Final = 5_000
# Frames dropped per trim pass at most (their bytes counted, the rest of the list moved down),
# so trimming never stalls the loop.
TRIM_FRAMES_PER_PASS: Final = 20_000
# How soon the loop calls trim() again while there is trimming or marking left to do, and at
# the latest (so max_bytes is overshot by at most this long's ticks).
TRIM_AGAIN_S: Final = 0.01
TRIM_CHECK_S: Final = 0.1


class SymbolFrames:
    """One symbol's frames held: ``frames[i]`` has seq ``first_seq + i``."""

    __slots__ = ("first_seq", "frames", "marked_seq", "symbol")

    def __init__(self, symbol: str) -> None:
        self.symbol = symbol
        # A list, not a deque: a recovery reply is one C-level slice of it (a deque is walked
        # from its left end, 0.5 ms to reach the newest 10,000 of 60,000 frames, in the loop).
        self.frames: list[bytes] = []
        self.first_seq = 1
        # The last seq a mark was taken at (0: none yet).
        self.marked_seq = 0

    @property
    def last_seq(self) -> int:
        """The last seq held (first_seq - 1 when nothing is held)."""
        return self.first_seq + len(self.frames) - 1


class _Mark(NamedTuple):
    at: float
    entry: SymbolFrames
    seq: int


class Lookup(NamedTuple):
    """What the window holds of a requested range: the frames (None when part of the range is
    not held), the symbol's oldest seq held (None: none) and its latest seq published (None:
    never)."""

    frames: list[bytes] | None
    oldest: int | None
    latest: int | None


class RecoveryWindow:
    """The frames of the last `window_s` seconds, at most `max_bytes` of them.

    Parameters
    ----------
    window_s, max_bytes:
        recovery.window_s and recovery.max_bytes: whichever is reached first.
    published_bytes:
        The publisher's count of frame bytes sent (held bytes = that less the bytes trimmed:
        nothing is counted per tick here). The window is made before the publisher sends.
    clock:
        Monotonic seconds.
    """

    def __init__(
        self,
        window_s: float,
        max_bytes: int,
        published_bytes: Callable[[], int],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window_s = window_s
        self.max_bytes = max_bytes
        self._published_bytes = published_bytes
        self._clock = clock
        self._by_symbol: dict[str, SymbolFrames] = {}
        # Symbols in the order they are marked (round robin over passes).
        self._entries: list[SymbolFrames] = []
        self._mark_cursor = 0
        self._marks: collections.deque[_Mark] = collections.deque()
        self.trimmed_frames = 0
        self.trimmed_bytes = 0
        self._next_marks_at = clock() + MARK_INTERVAL_S
        # The loop calls trim() when its clock reaches this (one comparison per pass).
        self.trim_due_at = self._next_marks_at

    def track(self, symbol: str) -> Callable[[bytes], None]:
        """Start holding `symbol`'s frames; returns the append the hot path calls per frame."""
        entry = SymbolFrames(symbol)
        self._by_symbol[symbol] = entry
        self._entries.append(entry)
        return entry.frames.append

    @property
    def held_bytes(self) -> int:
        return self._published_bytes() - self.trimmed_bytes

    @property
    def symbol_count(self) -> int:
        return len(self._by_symbol)

    def oldest_mark_age_s(self, now: float) -> float:
        """Roughly how old the oldest frame held is (the oldest mark's age; 0 without marks).
        Safe from the metrics thread: the loop may trim the mark meanwhile."""
        try:
            return max(0.0, now - self._marks[0].at)
        except IndexError:
            return 0.0

    def lookup(self, symbol: str, first: int, last: int, max_bytes: int | None = None) -> Lookup:
        """The frames of seqs first..last of `symbol` (first <= last), if all are held.

        With `max_bytes`, about that many bytes of them from `first` on (estimated from the
        first frame's size, at least one frame): every frame sliced costs the loop a cold
        memory touch, so no more are taken than a reply can hold."""
        entry = self._by_symbol.get(symbol)
        if entry is None:
            return Lookup(None, None, None)
        latest = entry.last_seq if entry.last_seq > 0 else None
        if not entry.frames:
            return Lookup(None, None, latest)  # every frame of it trimmed
        oldest = entry.first_seq
        if first < oldest or last > latest:
            return Lookup(None, oldest, latest)
        start = first - oldest
        count = last - first + 1
        if max_bytes is not None:
            count = min(count, max(1, max_bytes // (len(entry.frames[start]) + 1)))
        return Lookup(entry.frames[start : start + count], oldest, latest)

    def trim(self, now: float) -> None:
        """Take the marks that are due and trim what is too old or over max_bytes, within this
        pass's bounds; sets trim_due_at for the next call."""
        more = False
        if now >= self._next_marks_at:
            if self._take_marks(now):
                self._next_marks_at = now + MARK_INTERVAL_S
            else:
                more = True
        budget = TRIM_FRAMES_PER_PASS
        horizon = now - self.window_s
        marks = self._marks
        while marks and budget > 0:
            mark = marks[0]
            if mark.at > horizon and self.held_bytes <= self.max_bytes:
                break
            budget = self._trim_entry(mark.entry, mark.seq, budget)
            if mark.entry.first_seq > mark.seq:
                marks.popleft()
        if marks and budget <= 0:
            more = True
        elif not marks and self.held_bytes > self.max_bytes:
            # Everything held is younger than the last marks: mark now, trim next pass.
            self._next_marks_at = now
            more = True
        if more:
            self.trim_due_at = now + TRIM_AGAIN_S
        else:
            oldest_expires = marks[0].at + self.window_s if marks else self._next_marks_at
            self.trim_due_at = min(self._next_marks_at, oldest_expires, now + TRIM_CHECK_S)

    def _take_marks(self, now: float) -> bool:
        """Mark a chunk of symbols; True once every symbol was looked at in this round."""
        entries, marks = self._entries, self._marks
        end = min(self._mark_cursor + MARK_SYMBOLS_PER_PASS, len(entries))
        for entry in itertools.islice(entries, self._mark_cursor, end):
            last_seq = entry.first_seq + len(entry.frames) - 1
            if last_seq > entry.marked_seq:
                entry.marked_seq = last_seq
                marks.append(_Mark(now, entry, last_seq))
        if end >= len(entries):
            self._mark_cursor = 0
            return True
        self._mark_cursor = end
        return False

    def _trim_entry(self, entry: SymbolFrames, up_to_seq: int, budget: int) -> int:
        """Drop `entry`'s frames up to seq `up_to_seq`, at most `budget`; returns what is left."""
        frames = entry.frames
        count = min(up_to_seq - entry.first_seq + 1, len(frames), budget)
        if count <= 0:
            return budget
        dropped_bytes = sum(map(len, itertools.islice(frames, count)))
        # The same list object (the hot path holds its append); the rest moves down, a memmove.
        del frames[:count]
        entry.first_seq += count
        self.trimmed_frames += count
        self.trimmed_bytes += dropped_bytes
        return budget - count
