"""The hot path: give each tick its per-symbol seq, the epoch and the publish time, and send it.

One frame per tick (topic + b" " + JSON): pyzmq sends single frames several times faster than
multipart messages. Nothing here logs, locks or raises per tick.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import orjson

from feedsvc.ticks import HEARTBEAT_TOPIC, Tick, encode_frame, topic_prefix


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
    clock_ns:
        Source of the ``ts`` stamp, ns since the Unix epoch.
    mirror_append:
        Called with every frame sent (the Kafka mirror's hand-off list append), or None.
    """

    def __init__(
        self,
        send: Callable[[bytes], Any],
        epoch: int,
        max_symbols: int,
        clock_ns: Callable[[], int] = time.time_ns,
        mirror_append: Callable[[bytes], None] | None = None,
    ) -> None:
        self.epoch = epoch
        self.max_symbols = max_symbols
        self.published = 0
        self.published_bytes = 0
        self.refused_new_symbols = 0
        self._send = send
        self._clock_ns = clock_ns
        self._mirror_append = mirror_append
        # symbol -> [topic prefix, last seq, last frame]: one dict lookup per tick finds all; the
        # last frame is the last-value cache the sync handshake's snapshots come from.
        self._state_by_symbol: dict[str, list[Any]] = {}

    def publish(self, ticks: Sequence[Tick]) -> int:
        """Stamp and send a batch of valid ticks; returns how many were sent."""
        get_state = self._state_by_symbol.get
        send, clock_ns, dumps, epoch = self._send, self._clock_ns, orjson.dumps, self.epoch
        mirror_append = self._mirror_append
        refused = 0
        frame_bytes = 0
        for tick in ticks:
            state = get_state(tick["sym"])
            if state is None:
                state = self._add_symbol(tick["sym"])
                if state is None:
                    refused += 1
                    continue
            state[1] = seq = state[1] + 1
            tick["seq"] = seq
            tick["epoch"] = epoch
            tick["ts"] = clock_ns()
            state[2] = frame = state[0] + dumps(tick)
            send(frame)
            frame_bytes += len(frame)
            if mirror_append is not None:
                mirror_append(frame)
        sent = len(ticks) - refused
        self.published += sent
        self.published_bytes += frame_bytes
        return sent

    def _add_symbol(self, symbol: str) -> list[Any] | None:
        if len(self._state_by_symbol) >= self.max_symbols:
            self.refused_new_symbols += 1
            return None
        state = [topic_prefix(symbol), 0, None]
        self._state_by_symbol[symbol] = state
        return state

    def send_heartbeat(self, interval_s: float) -> None:
        """Send a heartbeat on the reserved topic: clients tell a quiet market from a dead feed."""
        heartbeat = {"epoch": self.epoch, "ts": self._clock_ns(), "interval_s": interval_s}
        self._send(encode_frame(HEARTBEAT_TOPIC, heartbeat))

    def last_seq(self, symbol: str) -> int:
        """The last seq sent for `symbol` in this epoch (0 if none)."""
        state = self._state_by_symbol.get(symbol)
        return 0 if state is None else state[1]

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
            if state is None:
                values[symbol] = (0, None)
            else:
                values[symbol] = (state[1], state[2][len(state[0]) :])
        return values

    @property
    def symbol_count(self) -> int:
        return len(self._state_by_symbol)
