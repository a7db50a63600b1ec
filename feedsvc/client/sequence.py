"""Per-symbol sequence checks of one publisher's ticks: the Gap, Restart and Duplicate events and
the `SequenceTracker` that tells them apart. No sockets."""

from __future__ import annotations

from typing import NamedTuple

from feedsvc.protocol.ticks import Tick


class Gap(NamedTuple):
    """Ticks of one symbol never received: seq jumped from expected_seq - 1 to received_seq.

    With gap recovery on, a gap is reported only when it could not be recovered:
    `recovery_tried` is then True and `recovery_error` says why (the service's error code, or
    timeout, hold_full, restart, bad_reply).
    """

    symbol: str
    epoch: int
    expected_seq: int
    received_seq: int
    missed: int
    recovery_tried: bool = False
    recovery_error: str | None = None


class Restart(NamedTuple):
    """The publisher restarted: every symbol's sequence starts again at 1 in new_epoch.

    `gap`: the tick that showed the restart was not its symbol's seq 1 (the ticks before it in
    the new epoch were missed), or None.
    """

    old_epoch: int
    new_epoch: int
    gap: Gap | None = None


class Duplicate(NamedTuple):
    """A tick at or behind the last seq of its symbol (duplicate or out of order); dropped."""

    symbol: str
    epoch: int
    last_seq: int
    received_seq: int


def _checked_int(name: str, value: object) -> int:
    # bool is an int subclass but never a seq or an epoch.
    if type(value) is not int:
        raise TypeError(f"{name} must be an integer, got {value!r}")
    return value


