"""The recovery window: every symbol's recent frames as broadcast, kept for gap recovery.

The hot path appends each frame to its symbol's list (one call per tick, found by the
publisher's per-symbol lookup it already does). A symbol's frames are contiguous in seq (a
refused tick uses no seq), so the seq of each frame follows from the first one held: no tuple,
no stamp per tick.

Every trim pass (at most TRIM_CHECK_S apart) joins a symbol's recent frames, CHUNK_FRAMES at a
time, into a chunk with the offsets of its frames, while they are still warm in the cache
(about 60 ns a frame). A reply is then a few views of chunks, sent without a copy: its cost to
the loop does not grow with its ticks. Slicing and joining frames one by one for a reply, as a
first version did, touched every frame's memory cold: 1.5 ms of the loop for 10,000 ticks on
this VM, against about 0.25 ms now.

Age and size are bounded off the hot path. Once a second the loop takes marks, "by time t the
symbol had published up to seq s", for the symbols that published since their last mark (a
chunk of symbols per pass, so a hundred thousand of them never stall a pass). A mark older than
window_s trims its symbol up to its seq; while the frames held exceed max_bytes, the oldest
marks are trimmed early. Chunks go whole, recent frames one by one, spread over passes
(TRIM_FRAMES_PER_PASS). So a frame is held at least window_s (unless max_bytes pushes it out),
and at most about a mark interval longer (or until its chunk's last frame is due); max_bytes is
overshot by at most TRIM_CHECK_S of ticks.
"""

from __future__ import annotations

import bisect
import collections
import itertools
import operator
import time
from collections.abc import Callable
from typing import Final, NamedTuple

FRAME_SEPARATOR: Final = b"\n"
# Frames per chunk: a chunk (about 75 KB of 150-byte frames) is sent as it is, zero-copy
# above pyzmq's copy threshold (64 KB).
CHUNK_FRAMES: Final = 512
_INDEXES: Final = range(CHUNK_FRAMES)
# Marks are taken this often for every symbol that published since its last one.
MARK_INTERVAL_S: Final = 1.0
# Symbols looked at per mark pass at most; more are covered over the next passes.
MARK_SYMBOLS_PER_PASS: Final = 5_000
# Frames dropped per trim pass at most (their bytes counted, the rest of the list moved down),
# so trimming never stalls the loop.
TRIM_FRAMES_PER_PASS: Final = 40 * CHUNK_FRAMES
# How soon the loop calls trim() again while there is trimming or marking left to do, and at
# the latest (so max_bytes is overshot by at most this long's ticks).
TRIM_AGAIN_S: Final = 0.01
TRIM_CHECK_S: Final = 0.1


class SymbolFrames:
    """One symbol's frames held, from seq `first_seq` on: `chunks` of CHUNK_FRAMES frames each,
    joined by FRAME_SEPARATOR, then the `recent` frames the hot path appended since."""

    __slots__ = ("chunks", "first_seq", "marked_seq", "recent", "symbol")

    def __init__(self, symbol: str) -> None:
        self.symbol = symbol
        self.chunks: collections.deque[Chunk] = collections.deque()
        # The same list for the symbol's life: the hot path holds its append.
        self.recent: list[bytes] = []
        self.first_seq = 1
        # The last seq a mark was taken at (0: none yet).
        self.marked_seq = 0

    @property
    def held(self) -> int:
        return len(self.chunks) * CHUNK_FRAMES + len(self.recent)

    @property
    def last_seq(self) -> int:
        """The last seq held (first_seq - 1 when nothing is held)."""
        return self.first_seq + self.held - 1


class _Mark(NamedTuple):
    at: float
    entry: SymbolFrames
    seq: int


class Lookup(NamedTuple):
    """What the window holds of a requested range: `pieces` (None when part of the range is
    not held), each holding whole frames joined by FRAME_SEPARATOR, `count` frames in all from
    the first seq asked; the symbol's oldest seq held (None: none) and its latest seq published
    (None: never)."""

    pieces: list[bytes | memoryview] | None
    count: int
    oldest: int | None
    latest: int | None

    @property
    def frames(self) -> list[bytes] | None:
        """The frames one by one (for tests and tools; the service sends the pieces)."""
        if self.pieces is None:
            return None
        return [frame for piece in self.pieces for frame in bytes(piece).split(FRAME_SEPARATOR)]


