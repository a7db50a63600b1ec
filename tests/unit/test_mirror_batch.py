"""The mirror process's split of a hand-off batch into Kafka keys and values."""

from __future__ import annotations

import orjson

from feedsvc.server.mirror import FRAME_SEPARATOR, split_batch
from feedsvc.server.mirror.wire import batch_message, parse_batch


def frame(symbol: str, **fields: object) -> bytes:
    return symbol.encode() + b" " + orjson.dumps({"sym": symbol, **fields})


def test_keys_and_values_are_the_symbols_and_the_payloads_byte_for_byte() -> None:
    frames = [frame("AAPL", seq=1, bid=1.5), frame("MSFT", seq=1, bid=2.5), frame("AAPL", seq=2)]
    fields = split_batch(FRAME_SEPARATOR.join(frames))
    assert fields == [part for f in frames for part in f.split(b" ", 1)]


def test_a_payload_with_spaces_keeps_them_and_its_neighbours_stay_aligned() -> None:
    frames = [
        frame("AAPL", seq=1),
        frame("X.Y", venue="New York  Stock Exchange"),
        frame("Z", seq=3),
    ]
    fields = split_batch(FRAME_SEPARATOR.join(frames))
    assert fields[2:4] == [
        b"X.Y",
        orjson.dumps({"sym": "X.Y", "venue": "New York  Stock Exchange"}),
    ]
    assert fields[4] == b"Z" and orjson.loads(fields[5]) == {"sym": "Z", "seq": 3}
    assert len(fields) == 6


def test_a_batch_of_one_frame() -> None:
    assert split_batch(frame("A", seq=7)) == [b"A", b'{"sym":"A","seq":7}']


def test_a_hand_off_message_carries_its_batch_id_dropped_count_and_frames_unchanged() -> None:
    frames = [frame("AAPL", seq=1), frame("X.Y", venue="a  b"), frame("Z", seq=3)]
    message = batch_message(12, 345, frames)
    assert parse_batch(message) == (12, 345, FRAME_SEPARATOR.join(frames))
    assert split_batch(parse_batch(message)[2])[2:4] == list(frames[1].split(b" ", 1))
