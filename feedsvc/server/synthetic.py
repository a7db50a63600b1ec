"""The built-in synthetic feed: random-walk bid/ask quotes with sizes, for demos and load tests."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from typing import Final

from feedsvc.protocol.ticks import Tick

# Table lengths are distinct primes so the combined walk does not repeat for ~10^19 ticks,
# while each tick costs only list indexing instead of several random() calls.
_SYMBOL_TABLE: Final = 65_521
_STEP_TABLE: Final = 65_519
_SIZE_TABLE: Final = 65_497
_SPREADS_CENTS: Final = (1, 2, 3)


def synthetic_symbols(count: int, prefix: str = "SYN") -> list[str]:
    """Fixed-width names (SYN0000, SYN0001, ...) so no symbol is a prefix of another."""
    width = max(4, len(str(count - 1)))
    return [f"{prefix}{index:0{width}d}" for index in range(count)]


class SyntheticFeed:
    """Random-walk bid/ask quotes with sizes over a fixed set of symbols.

    Prices move in whole cents around a per-symbol mid; the spread is 1 to 3 cents and sizes are
    round lots. Symbols are drawn uniformly at random.
    """

    def __init__(self, symbol_count: int, seed: int = 0, prefix: str = "SYN") -> None:
        rng = random.Random(seed or None)
        self.symbols = synthetic_symbols(symbol_count, prefix)
        self._mid_cents = [rng.randint(1_000, 50_000) for _ in self.symbols]
        # choices() fills a table in one call: start-up stays well under a second.
        self._symbol_draws = rng.choices(range(symbol_count), k=_SYMBOL_TABLE)
        self._step_draws = rng.choices((-2, -1, -1, 0, 0, 0, 1, 1, 2), k=_STEP_TABLE)
        self._size_draws = [lots * 100 for lots in rng.choices(range(1, 51), k=_SIZE_TABLE)]
        self._draw = 0

    def generate(self, count: int) -> list[Tick]:
        """The next `count` ticks, without seq/epoch/ts (the publisher stamps those)."""
        draw = self._draw
        symbols, mids = self.symbols, self._mid_cents
        ticks: list[Tick] = []
        append = ticks.append
        # zip over table slices: no per-tick index arithmetic (this runs at full publish rate).
        for index, step, bid_size, ask_size, spread in zip(
            _wrapped_slice(self._symbol_draws, draw, count),
            _wrapped_slice(self._step_draws, draw, count),
            _wrapped_slice(self._size_draws, draw, count),
            _wrapped_slice(self._size_draws, draw + 7, count),
            _spreads(draw, count),
            strict=True,
        ):
            mid = mids[index] + step
            if mid < 10:
                mid = 10
            mids[index] = mid
            append(
                {
                    "sym": symbols[index],
                    "bid": (mid - spread) / 100,
                    "ask": (mid + spread) / 100,
                    "bid_size": bid_size,
                    "ask_size": ask_size,
                }
            )
        self._draw = draw + count
        return ticks


def _spreads(start: int, count: int) -> Iterator[int]:
    first = start % len(_SPREADS_CENTS)
    return itertools.islice(itertools.cycle(_SPREADS_CENTS), first, first + count)


def _wrapped_slice(table: list[int], start: int, count: int) -> list[int]:
    """`count` items of `table` from `start`, wrapping around (count <= len(table))."""
    start %= len(table)
    end = start + count
    if end <= len(table):
        return table[start:end]
    return table[start:] + table[: end - len(table)]
