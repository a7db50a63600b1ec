"""The recovery window, filled through a real Publisher as the hot path fills it: frames come back
byte for byte in seq order, and age, size and per-pass work stay within their bounds (a fake
clock, no sleeping)."""

from __future__ import annotations

import itertools
from typing import Any

from feedsvc.server.publisher import Publisher
from feedsvc.server.recovery.window import (
    MARK_INTERVAL_S,
    MARK_SYMBOLS_PER_PASS,
    TRIM_AGAIN_S,
    TRIM_CHECK_S,
    TRIM_FRAMES_PER_PASS,
    Lookup,
    RecoveryWindow,
)

EPOCH = 1_795_427_742_012_345_678
WINDOW_S = 10.0
START = 1_000.0
UNLIMITED_BYTES = 1 << 40


def what_is_held(lookup: Lookup) -> tuple[list[bytes] | None, int | None, int | None]:
    """(frames, oldest, latest) of a lookup."""
    return lookup.frames, lookup.oldest, lookup.latest


class Rig:
    """A Publisher whose socket is a list, with a RecoveryWindow on a fake clock; `run_until`
    calls trim() whenever the clock reaches trim_due_at, as the service's loop does."""

    def __init__(self, window_s: float = WINDOW_S, max_bytes: int = UNLIMITED_BYTES) -> None:
        self.now = START
        self.sent: list[bytes] = []
        self.trim_calls = 0
        holder: list[Publisher] = []
        self.window = RecoveryWindow(
            window_s,
            max_bytes,
            published_bytes=lambda: holder[0].published_bytes if holder else 0,
            clock=lambda: self.now,
        )
        self.publisher = Publisher(
            self.sent.append,
            EPOCH,
            max_symbols=100_000,
            clock_ns=itertools.count(1).__next__,
            window=self.window,
        )
        holder.append(self.publisher)

    def publish(self, symbol: str, count: int = 1, **extra: Any) -> list[bytes]:
        """Publish `count` ticks of `symbol`; returns their frames as sent."""
        before = len(self.sent)
        ticks = [
            {"sym": symbol, "bid": 1.0, "ask": 1.1, "bid_size": 1, "ask_size": 1, **extra}
            for _ in range(count)
        ]
        assert self.publisher.publish(ticks) == count
        return self.sent[before:]

    def trim(self, at: float) -> None:
        self.now = at
        self.window.trim(at)
        self.trim_calls += 1

    def run_until(self, at: float, step: float = 0.005) -> None:
        """Advance the clock to `at` in steps, trimming whenever the window asks to be."""
        while self.now < at:
            self.now = min(at, self.now + step)
            if self.now >= self.window.trim_due_at:
                self.trim(self.now)

    def held_by_lookup(self, symbol: str) -> list[bytes]:
        """Every frame of `symbol` still held, through lookup()."""
        lookup = self.window.lookup(symbol, 1, 1)
        oldest, latest = lookup.oldest, lookup.latest
        if oldest is None or latest is None:
            return []
        frames = self.window.lookup(symbol, oldest, latest).frames
        assert frames is not None
        return frames


def _frames_of(sent: list[bytes], symbol: str) -> list[bytes]:
    prefix = symbol.encode() + b" "
    return [frame for frame in sent if frame.startswith(prefix)]


def test_a_range_comes_back_byte_identical_in_seq_order() -> None:
    rig = Rig()
    for _ in range(4):
        rig.publish("AAPL", 2)
        rig.publish("MSFT")
    aapl = _frames_of(rig.sent, "AAPL")
    assert len(aapl) == 8
    lookup = rig.window.lookup("AAPL", 3, 6)
    assert lookup.frames == aapl[2:6]
    assert (lookup.oldest, lookup.latest) == (1, 8)
    assert rig.window.lookup("AAPL", 1, 8).frames == aapl
    assert rig.window.lookup("MSFT", 4, 4).frames == [_frames_of(rig.sent, "MSFT")[3]]
    assert rig.window.symbol_count == 2
    # What is held is what was sent, to the byte.
    assert rig.window.held_bytes == sum(map(len, rig.sent)) == rig.publisher.published_bytes


