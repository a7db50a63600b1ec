"""What the mirror's checkpoint records claim (`feedsvc.protocol.checkpoints`), per epoch:
`ClaimBook` collects the records a replay reads and keeps those its time window can use,
`EpochClaims` is one epoch's merged claims, `EpochAudit` what the audit found against them.

Pure: decoded records in, claims out; `feedsvc.replay.audit` holds the ticks they are checked
against.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from feedsvc.protocol.checkpoints import TYPE_CLOSE, Checkpoint
from feedsvc.replay.times import format_ns


@dataclass
class EpochClaims:
    """The checkpoint records of one epoch that a replay uses, merged."""

    epoch: int
    instances: set[str] = field(default_factory=set)
    last_seq: dict[str, int] = field(default_factory=dict)
    """Per symbol, the highest last seq any used record names (records carry deltas)."""
    latest: Checkpoint | None = None
    """The latest used record (by ts, then ticks written): the one the epoch is complete through."""
    closed: bool = False
    records: int = 0
    dropped_before: int = 0
    """The running drop count of the latest record before the window (0 without a window)."""

    def merge(self, record: Checkpoint, symbols: frozenset[str] | None) -> None:
        self.records += 1
        self.instances.add(record.instance)
        for symbol, seq in record.last_seq.items():
            if symbols is not None and symbol not in symbols:
                continue
            if seq > self.last_seq.get(symbol, 0):
                self.last_seq[symbol] = seq
        if self.latest is None or (record.ts, record.ticks) >= (self.latest.ts, self.latest.ticks):
            self.latest = record
        if record.type == TYPE_CLOSE:
            self.closed = True

    @property
    def dropped(self) -> int:
        """Ticks the service says it dropped before the mirror, up to the latest record (in the
        window: since the last record before it)."""
        if self.latest is None:
            return 0
        return max(self.latest.dropped - self.dropped_before, 0)


class ClaimBook:
    """Collects checkpoint records and keeps, per epoch, the claims a replay's window can use.

    Without a window every record is used. With ``--since``/``--until`` only records written
    inside it (``since <= ts < until``): a record claims ticks published before it was written,
    so ticks with ts before until; whether they are also after since is for `AuditVerifier` to
    decide per epoch.
    """

    def __init__(
        self,
        window_start_ns: int | None = None,
        window_end_ns: int | None = None,
        symbols: Iterable[str] | None = None,
    ) -> None:
        self.window_start_ns = window_start_ns
        self.window_end_ns = window_end_ns
        self.symbols = None if symbols is None else frozenset(symbols)
        self.read = 0
        self.malformed = 0
        self._epochs: dict[int, EpochClaims] = {}
        self._dropped_before: dict[int, tuple[int, int]] = {}

    @property
    def windowed(self) -> bool:
        return self.window_start_ns is not None or self.window_end_ns is not None

    def add(self, record: Checkpoint) -> None:
        """Account for one decoded record."""
        self.read += 1
        if self.window_end_ns is not None and record.ts >= self.window_end_ns:
            return
        if self.window_start_ns is not None and record.ts < self.window_start_ns:
            # Its drops happened before the window: they are not the window's to find.
            stamp = (record.ts, record.dropped)
            if stamp > self._dropped_before.get(record.epoch, (-1, 0)):
                self._dropped_before[record.epoch] = stamp
            return
        claims = self._epochs.get(record.epoch)
        if claims is None:
            claims = self._epochs[record.epoch] = EpochClaims(record.epoch)
        claims.merge(record, self.symbols)

    def add_malformed(self) -> None:
        """Account for a record that could not be decoded: it fails the audit, since the claims
        it held are unknown."""
        self.read += 1
        self.malformed += 1

    def epochs(self) -> dict[int, EpochClaims]:
        """The used claims per epoch."""
        for epoch, claims in self._epochs.items():
            claims.dropped_before = self._dropped_before.get(epoch, (0, 0))[1]
        return dict(self._epochs)


@dataclass(frozen=True)
class EpochAudit:
    """What one epoch's checkpoints claim and whether the ticks found meet the claims."""

    epoch: int
    instance: str
    closed: bool
    last_checkpoint_ts: int
    ticks_written: int
    """Ticks of the epoch the mirror had written up to its latest record."""
    symbols_claimed: int
    """Symbols whose claims could be checked."""
    missing: int
    """Ticks at or below a checked claim that are not in the tick topic."""
    dropped: int
    """Ticks the service says it dropped before handing them to the mirror."""
    dropped_unlocated: int
    """Dropped ticks the seq check cannot account for (at least this many are missing beyond
    what the symbol lines show); only counted without a time window."""
    tails_only: bool = False
    """The epoch began before the window: only the tails of symbols seen in it were checked."""

    @property
    def complete(self) -> bool:
        """Every tick published up to the latest checkpoint is in the tick topic."""
        return self.missing == 0 and self.dropped == 0

    def entry(self) -> dict[str, Any]:
        """The epoch in the JSON summary."""
        return {
            "epoch": self.epoch,
            "instance": self.instance,
            "last_checkpoint_ts": self.last_checkpoint_ts,
            "last_checkpoint_time": format_ns(self.last_checkpoint_ts),
            "complete_through_checkpoint": self.complete,
            "missing": self.missing,
            "dropped": self.dropped,
            "ticks_written": self.ticks_written,
        }

    def line(self) -> str:
        """One human-readable report line."""
        at = format_ns(self.last_checkpoint_ts)
        head = f"epoch {self.epoch} (started {format_ns(self.epoch)}), instance {self.instance}: "
        if self.closed:
            head += f"closed at {at} (a clean shutdown wrote its close record)"
            checked = (
                "every tick it names that the window can check is here"
                if self.tails_only
                else "every tick it published is here"
            )
            verdict = (
                f"complete: {checked}"
                if self.complete
                else "INCOMPLETE: ticks it published are missing"
            )
        else:
            head += "open (no close record: still running, or it stopped without a clean shutdown)"
            verdict = (
                f"complete through checkpoint at {at}"
                if self.complete
                else f"NOT complete through its last checkpoint at {at}"
            )
        details = [f"{self.symbols_claimed} symbols checked", f"{self.ticks_written} ticks written"]
        if self.tails_only:
            details.insert(0, "began before --since: only the ends of symbols seen in the window")
        if self.missing:
            details.append(f"{self.missing} claimed ticks missing, see the symbol lines")
        if self.dropped:
            located = (
                f", {self.dropped_unlocated} of them past the last seq a checkpoint names"
                if self.dropped_unlocated
                else ""
            )
            details.append(f"the service dropped {self.dropped} ticks before the mirror{located}")
        return f"{head}; {verdict} ({'; '.join(details)})"


def explanation(windowed: bool) -> list[str]:
    """What the checkpoint check did, in words for an auditor."""
    lines = [
        "checkpoints: with every Kafka transaction the mirror also writes a checkpoint naming, "
        "per symbol, the last seq published; a clean shutdown writes a close record naming "
        "every symbol's last seq. A tick at or below such a seq that is not in the tick topic "
        "is missing: this finds lost last ticks of a symbol and symbols with no tick at all.",
        "checkpoints: an epoch is closed when its close record is there, open otherwise (the "
        "service is still running, or it was killed): an open epoch is complete through its "
        "last checkpoint when every tick published up to it is here. Ticks published after "
        "the last checkpoint of an open epoch cannot be checked.",
    ]
    if windowed:
        lines.append(
            "checkpoints: with --since/--until only checkpoints written inside the window are "
            "used. For epochs that began before --since they check only the end of symbols "
            "that have ticks in the window (which earlier ticks to expect is unknown there); "
            "epochs that began inside the window are checked in full. An epoch closed after "
            "--until shows as open here."
        )
    return lines