class SequenceTracker:
    """Follows the per-symbol seq of one publisher, or of several (shards), and says what each
    tick means.

    Each symbol is followed in the epoch of its own publisher, so a restart of one shard is a
    restart for that shard's symbols only. A symbol's first tick sets its baseline (no gap: the
    client joined a running feed), unless its epoch was entered by a restart: every seq starts
    again at 1 there, so a first tick with seq n > 1 means n - 1 missed ticks, reported as a
    gap like any other.

    A restart is known from a heartbeat (its shard name now has another epoch; an unnamed
    publisher, shard "", is the only one) or from a tick whose symbol was followed in another
    epoch. Epochs are compared for equality only, so a publisher whose epoch went backwards
    (clock change, replay) is followed, not ignored.
    """

    def __init__(self) -> None:
        self._epoch: int | None = None
        # symbol -> [epoch, last seq]: one dict lookup per tick finds and checks it.
        self._state_by_symbol: dict[str, list[int]] = {}
        self._epoch_by_shard: dict[str, int] = {}
        self._known_epochs: set[int] = set()
        # Epochs entered by a restart (every symbol expected from seq 1), and those they ended.
        self._restart_epochs: set[int] = set()
        self._ended_epochs: set[int] = set()
        # Whether heartbeats named their shard (None: no heartbeat yet). Only with one unnamed
        # publisher does a new epoch in a symbol's first tick mean that publisher restarted.
        self._named: bool | None = None

    @property
    def epoch(self) -> int | None:
        """The epoch entered last; None before the first tick or heartbeat. With one publisher,
        the epoch being followed."""
        return self._epoch

    @property
    def epoch_by_shard(self) -> dict[str, int]:
        """The epoch each publisher's heartbeats or snapshot named, by shard ("" = unnamed)."""
        return dict(self._epoch_by_shard)

    def follows(self, epoch: int) -> bool:
        """Whether `epoch` is a live one here: seen, and not ended by a restart."""
        return epoch in self._known_epochs and epoch not in self._ended_epochs

    def last_seq(self, symbol: str, epoch: int | None = None) -> int | None:
        """The last seq accepted for `symbol` in `epoch` (None: its publisher's live epoch), or
        None if there is none."""
        state = self._state_by_symbol.get(symbol)
        if state is None:
            return None
        if epoch is None:
            return None if state[0] in self._ended_epochs else state[1]
        return state[1] if state[0] == epoch else None

    def observe(self, tick: Tick) -> Gap | Restart | Duplicate | None:
        """Check one tick against its symbol's sequence.

        Returns
        -------
        None when the tick is the next in sequence (or the first of its symbol); a Gap or a
        Restart for a tick that is still to be delivered; a Duplicate for a tick to drop.

        Raises
        ------
        KeyError, TypeError
            when the tick has no sym/seq/epoch or they have the wrong type (state is unchanged).
        """
        state = self._state_by_symbol.get(tick["sym"])
        seq = tick["seq"]
        if state is not None and seq == state[1] + 1 and tick["epoch"] == state[0]:
            state[1] = seq
            return None
        return self._out_of_line(tick, state)

    def _out_of_line(self, tick: Tick, state: list[int] | None) -> Gap | Restart | Duplicate | None:
        symbol, seq = tick["sym"], _checked_int("seq", tick["seq"])
        epoch = _checked_int("epoch", tick["epoch"])
        if not isinstance(symbol, str):
            raise TypeError(f"sym must be a string, got {symbol!r}")
        if state is not None and state[0] == epoch:
            last_seq = state[1]
            if seq <= last_seq:
                return Duplicate(symbol, epoch, last_seq, seq)
            state[1] = seq
            return Gap(symbol, epoch, last_seq + 1, seq, seq - last_seq - 1)
        restart = None
        if epoch not in self._known_epochs:
            # A new epoch first seen in a tick: the restart of the symbol's publisher if the
            # symbol was followed in another epoch (or, with one unnamed publisher, the epoch
            # followed). Otherwise it may be another shard's: its heartbeat will tell.
            if state is not None:
                restart = self._enter(epoch, state[0])
            elif not self._known_epochs or self._named is False:
                restart = self._enter(epoch, self._epoch)
        if state is None:
            self._state_by_symbol[symbol] = [epoch, seq]
            gap = self._missed_from_first(symbol, epoch, seq)
        else:
            # Followed in another epoch: its publisher restarted, seqs start again at 1.
            state[0], state[1] = epoch, seq
            gap = Gap(symbol, epoch, 1, seq, seq - 1) if seq > 1 else None
        return gap if restart is None else restart._replace(gap=gap)

    def _enter(self, epoch: int, old_epoch: int | None) -> Restart | None:
        self._known_epochs.add(epoch)
        self._epoch = epoch
        if old_epoch is None or old_epoch == epoch:
            return None
        self._restart_epochs.add(epoch)
        self._ended_epochs.add(old_epoch)
        self._ended_epochs.discard(epoch)  # an epoch going back is followed again
        for shard, shard_epoch in self._epoch_by_shard.items():
            if shard_epoch == old_epoch:
                self._epoch_by_shard[shard] = epoch
        return Restart(old_epoch, epoch)

    def _missed_from_first(self, symbol: str, epoch: int, seq: int) -> Gap | None:
        """The gap before a symbol's first tick of an epoch entered by a restart."""
        if epoch in self._restart_epochs and seq > 1:
            return Gap(symbol, epoch, 1, seq, seq - 1)
        return None

    def skip(self, symbol: str, count: int, epoch: int | None = None) -> None:
        """`count` ticks of `symbol` after its last seq (in `epoch`, if given) were passed over
        unread on purpose (conflated): the next expected seq moves on by `count`, so they are
        not a gap."""
        state = self._state_by_symbol.get(symbol)
        if state is not None and (epoch is None or state[0] == epoch):
            state[1] += count

    def observe_epoch(self, epoch: int, shard: str = "") -> Restart | None:
        """Follow `epoch` of publisher `shard` (from a heartbeat or a snapshot); the shard's
        change of epoch is a Restart (or its tick was, already), its first epoch is not."""
        if self._epoch_by_shard.get(shard) == epoch:
            return None
        _checked_int("epoch", epoch)
        if not isinstance(shard, str):
            raise TypeError(f"shard must be a string, got {shard!r}")
        self._named = bool(shard) or bool(self._named)
        old_epoch = self._epoch_by_shard.get(shard)
        self._epoch_by_shard[shard] = epoch
        if epoch in self._known_epochs:
            return None  # a tick of it came first (and showed the restart, if it was one)
        if old_epoch is None and not shard and not self._named:
            old_epoch = self._epoch  # the one unnamed publisher, followed from its ticks so far
        return self._enter(epoch, old_epoch)

    def set_baseline(self, symbol: str, epoch: int, seq: int, shard: str = "") -> Restart | None:
        """Take `seq` as the last seq of `symbol` (e.g. from a snapshot): seq + 1 comes next.

        A snapshot from another epoch than the one `shard` was followed in switches to it like a
        heartbeat would, and the Restart is returned.
        """
        restart = self.observe_epoch(epoch, shard)
        self._state_by_symbol[symbol] = [epoch, _checked_int("seq", seq)]
        return restart
