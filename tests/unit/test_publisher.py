"""The hot path: per-symbol seq from 1, epoch and ts stamps, one frame per tick."""

from __future__ import annotations

from itertools import count

from feedsvc.protocol.ticks import decode_frame
from feedsvc.server.publisher import Publisher


def _publisher(max_symbols: int = 100) -> tuple[Publisher, list[bytes]]:
    frames: list[bytes] = []
    clock = count(1_000)
    publisher = Publisher(
        frames.append, epoch=77, max_symbols=max_symbols, clock_ns=lambda: next(clock)
    )
    return publisher, frames


def _tick(symbol: str) -> dict[str, object]:
    return {"sym": symbol, "bid": 1.0, "ask": 1.1, "bid_size": 1, "ask_size": 2}


def test_seq_counts_per_symbol_from_one() -> None:
    publisher, frames = _publisher()
    sent = publisher.publish([_tick("A"), _tick("B"), _tick("A"), _tick("A"), _tick("B")])
    assert sent == 5
    decoded = [decode_frame(frame) for frame in frames]
    assert [(topic, tick["seq"]) for topic, tick in decoded] == [
        ("A", 1),
        ("B", 1),
        ("A", 2),
        ("A", 3),
        ("B", 2),
    ]
    assert all(tick["epoch"] == 77 and tick["sym"] == topic for topic, tick in decoded)
    assert [tick["ts"] for _, tick in decoded] == [1000, 1001, 1002, 1003, 1004]
    last_values = publisher.last_values(["A", "Z"])
    assert last_values["A"][0] == 3 and last_values["Z"] == (0, None)
    assert publisher.published == 5


def test_feed_handler_cannot_forge_publisher_fields() -> None:
    publisher, frames = _publisher()
    publisher.publish([{**_tick("A"), "seq": 999, "epoch": 1, "ts": 5, "venue": "XNAS"}])
    _, tick = decode_frame(frames[0])
    assert (tick["seq"], tick["epoch"], tick["venue"]) == (1, 77, "XNAS")
    assert tick["ts"] != 5


def test_new_symbols_beyond_the_bound_are_refused_and_counted() -> None:
    publisher, frames = _publisher(max_symbols=2)
    sent = publisher.publish([_tick("A"), _tick("B"), _tick("C"), _tick("A"), _tick("D")])
    assert sent == 3
    assert publisher.refused_new_symbols == 2
    assert publisher.symbol_count == 2
    assert [decode_frame(frame)[0] for frame in frames] == ["A", "B", "A"]


def test_heartbeat_on_reserved_topic() -> None:
    publisher, frames = _publisher()
    publisher.send_heartbeat(0.5)
    topic, heartbeat = decode_frame(frames[0])
    assert topic == "_hb"
    assert heartbeat["epoch"] == 77 and heartbeat["interval_s"] == 0.5


def test_a_tick_over_max_tick_bytes_is_refused_without_using_a_seq() -> None:
    frames: list[bytes] = []
    publisher = Publisher(frames.append, epoch=1, max_symbols=10, max_tick_bytes=300)
    sent = publisher.publish([_tick("A"), {**_tick("A"), "note": "x" * 400}, _tick("A")])
    assert sent == 2
    assert publisher.refused_by_reason["too_large"] == 1
    assert [decode_frame(frame)[1]["seq"] for frame in frames] == [1, 2]
    assert all(len(frame) <= 300 for frame in frames)


def test_the_last_value_cache_stays_within_max_cache_bytes() -> None:
    frames: list[bytes] = []
    publisher = Publisher(
        frames.append, epoch=1, max_symbols=1_000, max_tick_bytes=2_000, max_cache_bytes=10_000
    )
    big = "x" * 1_500
    sent = publisher.publish([{**_tick(f"S{index}"), "note": big} for index in range(20)])
    assert 0 < sent < 20
    assert publisher.refused_by_reason["cache_full"] == 20 - sent
    assert publisher.cache_bytes <= 10_000
    # Symbols already in the cache keep ticking within their reservation.
    assert publisher.publish([{**_tick("S0"), "note": big}]) == 1
    # A refused new symbol holds no value: its snapshot entry is empty.
    assert publisher.last_values([f"S{sent}"]) == {f"S{sent}": (0, None)}


def test_a_tick_orjson_cannot_encode_is_refused_not_raised() -> None:
    frames: list[bytes] = []
    publisher = Publisher(frames.append, epoch=1, max_symbols=10)
    assert publisher.publish([{**_tick("A"), "big": 2**70}, _tick("A")]) == 1
    assert publisher.refused_by_reason["internal_error"] == 1
    assert decode_frame(frames[0])[1]["seq"] == 1
