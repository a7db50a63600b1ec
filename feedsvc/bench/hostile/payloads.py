"""The hostile messages themselves, built to sit just inside (or just past) the service's limits:
nested JSON, near-limit snapshot requests, oversized ticks, large valid batches. No sockets."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import orjson

# The service's limits, as of this writing; requests are built to sit just inside them.
MAX_MESSAGE_BYTES: Final = 1_048_576
MAX_SYMBOLS_PER_REQUEST: Final = 10_000
_VALID_TICK: Final = b'"bid":100.0,"ask":100.01,"bid_size":100,"ask_size":100'


def nested_tick_frame(numbers: int = 400, depth: int = 300, symbol: str = "NESTED") -> bytes:
    """An ingest batch: `numbers` zeros (each a rejected non-object), then one valid tick whose
    pass-through field is a list nested `depth` deep (deeper than orjson writes back)."""
    tick = b'{"sym":"' + symbol.encode() + b'",' + _VALID_TICK + b',"extra":'
    return b"[" + b"0," * numbers + tick + b"[" * depth + b"]" * depth + b"}]"


def nested_sync_request(depth: int = 1_000) -> bytes:
    """A snapshot request whose one symbol is a list nested `depth` deep."""
    nested = b"[" * depth + b"]" * depth
    return b'{"op":"snapshot","client":"c1","marker":"m1","symbols":[' + nested + b"]}"


def bad_symbol_request(
    request_bytes: int = MAX_MESSAGE_BYTES - 512,
    shape: str = "nested_zeros",
    entries: int = MAX_SYMBOLS_PER_REQUEST,
) -> bytes:
    """A snapshot request of about `request_bytes` whose symbols are invalid, few enough to pass
    the count check (so the answer is bad_symbol).

    shape "nested_zeros": one entry, a list of zeros filling the request (the costliest found:
    the error detail renders the entry); "strings": `entries` strings that begin with "_".
    """
    overhead = len(b'{"op":"snapshot","client":"flood","marker":"m1","symbols":[[]]}')
    if shape == "nested_zeros":
        symbols: list[Any] = [[0] * max(1, (request_bytes - overhead) // 2)]
    elif shape == "strings":
        entry_length = max(2, (request_bytes - overhead) // max(1, entries) - 3)
        symbols = ["_" + "x" * (entry_length - 1)] * entries
    else:
        raise ValueError(f'shape must be "nested_zeros" or "strings", got {shape!r}')
    return orjson.dumps({"op": "snapshot", "client": "flood", "marker": "m1", "symbols": symbols})


def big_tick_frame(symbol: str, tick_bytes: int = 1_000_000) -> bytes:
    """One valid tick with a pass-through string field of `tick_bytes` bytes."""
    return (
        b'{"sym":"'
        + symbol.encode()
        + b'",'
        + _VALID_TICK
        + b',"note":"'
        + b"x" * tick_bytes
        + (b'"}')
    )


def valid_batch(batch_bytes: int = 984_000, symbols: Sequence[str] = ("FLOOD0",)) -> bytes:
    """A JSON array of valid ticks, about `batch_bytes` long, cycling over `symbols`."""
    ticks = []
    size = 1
    index = 0
    while True:
        tick = b'{"sym":"' + symbols[index % len(symbols)].encode() + b'",' + _VALID_TICK + b"}"
        if size + len(tick) + 1 > batch_bytes:
            break
        ticks.append(tick)
        size += len(tick) + 1
        index += 1
    return b"[" + b",".join(ticks) + b"]"