def test_a_range_of_an_unknown_symbol_or_past_the_latest_seq_has_no_frames() -> None:
    rig = Rig()
    rig.publish("AAPL", 3)
    assert what_is_held(rig.window.lookup("AAPL", 2, 4)) == (None, 1, 3)
    assert what_is_held(rig.window.lookup("NOPE", 1, 1)) == (None, None, None)


def test_frames_are_kept_window_s_and_dropped_about_a_mark_interval_later() -> None:
    rig = Rig()
    old = rig.publish("AAPL", 5)
    rig.run_until(START + 2 * MARK_INTERVAL_S)
    young = rig.publish("AAPL", 5)
    # Held at least window_s: nothing has gone yet when the first frames are window_s old.
    rig.run_until(START + WINDOW_S)
    assert rig.window.lookup("AAPL", 1, 10).frames == old + young
    assert rig.window.trimmed_frames == 0
    # Past window_s plus a mark interval, the old frames are gone and the young ones held.
    rig.run_until(START + WINDOW_S + MARK_INTERVAL_S + 0.1)
    assert rig.window.lookup("AAPL", 6, 10).frames == young
    assert rig.window.trimmed_frames == 5
    assert rig.window.held_bytes == sum(map(len, young))
    assert rig.window.oldest_mark_age_s(rig.now) <= WINDOW_S
    # Later ones go too, once they are as old.
    rig.run_until(START + 2 * MARK_INTERVAL_S + WINDOW_S + MARK_INTERVAL_S + 0.1)
    assert what_is_held(rig.window.lookup("AAPL", 6, 6)) == (None, None, 10)
    assert rig.window.held_bytes == 0


def test_a_range_partly_trimmed_returns_no_frames_with_oldest_and_latest() -> None:
    rig = Rig()
    rig.publish("AAPL", 5)
    rig.run_until(START + 2 * MARK_INTERVAL_S)
    young = rig.publish("AAPL", 5)
    rig.run_until(START + WINDOW_S + MARK_INTERVAL_S + 0.1)
    assert what_is_held(rig.window.lookup("AAPL", 3, 7)) == (None, 6, 10)
    assert what_is_held(rig.window.lookup("AAPL", 5, 5)) == (None, 6, 10)
    assert rig.window.lookup("AAPL", 6, 7).frames == young[:2]
    # Seqs go on where they stopped: the next frame is held as seq 11.
    [frame] = rig.publish("AAPL")
    assert rig.window.lookup("AAPL", 10, 11).frames == [young[-1], frame]


def test_trimming_by_max_bytes_keeps_the_held_bytes_at_or_under_the_bound() -> None:
    max_bytes = 65_536
    rig = Rig(window_s=3_600.0, max_bytes=max_bytes)
    symbols = [f"S{index}" for index in range(8)]
    for _ in range(300):
        for symbol in symbols:
            rig.publish(symbol, 2, note="x" * 40)
        rig.run_until(rig.now + 0.02)
    assert rig.publisher.published_bytes > 10 * max_bytes
    # Enough trim calls after the last tick (the window may overshoot for up to TRIM_CHECK_S).
    rig.run_until(rig.now + 2 * MARK_INTERVAL_S)
    assert 0 < rig.window.held_bytes <= max_bytes
    assert rig.window.trimmed_frames > 0
    held = {symbol: rig.held_by_lookup(symbol) for symbol in symbols}
    # held_bytes (the metric) is what the deques really hold, and each symbol keeps its newest.
    assert sum(len(frame) for frames in held.values() for frame in frames) == (
        rig.window.held_bytes
    )
    for symbol, frames in held.items():
        sent = _frames_of(rig.sent, symbol)
        assert frames == sent[len(sent) - len(frames) :], symbol


