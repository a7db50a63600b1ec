"""The sequence audit of ``--verify``: `AuditVerifier` checks that each (symbol, epoch) carries
seq 1, 2, 3 ... once each. Pure: it takes decoded ticks and knows nothing of Kafka or sockets."""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

# One audit line lists at most this many missing ranges; the totals always count all of them.
GAP_RANGES_SHOWN: Final = 20


class _SeenSequence:
    """The seqs seen for one (symbol, epoch) as sorted disjoint ranges [starts[i], ends[i]].

    In-order data is one range however long, so memory does not grow with the tick count; out of
    order and repeated seqs are still placed exactly.
    """

    __slots__ = ("count", "duplicates", "ends", "starts")

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.count = 0
        self.duplicates = 0

    def add(self, seq: int) -> None:
        self.count += 1
        starts, ends = self.starts, self.ends
        # The common case: the next seq after the highest so far.
        if ends and seq == ends[-1] + 1:
            ends[-1] = seq
            return
        index = bisect.bisect_right(starts, seq)
        if index > 0 and seq <= ends[index - 1]:
            self.duplicates += 1
            return
        joins_lower = index > 0 and ends[index - 1] == seq - 1
        joins_upper = index < len(starts) and starts[index] == seq + 1
        if joins_lower and joins_upper:
            ends[index - 1] = ends[index]
            del starts[index], ends[index]
        elif joins_lower:
            ends[index - 1] = seq
        elif joins_upper:
            starts[index] = seq
        else:
            starts.insert(index, seq)
            ends.insert(index, seq)

    def missing_ranges(self, count_leading: bool) -> list[tuple[int, int]]:
        """Missing seqs as inclusive (first, last) ranges; from seq 1 on if `count_leading`."""
        ranges = [
            (self.ends[index] + 1, self.starts[index + 1] - 1)
            for index in range(len(self.starts) - 1)
        ]
        if count_leading and self.starts and self.starts[0] > 1:
            ranges.insert(0, (1, self.starts[0] - 1))
        return ranges


@dataclass(frozen=True)
class SequenceAudit:
    """The audit of one (symbol, epoch)."""

    symbol: str
    epoch: int
    count: int
    """Ticks seen, duplicates included."""
    first_seq: int
    """Lowest seq seen."""
    last_seq: int
    """Highest seq seen."""
    missing_ranges: tuple[tuple[int, int], ...]
    duplicates: int
    leading_checked: bool
    """Whether seqs before first_seq were checked (see `AuditVerifier`)."""

    @property
    def missing(self) -> int:
        return sum(last - first + 1 for first, last in self.missing_ranges)

    def line(self) -> str:
        """One human-readable report line."""
        if self.missing_ranges:
            shown = ", ".join(
                _format_range(first, last) for first, last in self.missing_ranges[:GAP_RANGES_SHOWN]
            )
            hidden = len(self.missing_ranges) - GAP_RANGES_SHOWN
            more = f", ... {hidden} more ranges" if hidden > 0 else ""
            gaps = f"gaps {shown}{more} ({self.missing} missing)"
        else:
            gaps = "no gaps"
        unchecked = (
            " (began before the window)" if not self.leading_checked and self.first_seq > 1 else ""
        )
        return (
            f"{self.symbol} epoch {self.epoch}: {self.count} ticks, "
            f"seq {self.first_seq}-{self.last_seq}{unchecked}, {gaps}, "
            f"{self.duplicates} duplicates"
        )


def _format_range(first: int, last: int) -> str:
    return str(first) if first == last else f"{first}-{last}"


@dataclass(frozen=True)
class AuditReport:
    """What `AuditVerifier.report` returns: per (symbol, epoch) audits and the totals."""

    sequences: tuple[SequenceAudit, ...]
    malformed: int = 0

    @property
    def ticks(self) -> int:
        return sum(audit.count for audit in self.sequences)

    @property
    def gaps(self) -> int:
        """Missing ranges, e.g. "5-7, 12" is 2 gaps."""
        return sum(len(audit.missing_ranges) for audit in self.sequences)

    @property
    def missing(self) -> int:
        return sum(audit.missing for audit in self.sequences)

    @property
    def duplicates(self) -> int:
        return sum(audit.duplicates for audit in self.sequences)

    @property
    def symbols(self) -> int:
        return len({audit.symbol for audit in self.sequences})

    @property
    def epochs(self) -> int:
        return len({audit.epoch for audit in self.sequences})

    @property
    def ok(self) -> bool:
        """No gap, no duplicate, no malformed message."""
        return self.gaps == 0 and self.duplicates == 0 and self.malformed == 0

    def lines(self) -> list[str]:
        return [audit.line() for audit in self.sequences]

    def summary(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "ticks": self.ticks,
            "gaps": self.gaps,
            "missing": self.missing,
            "duplicates": self.duplicates,
            "malformed": self.malformed,
            "symbols": self.symbols,
            "epochs": self.epochs,
        }


class AuditVerifier:
    """Checks that the ticks of each (symbol, epoch) carry seq 1, 2, 3 ... once each.

    A new epoch is a publisher restart and starts its own sequence at 1: never a gap. A seq seen
    again is a duplicate. Seqs missing between the lowest and the highest seen are gaps.

    Seqs before the lowest one seen (1 .. first-1) count as a gap only where the window must hold
    the epoch's first tick:

    - without `window_start_ns` (replay from the beginning of the topic), always;
    - with it (``--since``), only for epochs that began inside the window: an epoch is its start
      time in ns and seq 1 is published after it, so ``epoch >= since`` puts seq 1 in the window.
      An epoch that began earlier legitimately enters the window mid-sequence, so only its
      internal gaps count.

    The end of a window cannot be checked: ticks after the last one seen may simply not exist yet.
    """

    def __init__(self, window_start_ns: int | None = None) -> None:
        self.window_start_ns = window_start_ns
        self.malformed = 0
        self._sequences: dict[tuple[str, int], _SeenSequence] = {}

    def observe(self, tick: Mapping[str, Any]) -> None:
        """Account for one tick (a decoded payload with at least sym, epoch and seq)."""
        key = (tick["sym"], tick["epoch"])
        sequence = self._sequences.get(key)
        if sequence is None:
            sequence = self._sequences[key] = _SeenSequence()
        sequence.add(tick["seq"])

    def observe_malformed(self) -> None:
        """Account for a message that is not a tick: it fails the audit."""
        self.malformed += 1

    def _leading_checked(self, epoch: int) -> bool:
        return self.window_start_ns is None or epoch >= self.window_start_ns

    def report(self) -> AuditReport:
        """The audit of everything observed so far, per (symbol, epoch) in sorted order."""
        audits = []
        for (symbol, epoch), sequence in sorted(self._sequences.items()):
            leading_checked = self._leading_checked(epoch)
            audits.append(
                SequenceAudit(
                    symbol=symbol,
                    epoch=epoch,
                    count=sequence.count,
                    first_seq=sequence.starts[0],
                    last_seq=sequence.ends[-1],
                    missing_ranges=tuple(sequence.missing_ranges(leading_checked)),
                    duplicates=sequence.duplicates,
                    leading_checked=leading_checked,
                )
            )
        return AuditReport(tuple(audits), malformed=self.malformed)
