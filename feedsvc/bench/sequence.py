"""Per-symbol sequence accounting for benchmark subscribers that read raw frames: gaps and
missed ticks within an epoch, and the seq span each symbol covered (what was published while
the subscriber listened)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from feedsvc.protocol.ticks import CONTROL_PREFIX, decode_frame

CONTROL_START: Final = CONTROL_PREFIX.encode()


class SequenceGaps:
    """Per-symbol seq jumps within the symbol's epoch: a jump from 41 to 45 is one gap of 3
    missed. Each symbol follows its own publisher's epoch, so shards' interleaved epochs are no
    restart; a symbol's new epoch restarts its seqs (a publisher restart, not a gap)."""

    def __init__(self) -> None:
        # symbol -> [epoch, first seq, last seq] in its current epoch.
        self._state: dict[str, list[int]] = {}
        self._epochs: set[int] = set()
        self.gaps = 0
        self.missed = 0
        self.backwards = 0

    @property
    def epochs(self) -> int:
        """Distinct epochs seen (one per publisher run)."""
        return len(self._epochs)

    def observe(self, symbol: str, epoch: int, seq: int) -> int:
        """One tick; returns how many ticks of `symbol` were missed just before it."""
        state = self._state.get(symbol)
        if state is None or state[0] != epoch:
            self._epochs.add(epoch)
            self._state[symbol] = [epoch, seq, seq]
            return 0
        last = state[2]
        state[2] = seq
        if seq <= last:
            self.backwards += 1
            return 0
        missed = seq - last - 1
        if missed:
            self.gaps += 1
            self.missed += missed
        return missed

    @property
    def last_seq(self) -> dict[str, int]:
        """The last seq seen of each symbol (in its current epoch)."""
        return {symbol: last for symbol, (_epoch, _first, last) in self._state.items()}

    @property
    def symbols(self) -> int:
        return len(self._state)

    @property
    def published_in_span(self) -> int:
        """Ticks published from each symbol's first seen seq to its last (its current epoch)."""
        return sum(last - first + 1 for _epoch, first, last in self._state.values())

    def summary(self) -> dict[str, int]:
        return {
            "gaps": self.gaps,
            "missed": self.missed,
            "duplicates_or_backwards": self.backwards,
            "epochs": self.epochs,
            "symbols": len(self._state),
        }


def count_gaps(frames: Iterable[bytes]) -> dict[str, int]:
    """`SequenceGaps.summary` over wire frames (topic, space, JSON); control frames skipped."""
    tracker = SequenceGaps()
    for frame in frames:
        if frame.startswith(CONTROL_START):
            continue
        _, tick = decode_frame(frame)
        tracker.observe(tick["sym"], tick["epoch"], tick["seq"])
    return tracker.summary()