def test_max_bytes_is_kept_even_when_every_frame_is_younger_than_the_marks() -> None:
    max_bytes = 100_000
    rig = Rig(window_s=3_600.0, max_bytes=max_bytes)
    rig.run_until(START + MARK_INTERVAL_S + 0.5)
    # A burst right after a mark pass: no mark covers these frames yet.
    for index in range(40):
        rig.publish(f"S{index}", 50)
    assert rig.window.held_bytes > 2 * max_bytes
    rig.run_until(rig.now + MARK_INTERVAL_S + 4 * TRIM_CHECK_S)
    assert 0 < rig.window.held_bytes <= max_bytes


def test_trim_work_per_call_is_bounded_and_asks_to_be_called_again_soon() -> None:
    total = TRIM_FRAMES_PER_PASS + 5_000
    rig = Rig()
    rig.publish("AAPL", total)
    rig.trim(START + MARK_INTERVAL_S)
    rig.now = START + MARK_INTERVAL_S + WINDOW_S + 0.5
    rig.trim(rig.now)
    assert rig.window.trimmed_frames == TRIM_FRAMES_PER_PASS
    assert rig.window.trim_due_at == rig.now + TRIM_AGAIN_S
    assert what_is_held(
        rig.window.lookup("AAPL", TRIM_FRAMES_PER_PASS, TRIM_FRAMES_PER_PASS + 1)
    ) == (
        None,
        TRIM_FRAMES_PER_PASS + 1,
        total,
    )
    rig.trim(rig.window.trim_due_at)
    assert rig.window.trimmed_frames == total
    assert rig.window.held_bytes == 0
    # Nothing left to do: the next call may wait (at most TRIM_CHECK_S).
    assert rig.now + TRIM_AGAIN_S < rig.window.trim_due_at <= rig.now + TRIM_CHECK_S


def test_trim_asks_again_soon_when_no_frames_are_due() -> None:
    rig = Rig()
    rig.publish("AAPL", 3)
    rig.trim(START + MARK_INTERVAL_S)
    # Marks were taken; nothing is old: the next call is due for the next marks at the latest.
    assert START + MARK_INTERVAL_S < rig.window.trim_due_at <= START + MARK_INTERVAL_S + 1.0
    assert rig.window.trimmed_frames == 0


def test_many_symbols_are_marked_in_chunks() -> None:
    symbol_count = 2 * MARK_SYMBOLS_PER_PASS + 2_000
    symbols = [f"S{index}" for index in range(symbol_count)]
    rig = Rig()
    for symbol in symbols:
        rig.publish(symbol)
    first_pass = START + MARK_INTERVAL_S
    rig.trim(first_pass)
    # Only a chunk was marked: the window asks to be called again soon for the rest.
    assert rig.window.trim_due_at == first_pass + TRIM_AGAIN_S
    second_pass = rig.window.trim_due_at
    rig.trim(second_pass)
    assert rig.window.trim_due_at == second_pass + TRIM_AGAIN_S
    rig.trim(rig.window.trim_due_at)
    # Every symbol looked at: the next call can wait.
    assert rig.window.trim_due_at > rig.now + TRIM_AGAIN_S
    # Past window_s after the first pass but not the second: only the first chunk is trimmed.
    rig.trim(first_pass + WINDOW_S + TRIM_AGAIN_S / 2)
    assert rig.window.trimmed_frames == MARK_SYMBOLS_PER_PASS
    assert what_is_held(rig.window.lookup(symbols[0], 1, 1)) == (None, None, 1)
    assert what_is_held(rig.window.lookup(symbols[MARK_SYMBOLS_PER_PASS - 1], 1, 1)) == (
        None,
        None,
        1,
    )
    held = rig.window.lookup(symbols[MARK_SYMBOLS_PER_PASS], 1, 1).frames
    assert held == _frames_of(rig.sent, symbols[MARK_SYMBOLS_PER_PASS])
    # The later chunks expire on the next passes: every symbol's frame goes eventually.
    rig.run_until(rig.now + 1.0)
    assert rig.window.trimmed_frames == symbol_count
    assert rig.window.held_bytes == 0
