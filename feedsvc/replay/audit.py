"""The sequence audit of ``--verify``: `AuditVerifier` checks that each (symbol, epoch) carries
seq 1, 2, 3 ... once each, and, given the mirror's checkpoint records, that nothing they say was
published is missing (the last ticks of a symbol, or all of them). Pure: it takes decoded ticks
and records and knows nothing of Kafka or sockets."""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from feedsvc.protocol.checkpoints import Checkpoint
from feedsvc.replay.claims import ClaimBook, EpochAudit, EpochClaims, explanation
from feedsvc.replay.times import format_ns

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
    """Ticks seen, duplicates included (0: none, but a checkpoint says some were published)."""
    first_seq: int
    """Lowest seq seen (0 when none was)."""
    last_seq: int
    """Highest seq seen (0 when none was)."""
    missing_ranges: tuple[tuple[int, int], ...]
    """Missing seqs, the tail after last_seq that a checkpoint claims included."""
    duplicates: int
    leading_checked: bool
    """Whether seqs before first_seq were checked (see `AuditVerifier`)."""
    claimed_last_seq: int | None = None
    """The last seq the checkpoints say was published, where it could be checked."""

    @property
    def missing(self) -> int:
        return sum(last - first + 1 for first, last in self.missing_ranges)

    @property
    def missing_tail(self) -> int:
        """Missing seqs after the last one seen, up to the claimed last seq."""
        if self.claimed_last_seq is None:
            return 0
        return max(self.claimed_last_seq - self.last_seq, 0)

    def missing_through(self, seq: int) -> int:
        """Missing seqs at or below `seq`."""
        return sum(
            min(last, seq) - first + 1 for first, last in self.missing_ranges if first <= seq
        )

    def line(self) -> str:
        """One human-readable report line."""
        if self.missing_ranges:
            shown = ", ".join(
                _format_range(first, last) for first, last in self.missing_ranges[:GAP_RANGES_SHOWN]
            )
            hidden = len(self.missing_ranges) - GAP_RANGES_SHOWN
            more = f", ... {hidden} more ranges" if hidden > 0 else ""
            tail = ""
            if self.count and self.missing_tail:
                tail = (
                    f", {self.missing_tail} of them after the last tick seen: a checkpoint says "
                    f"seq {self.claimed_last_seq} was published"
                )
            gaps = f"gaps {shown}{more} ({self.missing} missing{tail})"
        else:
            gaps = "no gaps"
        if not self.count:
            claimed = self.claimed_last_seq or 0
            published = "seq 1 was" if claimed == 1 else f"seqs 1-{claimed} were"
            return (
                f"{self.symbol} epoch {self.epoch}: no ticks, but a checkpoint says "
                f"{published} published: {gaps}"
            )
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
    epoch_audits: tuple[EpochAudit, ...] = ()
    """Per epoch with checkpoints the window uses, what they claim and whether it holds."""
    checkpoints: int | None = None
    """Checkpoint records read; None: there is no checkpoint topic (nothing to check against)."""
    malformed_checkpoints: int = 0
    epochs_without_checkpoints: tuple[int, ...] = ()
    """Epochs with ticks but no checkpoint the window uses: their tails cannot be checked."""
    windowed: bool = False

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
    def missing_tail(self) -> int:
        """Missing seqs after the last one seen per symbol (all of a symbol's when none was)."""
        return sum(audit.missing_tail for audit in self.sequences)

    @property
    def dropped_unlocated(self) -> int:
        return sum(audit.dropped_unlocated for audit in self.epoch_audits)

    @property
    def symbols(self) -> int:
        """Symbols with ticks seen."""
        return len({audit.symbol for audit in self.sequences if audit.count})

    @property
    def epochs(self) -> int:
        """Epochs with ticks seen."""
        return len({audit.epoch for audit in self.sequences if audit.count})

    @property
    def ok(self) -> bool:
        """No gap (tails a checkpoint claims included), no duplicate, no malformed message or
        checkpoint, no tick the service says it dropped that the gaps do not account for."""
        return (
            self.gaps == 0
            and self.duplicates == 0
            and self.malformed == 0
            and self.malformed_checkpoints == 0
            and self.dropped_unlocated == 0
        )

    def lines(self) -> list[str]:
        """One line per (symbol, epoch)."""
        return [audit.line() for audit in self.sequences]

    def checkpoint_lines(self) -> list[str]:
        """What the checkpoints showed, per epoch, with what that means; one line if there are
        none."""
        if self.checkpoints is None:
            return [
                "checkpoints: there is no checkpoint topic, so only the seqs between the first "
                "and the last tick seen of each symbol were checked: lost last ticks of a "
                "symbol, or a symbol with no tick at all, cannot be found"
            ]
        lines = explanation(self.windowed)
        read = f"checkpoints: read {self.checkpoints} from the checkpoint topic"
        if self.malformed_checkpoints:
            read += (
                f", {self.malformed_checkpoints} of them malformed (skipped: the claims they "
                "held are unknown, which fails the audit)"
            )
        lines.append(read)
        lines += [audit.line() for audit in self.epoch_audits]
        lines += [
            f"epoch {epoch} (started {format_ns(epoch)}): no checkpoint"
            f"{' in the window' if self.windowed else ''}: its last ticks cannot be checked"
            for epoch in self.epochs_without_checkpoints
        ]
        return lines

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

    def checkpoint_summary(self) -> dict[str, Any]:
        """The checkpoint part of the JSON summary line (`summary` holds the totals, tails
        included)."""
        return {
            "checkpoints": self.checkpoints,
            "malformed_checkpoints": self.malformed_checkpoints,
            "missing_tail": self.missing_tail,
            "dropped_unlocated": self.dropped_unlocated,
            "open_epochs": [audit.entry() for audit in self.epoch_audits if not audit.closed],
            "closed_epochs": [audit.entry() for audit in self.epoch_audits if audit.closed],
            "epochs_without_checkpoints": list(self.epochs_without_checkpoints),
        }


