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
    """Follows the per-symbol seq of one publisher and says what each tick means.

    In the first epoch followed, the first tick of a symbol sets its baseline (no gap: the client
    joined a running feed and nothing was expected yet). A tick or heartbeat whose epoch differs
    from the current one is a publisher restart: every seq starts again at 1, so from then on
    the first tick of a symbol with seq n > 1 means n - 1 missed ticks, reported as a gap like
    any other. Epochs are compared for equality only, so a publisher whose epoch went backwards
    (clock change, replay) is followed, not ignored.
    """

    def __init__(self) -> None:
        self._epoch: int | None = None
        # The current epoch was entered by a restart: every symbol is expected from seq 1.
        self._from_first_seq = False
        # symbol -> [last seq]: one dict lookup per tick finds and updates it.
        self._last_seq_by_symbol: dict[str, list[int]] = {}

    @property
    def epoch(self) -> int | None:
        """The epoch being followed; None before the first tick or heartbeat."""
        return self._epoch

    def last_seq(self, symbol: str) -> int | None:
        """The last seq accepted for `symbol` in the current epoch, None if there is none."""
        state = self._last_seq_by_symbol.get(symbol)
        return None if state is None else state[0]

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
        if tick["epoch"] != self._epoch:
            return self._start_epoch(tick)
        state = self._last_seq_by_symbol.get(tick["sym"])
        seq = tick["seq"]
        if state is not None and seq == state[0] + 1:
            state[0] = seq
            return None
        return self._out_of_line(tick, state)

    def _out_of_line(self, tick: Tick, state: list[int] | None) -> Gap | Duplicate | None:
        symbol, seq = tick["sym"], _checked_int("seq", tick["seq"])
        if state is None:
            if not isinstance(symbol, str):
                raise TypeError(f"sym must be a string, got {symbol!r}")
            self._last_seq_by_symbol[symbol] = [seq]
            return self._missed_from_first(symbol, tick["epoch"], seq)
        last_seq = state[0]
        if seq <= last_seq:
            return Duplicate(symbol, tick["epoch"], last_seq, seq)
        state[0] = seq
        return Gap(symbol, tick["epoch"], last_seq + 1, seq, seq - last_seq - 1)

    def _start_epoch(self, tick: Tick) -> Restart | None:
        symbol, seq = tick["sym"], _checked_int("seq", tick["seq"])
        if not isinstance(symbol, str):
            raise TypeError(f"sym must be a string, got {symbol!r}")
        restart = self.observe_epoch(tick["epoch"])
        self._last_seq_by_symbol[symbol] = [seq]
        if restart is None:
            return None
        return restart._replace(gap=self._missed_from_first(symbol, tick["epoch"], seq))

    def _missed_from_first(self, symbol: str, epoch: int, seq: int) -> Gap | None:
        """The gap before a symbol's first tick of an epoch entered by a restart."""
        if self._from_first_seq and seq > 1:
            return Gap(symbol, epoch, 1, seq, seq - 1)
        return None

    def skip(self, symbol: str, count: int) -> None:
        """`count` ticks of `symbol` after its last seq were passed over unread on purpose
        (conflated): the next expected seq moves on by `count`, so they are not a gap."""
        state = self._last_seq_by_symbol.get(symbol)
        if state is not None:
            state[0] += count

    def observe_epoch(self, epoch: int) -> Restart | None:
        """Follow `epoch` (from a tick or a heartbeat); a change is a Restart, the first is not."""
        if epoch == self._epoch:
            return None
        _checked_int("epoch", epoch)
        old_epoch, self._epoch = self._epoch, epoch
        self._last_seq_by_symbol.clear()
        self._from_first_seq = old_epoch is not None
        return None if old_epoch is None else Restart(old_epoch, epoch)

    def set_baseline(self, symbol: str, epoch: int, seq: int) -> Restart | None:
        """Take `seq` as the last seq of `symbol` (e.g. from a snapshot): seq + 1 comes next.

        A snapshot from another epoch than the one followed switches to it like a tick would, and
        the Restart is returned.
        """
        restart = self.observe_epoch(epoch)
        self._last_seq_by_symbol[symbol] = [_checked_int("seq", seq)]
        return restart
