"""Per-symbol sequence accounting for benchmark subscribers that read raw frames: gaps and
missed ticks within an epoch, and the seq span each symbol covered (what was published while
the subscriber listened)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from feedsvc.protocol.ticks import CONTROL_PREFIX, decode_frame

CONTROL_START: Final = CONTROL_PREFIX.encode()


class SequenceGaps:
    """Per-symbol seq jumps within one epoch: a jump from 41 to 45 is one gap of 3 missed."""

    def __init__(self) -> None:
        self.first_seq: dict[str, int] = {}
        self.last_seq: dict[str, int] = {}
        self.epoch: int | None = None
        self.gaps = 0
        self.missed = 0
        self.backwards = 0
        self.epochs = 0

    def observe(self, symbol: str, epoch: int, seq: int) -> int:
        """One tick; returns how many ticks of `symbol` were missed just before it."""
        if epoch != self.epoch:
            # A new epoch restarts every seq: a publisher restart, not a gap.
            self.epoch = epoch
            self.epochs += 1
            self.first_seq.clear()
            self.last_seq.clear()
        last = self.last_seq.get(symbol)
        self.last_seq[symbol] = seq
        if last is None:
            self.first_seq[symbol] = seq
            return 0
        if seq <= last:
            self.backwards += 1
            return 0
        missed = seq - last - 1
        if missed:
            self.gaps += 1
            self.missed += missed
        return missed

    @property
    def published_in_span(self) -> int:
        """Ticks published from each symbol's first seen seq to its last (this epoch)."""
        return sum(self.last_seq[symbol] - first + 1 for symbol, first in self.first_seq.items())

    def summary(self) -> dict[str, int]:
        return {
            "gaps": self.gaps,
            "missed": self.missed,
            "duplicates_or_backwards": self.backwards,
            "epochs": self.epochs,
            "symbols": len(self.last_seq),
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