class Chunk(NamedTuple):
    """CHUNK_FRAMES frames joined by FRAME_SEPARATOR, and where each ends (before its
    separator), so a piece of it is found without reading it."""

    data: bytes
    ends: list[int]

    @classmethod
    def of(cls, frames: list[bytes]) -> Chunk:
        # C-level passes over frames still warm in the cache: about 60 ns a frame in all.
        lengths = itertools.accumulate(map(len, frames))
        return cls(FRAME_SEPARATOR.join(frames), list(map(operator.add, lengths, _INDEXES)))

    def start_of(self, index: int) -> int:
        return 0 if index == 0 else self.ends[index - 1] + 1


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
        self._compact_cursor = 0
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
        return entry.recent.append

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

        With `max_bytes`, about that many bytes of them from `first` on (at least one frame;
        a chunk may overshoot it by one chunk). Chunks go out as views, without a copy or a
        touch per frame: what the loop spends on a reply does not grow with its ticks."""
        entry = self._by_symbol.get(symbol)
        if entry is None:
            return Lookup(None, 0, None, None)
        latest = entry.last_seq if entry.last_seq > 0 else None
        if not entry.held:
            return Lookup(None, 0, None, latest)  # every frame of it trimmed
        oldest = entry.first_seq
        if first < oldest or latest is None or last > latest:
            return Lookup(None, 0, oldest, latest)
        wanted = last - first + 1
        limit = max_bytes if max_bytes is not None else 2**62
        pieces: list[bytes | memoryview] = []
        taken = size = 0
        chunked = len(entry.chunks) * CHUNK_FRAMES
        while taken < wanted and size < limit:
            index = first - oldest + taken
            if index < chunked:
                chunk_index, in_chunk = divmod(index, CHUNK_FRAMES)
                chunk = entry.chunks[chunk_index]
                count = min(CHUNK_FRAMES - in_chunk, wanted - taken)
                start = chunk.start_of(in_chunk)
                ends = chunk.ends
                room = limit - size
                if ends[in_chunk + count - 1] - start > room:
                    # The frames that fit (at least one in a reply's first piece).
                    fitting = bisect.bisect_right(ends, start + room, in_chunk, in_chunk + count)
                    count = fitting - in_chunk
                    if count == 0 and not pieces:
                        count = 1
                    if count == 0:
                        break
                end = ends[in_chunk + count - 1]
                data = chunk.data
                piece: bytes | memoryview = (
                    data if start == 0 and end == len(data) else memoryview(data)[start:end]
                )
            else:
                recent = entry.recent
                in_recent = index - chunked
                count = min(len(recent) - in_recent, wanted - taken)
                # Recent frames are joined here: at most CHUNK_FRAMES of them, still warm.
                count = min(count, max(1, (limit - size) // (len(recent[in_recent]) + 1)))
                piece = FRAME_SEPARATOR.join(recent[in_recent : in_recent + count])
                while len(piece) > limit - size and count > 1:
                    count -= max(1, count // 10)
                    piece = FRAME_SEPARATOR.join(recent[in_recent : in_recent + count])
                if pieces and len(piece) > limit - size:
                    break
            pieces.append(piece)
            taken += count
            size += len(piece)
        return Lookup(pieces, taken, oldest, latest)

    def trim(self, now: float) -> None:
        """Take the marks that are due and trim what is too old or over max_bytes, within this
        pass's bounds; sets trim_due_at for the next call."""
        more = not self._compact()
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
            left = self._trim_entry(mark.entry, mark.seq, budget)
            if mark.entry.first_seq > mark.seq:
                marks.popleft()
            elif left == budget:
                if budget < CHUNK_FRAMES:
                    break  # a whole chunk is due but the pass has no room for it
                # Its frames share a chunk with younger ones: a later mark drops the chunk.
                marks.popleft()
            budget = left
        if marks and budget < CHUNK_FRAMES:
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

    def _compact(self) -> bool:
        """Join the recent frames of a round of symbols into chunks while they are warm in the
        cache (about 11 ns a frame); True once every symbol was looked at."""
        entries = self._entries
        end = min(self._compact_cursor + MARK_SYMBOLS_PER_PASS, len(entries))
        for entry in itertools.islice(entries, self._compact_cursor, end):
            recent = entry.recent
            while len(recent) >= CHUNK_FRAMES:
                entry.chunks.append(Chunk.of(recent[:CHUNK_FRAMES]))
                del recent[:CHUNK_FRAMES]
        self._compact_cursor = 0 if end >= len(entries) else end
        return self._compact_cursor == 0

    def _take_marks(self, now: float) -> bool:
        """Mark a chunk of symbols; True once every symbol was looked at in this round."""
        entries, marks = self._entries, self._marks
        end = min(self._mark_cursor + MARK_SYMBOLS_PER_PASS, len(entries))
        for entry in itertools.islice(entries, self._mark_cursor, end):
            last_seq = entry.last_seq
            if last_seq > entry.marked_seq:
                entry.marked_seq = last_seq
                marks.append(_Mark(now, entry, last_seq))
        if end >= len(entries):
            self._mark_cursor = 0
            return True
        self._mark_cursor = end
        return False

    def _trim_entry(self, entry: SymbolFrames, up_to_seq: int, budget: int) -> int:
        """Drop `entry`'s frames up to seq `up_to_seq`, at most about `budget` frames: whole
        chunks, then recent frames once no chunk is left; returns the budget left."""
        chunks = entry.chunks
        while chunks and entry.first_seq + CHUNK_FRAMES - 1 <= up_to_seq and budget >= CHUNK_FRAMES:
            chunk = chunks.popleft()
            entry.first_seq += CHUNK_FRAMES
            self.trimmed_frames += CHUNK_FRAMES
            # Frame bytes: the chunk less its separators.
            self.trimmed_bytes += len(chunk.data) - (CHUNK_FRAMES - 1)
            budget -= CHUNK_FRAMES
        if chunks or budget <= 0:
            return budget
        frames = entry.recent
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