class AuditVerifier:
    """Checks that the ticks of each (symbol, epoch) carry seq 1, 2, 3 ... once each, and that
    every tick a checkpoint record says was published is there.

    A new epoch is a publisher restart and starts its own sequence at 1: never a gap. A seq seen
    again is a duplicate. Seqs missing between the lowest and the highest seen are gaps.

    Seqs before the lowest one seen (1 .. first-1) count as a gap only where the window must hold
    the epoch's first tick:

    - without `window_start_ns` (replay from the beginning of the topic), always;
    - with it (``--since``), only for epochs that began inside the window: an epoch is its start
      time in ns and seq 1 is published after it, so ``epoch >= since`` puts seq 1 in the window.
      An epoch that began earlier legitimately enters the window mid-sequence, so only its
      internal gaps count.

    Without checkpoints the end cannot be checked: ticks after the last one seen may not exist.
    With them (`observe_checkpoint`; `expect_checkpoints` when the topic exists but may be
    empty), a symbol's claimed last seq is the maximum the used records name (`ClaimBook` says
    which the window uses): seqs after the last one seen up to it are a gap (the tail), and so
    are 1 .. claimed of a symbol with no tick at all. A used record was written before
    `window_end_ns`, so every tick it claims has a ts before it; in an epoch whose leading seqs
    are checked they are all after the window start too, and the whole claim is checked. In an
    epoch that began before the window only the tail of symbols seen in it is: their missing
    seqs lie between a tick seen in the window and a record written in it.
    """

    def __init__(
        self,
        window_start_ns: int | None = None,
        window_end_ns: int | None = None,
        symbols: Iterable[str] | None = None,
    ) -> None:
        self.window_start_ns = window_start_ns
        self.malformed = 0
        self._sequences: dict[tuple[str, int], _SeenSequence] = {}
        self._claims = ClaimBook(window_start_ns, window_end_ns, symbols)
        self._checkpoint_topic_found = False

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

    def expect_checkpoints(self) -> None:
        """The checkpoint topic exists: report on checkpoints even if it holds none."""
        self._checkpoint_topic_found = True

    def observe_checkpoint(self, record: Checkpoint) -> None:
        """Account for one decoded checkpoint record."""
        self._checkpoint_topic_found = True
        self._claims.add(record)

    def observe_malformed_checkpoint(self) -> None:
        """Account for a checkpoint record that cannot be decoded: it fails the audit."""
        self._checkpoint_topic_found = True
        self._claims.add_malformed()

    def _leading_checked(self, epoch: int) -> bool:
        return self.window_start_ns is None or epoch >= self.window_start_ns

    def report(self) -> AuditReport:
        """The audit of everything observed so far, per (symbol, epoch) in sorted order."""
        claims_by_epoch = self._claims.epochs()
        audits = {}
        for (symbol, epoch), sequence in self._sequences.items():
            leading_checked = self._leading_checked(epoch)
            missing_ranges = sequence.missing_ranges(leading_checked)
            claims = claims_by_epoch.get(epoch)
            claimed = None if claims is None else claims.last_seq.get(symbol)
            if claimed is not None and claimed > sequence.ends[-1]:
                missing_ranges.append((sequence.ends[-1] + 1, claimed))
            audits[symbol, epoch] = SequenceAudit(
                symbol=symbol,
                epoch=epoch,
                count=sequence.count,
                first_seq=sequence.starts[0],
                last_seq=sequence.ends[-1],
                missing_ranges=tuple(missing_ranges),
                duplicates=sequence.duplicates,
                leading_checked=leading_checked,
                claimed_last_seq=claimed,
            )
        for epoch, claims in claims_by_epoch.items():
            if not self._leading_checked(epoch):
                continue  # which symbols to expect before the window is unknown
            for symbol, claimed in claims.last_seq.items():
                if (symbol, epoch) not in audits:
                    audits[symbol, epoch] = SequenceAudit(
                        symbol=symbol,
                        epoch=epoch,
                        count=0,
                        first_seq=0,
                        last_seq=0,
                        missing_ranges=((1, claimed),),
                        duplicates=0,
                        leading_checked=True,
                        claimed_last_seq=claimed,
                    )
        sequences = tuple(audits[key] for key in sorted(audits))
        epoch_audits = tuple(
            self._epoch_audit(claims, audits)
            for epoch, claims in sorted(claims_by_epoch.items())
            if claims.latest is not None
        )
        found = self._checkpoint_topic_found
        return AuditReport(
            sequences,
            malformed=self.malformed,
            epoch_audits=epoch_audits,
            checkpoints=self._claims.read if found else None,
            malformed_checkpoints=self._claims.malformed,
            epochs_without_checkpoints=tuple(
                sorted({epoch for _, epoch in self._sequences} - set(claims_by_epoch))
            )
            if found
            else (),
            windowed=self._claims.windowed,
        )

    def _epoch_audit(
        self, claims: EpochClaims, audits: Mapping[tuple[str, int], SequenceAudit]
    ) -> EpochAudit:
        assert claims.latest is not None
        missing = checked = 0
        for symbol, claimed in claims.last_seq.items():
            audit = audits.get((symbol, claims.epoch))
            if audit is None:
                continue  # not checkable in this window (see report)
            checked += 1
            missing += audit.missing_through(claimed)
        dropped = claims.dropped
        return EpochAudit(
            epoch=claims.epoch,
            instance=", ".join(sorted(claims.instances)),
            closed=claims.closed,
            last_checkpoint_ts=claims.latest.ts,
            ticks_written=claims.latest.ticks,
            symbols_claimed=checked,
            missing=missing,
            dropped=dropped,
            # In a window the drop count is the difference of two running counts that need not
            # fall on its edges: it is shown, but only an audit of everything fails on it.
            dropped_unlocated=0 if self._claims.windowed else max(dropped - missing, 0),
            tails_only=not self._leading_checked(claims.epoch),
        )
