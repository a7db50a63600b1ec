"""The hot path: give each tick its per-symbol seq, the epoch and the publish time, and send it.

One frame per tick (topic + b" " + JSON): pyzmq sends single frames several times faster than
multipart messages. Nothing here logs, locks or raises per tick.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

import orjson

from feedsvc.protocol.ticks import (
    HEARTBEAT_TOPIC,
    REJECT_CACHE_FULL,
    REJECT_INTERNAL_ERROR,
    REJECT_TOO_LARGE,
    REJECT_TOO_MANY_SYMBOLS,
    Tick,
    encode_frame,
    topic_prefix,
)
from feedsvc.server.recovery.window import RecoveryWindow

# Unbounded defaults for callers (tests, tools) that do not bound the cache themselves.
UNBOUNDED: Final = 2**62
# A symbol's cache reservation grows by a quarter more than its largest frame so far, so frames
# that vary by a few bytes do not take the slow path on every tick.
_RESERVE_HEADROOM: Final = 4
_MIN_RESERVATION: Final = 128


class Publisher:
    """Sequences, stamps and sends ticks on one PUB socket (already bound by the service).

    Parameters
    ----------
    send:
        The PUB socket's bound ``send`` method; called with one bytes frame per tick.
    epoch:
        This run's epoch, stamped on every tick.
    max_symbols:
        Ticks for new symbols beyond this many are refused (bounds per-symbol memory).
    max_tick_bytes:
        A tick whose frame would be longer is refused (reason ``too_large``).
    max_cache_bytes:
        The last-value cache holds at most this many bytes: a tick that would need more is
        refused (reason ``cache_full``). Each symbol reserves room for its largest frame so far.
    clock_ns:
        Source of the ``ts`` stamp, ns since the Unix epoch.
    mirror_append:
        Called with every frame sent (the Kafka mirror's hand-off list append), or None.
    window:
        The recovery window every frame sent is kept in (its symbol's deque), or None.
    """

    def __init__(
        self,
        send: Callable[[bytes], Any],
        epoch: int,
        max_symbols: int,
        clock_ns: Callable[[], int] = time.time_ns,
        mirror_append: Callable[[bytes], None] | None = None,
        max_tick_bytes: int = UNBOUNDED,
        max_cache_bytes: int = UNBOUNDED,
        window: RecoveryWindow | None = None,
        shard: str = "",
    ) -> None:
        self.epoch = epoch
        self.shard = shard
        self.max_symbols = max_symbols
        self.max_tick_bytes = max_tick_bytes
        self.max_cache_bytes = max_cache_bytes
        self.published = 0
        self.published_bytes = 0
        # Bytes the last-value cache has reserved (each symbol: its largest frame, plus headroom).
        self.cache_bytes = 0
        self.refused_by_reason: dict[str, int] = dict.fromkeys(
            (REJECT_TOO_MANY_SYMBOLS, REJECT_TOO_LARGE, REJECT_CACHE_FULL, REJECT_INTERNAL_ERROR), 0
        )
        self._send = send
        self._clock_ns = clock_ns
        self._mirror_append = mirror_append
        self._window = window
        # symbol -> [topic prefix, last seq, last frame, bytes reserved for it, the recovery
        # window's append or None]: one dict lookup per tick finds all; the last frame is the
        # last-value cache the sync handshake's snapshots come from.
        self._state_by_symbol: dict[str, list[Any]] = {}

    def publish(self, ticks: Sequence[Tick]) -> int:
        """Stamp and send a batch of valid ticks; returns how many were sent.

        A tick that cannot be sent (a new symbol beyond max_symbols, a frame over max_tick_bytes
        or a full cache, or one orjson cannot encode) is refused and counted by reason; its seq
        is not used, so subscribers see no gap for it.
        """
        get_state = self._state_by_symbol.get
        send, clock_ns, dumps, epoch = self._send, self._clock_ns, orjson.dumps, self.epoch
        mirror_append = self._mirror_append
        recording = self._window is not None
        sent = 0
        frame_bytes = 0
        for tick in ticks:
            state = get_state(tick["sym"])
            if state is None:
                state = self._add_symbol(tick["sym"])
                if state is None:
                    continue
            seq = state[1] + 1
            tick["seq"] = seq
            tick["epoch"] = epoch
            tick["ts"] = clock_ns()
            # A try block costs nothing until it raises (Python 3.11+).
            try:
                frame = state[0] + dumps(tick)
            except TypeError:  # orjson.JSONEncodeError is a TypeError
                self.refused_by_reason[REJECT_INTERNAL_ERROR] += 1
                continue
            size = len(frame)
            # One comparison per tick: a reservation never exceeds max_tick_bytes.
            if size > state[3] and not self._reserve(state, size):
                continue
            state[1] = seq
            state[2] = frame
            send(frame)
            if recording:
                state[4](frame)
            sent += 1
            frame_bytes += size
            if mirror_append is not None:
                mirror_append(frame)
        self.published += sent
        self.published_bytes += frame_bytes
        return sent

    def _reserve(self, state: list[Any], size: int) -> bool:
        """Grow a symbol's cache reservation to hold a frame of `size` bytes, within the bounds."""
        if size > self.max_tick_bytes:
            self.refused_by_reason[REJECT_TOO_LARGE] += 1
            return False
        reservation = min(
            self.max_tick_bytes, max(size + size // _RESERVE_HEADROOM, _MIN_RESERVATION)
        )
        if self.cache_bytes + reservation - state[3] > self.max_cache_bytes:
            reservation = size  # without headroom, the last bytes of the cache can still be used
            if self.cache_bytes + reservation - state[3] > self.max_cache_bytes:
                self.refused_by_reason[REJECT_CACHE_FULL] += 1
                return False
        self.cache_bytes += reservation - state[3]
        state[3] = reservation
        return True

    def _add_symbol(self, symbol: str) -> list[Any] | None:
        if len(self._state_by_symbol) >= self.max_symbols:
            self.refused_by_reason[REJECT_TOO_MANY_SYMBOLS] += 1
            return None
        window = self._window
        state = [topic_prefix(symbol), 0, None, 0, window.track(symbol) if window else None]
        self._state_by_symbol[symbol] = state
        return state

    @property
    def refused_new_symbols(self) -> int:
        return self.refused_by_reason[REJECT_TOO_MANY_SYMBOLS]

    def send_heartbeat(self, interval_s: float) -> None:
        """Send a heartbeat on the reserved topic: clients tell a quiet market from a dead feed."""
        heartbeat = {
            "epoch": self.epoch,
            "ts": self._clock_ns(),
            "interval_s": interval_s,
            "shard": self.shard,
        }
        self._send(encode_frame(HEARTBEAT_TOPIC, heartbeat))

    def send_control(self, frame: bytes) -> None:
        """Send a control frame (a reserved "_" topic) on the PUB socket, in line with ticks."""
        self._send(frame)

    def last_values(self, symbols: Iterable[str] | None) -> dict[str, tuple[int, bytes | None]]:
        """Per symbol (None = every symbol seen) the last seq and last payload as broadcast;
        (0, None) for a symbol not seen in this epoch."""
        state_by_symbol = self._state_by_symbol
        wanted = state_by_symbol.keys() if symbols is None else symbols
        values: dict[str, tuple[int, bytes | None]] = {}
        for symbol in wanted:
            state = state_by_symbol.get(symbol)
            if state is None or state[2] is None:  # unseen, or its only ticks were refused
                values[symbol] = (0, None)
            else:
                values[symbol] = (state[1], state[2][len(state[0]) :])
        return values

    @property
    def symbol_count(self) -> int:
        return len(self._state_by_symbol)
