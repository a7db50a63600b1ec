"""The client's gap recovery (docs/recovery-protocol.md), without sockets: `GapFiller` holds a
symbol's ticks from its first gap on, asks the service for the missing range, and releases the
recovered ticks and the held ones in seq order, with what could not be recovered reported as
gaps at their place. Every other symbol is delivered live meanwhile.

One request per symbol is in flight at a time, covering every range of it still missing (ticks
already held inside that span are replaced by the identical recovered ones): gaps that come in
a burst cost one request, not one each. A request without a reply is sent again, Lazy Pirate
style, after `timeout_s`, at most `attempts` times; the service's retryable errors wait the
time it names. The caller owns the DEALER socket: it passes each reply in and sends what
`take_requests()` returns.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from feedsvc.client.sequence import Gap
from feedsvc.protocol.recovery import (
    ERROR_NOT_IN_WINDOW,
    ERROR_RANGE_TOO_LARGE,
    OP_RECOVER,
    RETRYABLE_ERRORS,
)
from feedsvc.protocol.ticks import Tick

DEFAULT_RECOVERY_TIMEOUT_S: Final = 1.0
DEFAULT_RECOVERY_ATTEMPTS: Final = 3
# Ticks held per symbol while it is recovered at most; beyond, recovery of it is given up.
DEFAULT_RECOVERY_HOLD_TICKS: Final = 100_000
# The service's default recovery.max_ticks_per_request; a range_too_large reply corrects it.
DEFAULT_MAX_TICKS_PER_REQUEST: Final = 10_000
# Reasons a gap was not recovered, besides the service's error codes (Gap.recovery_error).
GAVE_UP_TIMEOUT: Final = "timeout"
GAVE_UP_HOLD_FULL: Final = "hold_full"
GAVE_UP_RESTART: Final = "restart"
GAVE_UP_CLOSED: Final = "closed"
GAVE_UP_BAD_REPLY: Final = "bad_reply"
TICK_SEPARATOR: Final = b"\n"


@dataclass
class _Request:
    request_id: str
    first: int
    last: int
    attempts: int = 0
    # When to send it (again): now, after a timeout, or after the service's retry_after_ms.
    send_at: float = 0.0
    sent: bool = False


@dataclass
class _SymbolRecovery:
    symbol: str
    epoch: int
    started_at: float
    # Disjoint, ascending [first, last] ranges still missing.
    missing: list[list[int]] = field(default_factory=list)
    # Held and recovered ticks by seq.
    ticks: dict[int, Tick] = field(default_factory=dict)
    # Ranges given up, as the gaps to report at their place.
    failed: list[Gap] = field(default_factory=list)
    request: _Request | None = None
    recovered: int = 0


@dataclass(slots=True)
class RecoveryStats:
    """What recovery did: requests sent, ticks recovered, gaps it could not fill, and how long
    recoveries took (first gap of a symbol to its release)."""

    requests: int = 0
    recovered: int = 0
    unrecoverable_gaps: int = 0
    unrecoverable_ticks: int = 0
    recoveries: int = 0
    latency_total_s: float = 0.0
    latency_max_s: float = 0.0


class GapFiller:
    """Recovers the gaps of the symbols it is given; see the module's description.

    Parameters
    ----------
    timeout_s, attempts:
        Each request waits this long for its reply; after this many sends the range is given up.
    hold_ticks:
        Ticks held per symbol at most while it is recovered.
    decode:
        Frame -> tick, as the subscriber decodes broadcast frames (raises on a malformed one).
    clock:
        Monotonic seconds.
    """

    def __init__(
        self,
        decode: Callable[[bytes], Tick],
        timeout_s: float = DEFAULT_RECOVERY_TIMEOUT_S,
        attempts: int = DEFAULT_RECOVERY_ATTEMPTS,
        hold_ticks: int = DEFAULT_RECOVERY_HOLD_TICKS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.timeout_s = timeout_s
        self.attempts = attempts
        self.hold_ticks = hold_ticks
        self.max_ticks_per_request = DEFAULT_MAX_TICKS_PER_REQUEST
        self.stats = RecoveryStats()
        self._decode = decode
        self._clock = clock
        # Symbols being recovered; the subscriber holds their in-line ticks (one lookup).
        self.recovering: dict[str, _SymbolRecovery] = {}
        self._by_request: dict[str, _SymbolRecovery] = {}
        self._request_ids = itertools.count(1)
        # What is released, in order: ("tick", tick) or ("gap", Gap).
        self.released: list[tuple[str, Any]] = []

    # -- input from the subscriber ----------------------------------------------------------

    def start(self, gap: Gap, tick: Tick) -> None:
        """`tick` came after `gap`: hold it and recover the gap."""
        state = self.recovering.get(gap.symbol)
        if state is None:
            state = _SymbolRecovery(gap.symbol, gap.epoch, self._clock())
            self.recovering[gap.symbol] = state
        state.missing.append([gap.expected_seq, gap.received_seq - 1])
        self.hold(state, tick)

    def hold(self, state: _SymbolRecovery, tick: Tick) -> None:
        """An in-line tick of a symbol being recovered: held until the gap before it is filled."""
        state.ticks[tick["seq"]] = tick
        if len(state.ticks) > self.hold_ticks:
            self._give_up(state, GAVE_UP_HOLD_FULL)
        elif state.request is None:
            self._next_request(state)

    def give_up_all(self, reason: str, epoch: int | None = None) -> None:
        """Release every symbol now (a close), or those recovered in `epoch` (its publisher
        restarted): what is missing is reported."""
        for state in list(self.recovering.values()):
            if epoch is None or state.epoch == epoch:
                self._give_up(state, reason)

    def take_requests(self, now: float) -> Iterator[bytes]:
        """The requests to send now (new ones, Lazy Pirate re-sends); gives up ranges whose
        attempts are spent."""
        for state in list(self.recovering.values()):
            request = state.request
            if request is None or now < request.send_at:
                continue
            if request.sent and request.attempts >= self.attempts:
                self._give_up(state, GAVE_UP_TIMEOUT)
                continue
            request.attempts += 1
            request.sent = True
            request.send_at = now + self.timeout_s
            # A new id for every send: a late reply to an earlier one is told apart (ignored).
            self._by_request.pop(request.request_id, None)
            request.request_id = self._new_request_id(state.symbol)
            self._by_request[request.request_id] = state
            self.stats.requests += 1
            yield orjson.dumps(
                {
                    "op": OP_RECOVER,
                    "id": request.request_id,
                    "symbol": state.symbol,
                    "epoch": state.epoch,
                    "first": request.first,
                    "last": request.last,
                }
            )

    def next_due_at(self) -> float | None:
        """When take_requests() has something to do next (None: nothing is waiting)."""
        due = [s.request.send_at for s in self.recovering.values() if s.request is not None]
        return min(due) if due else None

    def on_reply(self, parts: list[bytes]) -> None:
        """A reply from the service: [header] or [header, body frame, ...]. Unknown or stale
        ids (a reply to a request sent again) are ignored."""
        try:
            header = orjson.loads(parts[0])
            request_id = header["id"]
        except (ValueError, KeyError, TypeError, IndexError):
            return
        state = self._by_request.pop(request_id, None) if isinstance(request_id, str) else None
        if state is None or state.request is None or state.request.request_id != request_id:
            return
        request, state.request = state.request, None
        if header.get("ok") is True and len(parts) >= 2:
            self._apply_ticks(state, request, header, parts[1:])
        else:
            self._apply_error(state, request, header)
        if self.recovering.get(state.symbol) is state and state.request is None:
            self._next_request(state)

    # -- the work -------------------------------------------------------------------------

    def _apply_ticks(
        self,
        state: _SymbolRecovery,
        request: _Request,
        header: dict[str, Any],
        body: list[bytes],
    ) -> None:
        last = header.get("last")
        # One or more body frames, each whole tick frames joined by TICK_SEPARATOR.
        frames = [frame for part in body for frame in part.split(TICK_SEPARATOR)]
        if type(last) is not int or not request.first <= last <= request.last:
            self._give_up(state, GAVE_UP_BAD_REPLY)
            return
        if len(frames) != last - request.first + 1:
            self._give_up(state, GAVE_UP_BAD_REPLY)
            return
        recovered: dict[int, Tick] = {}
        for seq, frame in enumerate(frames, request.first):
            try:
                tick = self._decode(frame)
                valid = tick["sym"] == state.symbol and tick["seq"] == seq
                valid = valid and tick["epoch"] == state.epoch
            except (ValueError, KeyError, TypeError):
                valid = False
            if not valid:
                self._give_up(state, GAVE_UP_BAD_REPLY)
                return
            recovered[seq] = tick
        filled = sum(1 for seq in recovered if seq not in state.ticks)
        state.ticks.update(recovered)
        state.recovered += filled
        self.stats.recovered += filled
        self._remove_missing(state, request.first, last)

    def _apply_error(
        self, state: _SymbolRecovery, request: _Request, header: dict[str, Any]
    ) -> None:
        error = header.get("error")
        error = error if isinstance(error, str) else GAVE_UP_BAD_REPLY
        if error in RETRYABLE_ERRORS and request.attempts < self.attempts:
            retry_after_ms = header.get("retry_after_ms")
            wait_s = retry_after_ms / 1000 if type(retry_after_ms) is int else self.timeout_s
            request.send_at = self._clock() + min(max(wait_s, 0.001), self.timeout_s * 10)
            request.sent = False
            state.request = request
            self._by_request[request.request_id] = state
            return
        if error == ERROR_RANGE_TOO_LARGE and type(header.get("max_ticks")) is int:
            max_ticks = header["max_ticks"]
            if 0 < max_ticks < self.max_ticks_per_request:
                self.max_ticks_per_request = max_ticks
                return  # the next request is smaller
        oldest = header.get("oldest")
        if error == ERROR_NOT_IN_WINDOW and type(oldest) is int and request.first < oldest:
            # What is still held is asked for again; the older part is lost.
            self._fail_range(state, request.first, min(oldest - 1, request.last), error)
            return
        self._fail_range(state, request.first, request.last, error)

    def _next_request(self, state: _SymbolRecovery) -> None:
        """Ask for the span of what is still missing, or release the symbol when nothing is."""
        if not state.missing:
            self._release(state)
            return
        first = state.missing[0][0]
        last = min(state.missing[-1][1], first + self.max_ticks_per_request - 1)
        request = _Request(self._new_request_id(state.symbol), first, last)
        request.send_at = self._clock()
        state.request = request
        self._by_request[request.request_id] = state

    def _new_request_id(self, symbol: str) -> str:
        return f"{symbol[:40]}.{next(self._request_ids)}"

    def _remove_missing(self, state: _SymbolRecovery, first: int, last: int) -> None:
        kept: list[list[int]] = []
        for low, high in state.missing:
            if high < first or low > last:
                kept.append([low, high])
                continue
            if low < first:
                kept.append([low, first - 1])
            if high > last:
                kept.append([last + 1, high])
        state.missing = kept

    def _fail_range(self, state: _SymbolRecovery, first: int, last: int, reason: str) -> None:
        for low, high in state.missing:
            low, high = max(low, first), min(high, last)
            if low <= high:
                state.failed.append(
                    Gap(state.symbol, state.epoch, low, high + 1, high - low + 1, True, reason)
                )
        self._remove_missing(state, first, last)

    def _give_up(self, state: _SymbolRecovery, reason: str) -> None:
        if state.request is not None:
            self._by_request.pop(state.request.request_id, None)
            state.request = None
        for low, high in list(state.missing):
            self._fail_range(state, low, high, reason)
        self._release(state)

    def _release(self, state: _SymbolRecovery) -> None:
        """Everything of the symbol is known: its ticks in seq order, each failed gap before
        the tick that follows it."""
        del self.recovering[state.symbol]
        events: list[tuple[int, int, Any]] = [(gap.expected_seq, 0, gap) for gap in state.failed]
        events += [(seq, 1, tick) for seq, tick in state.ticks.items()]
        events.sort(key=lambda event: (event[0], event[1]))
        released = self.released
        for _seq, kind, item in events:
            released.append(("gap", item) if kind == 0 else ("tick", item))
        stats = self.stats
        stats.unrecoverable_gaps += len(state.failed)
        stats.unrecoverable_ticks += sum(gap.missed for gap in state.failed)
        latency = self._clock() - state.started_at
        stats.recoveries += 1
        stats.latency_total_s += latency
        stats.latency_max_s = max(stats.latency_max_s, latency)
