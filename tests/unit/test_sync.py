"""The sync handler: snapshots from the last-value cache, markers, error replies, fuzzing."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from feedsvc.protocol.sync import ERRORS
from feedsvc.protocol.ticks import decode_frame
from feedsvc.server.publisher import Publisher
from feedsvc.server.sync import SyncHandler


def _handler(max_symbols: int = 100) -> tuple[SyncHandler, Publisher, list[bytes]]:
    frames: list[bytes] = []
    publisher = Publisher(frames.append, epoch=9, max_symbols=1000)
    handler = SyncHandler(publisher.last_values, 9, max_symbols, max_request_bytes=4096)
    return handler, publisher, frames


def _tick(symbol: str, bid: float = 1.0) -> dict[str, object]:
    return {"sym": symbol, "bid": bid, "ask": bid + 0.01, "bid_size": 1, "ask_size": 1}


def _request(**fields: object) -> bytes:
    return orjson.dumps({"op": "snapshot", "client": "c1", "marker": "m1", **fields})


def test_snapshot_holds_last_seq_and_the_tick_as_broadcast() -> None:
    handler, publisher, frames = _handler()
    publisher.publish([_tick("AAPL", 1.0), _tick("MSFT"), _tick("AAPL", 2.0)])
    reply, marker_frame = handler.handle(_request(symbols=["AAPL", "QUIET"]))
    decoded = orjson.loads(reply)
    assert decoded["ok"] is True and decoded["epoch"] == 9
    assert decoded["snapshot"]["AAPL"]["seq"] == 2
    # Byte for byte the payload subscribers received for AAPL seq 2.
    assert orjson.dumps(decoded["snapshot"]["AAPL"]["tick"]) == frames[2].partition(b" ")[2]
    assert decoded["snapshot"]["QUIET"] == {"seq": 0, "tick": None}
    assert "MSFT" not in decoded["snapshot"]
    assert marker_frame is not None
    topic, marker = decode_frame(marker_frame)
    assert topic == decoded["marker"] == "_sync.m1"
    assert marker == {"epoch": 9, "marker": "m1"}
    assert handler.snapshots_served == 1


def test_all_symbols_when_symbols_is_null() -> None:
    handler, publisher, _ = _handler()
    publisher.publish([_tick("A"), _tick("B")])
    decoded = orjson.loads(handler.handle(_request(symbols=None)).reply)
    assert set(decoded["snapshot"]) == {"A", "B"}


def test_ready_counts_distinct_clients() -> None:
    handler, _, _ = _handler()
    for attempt, client in enumerate(("a", "b", "a")):
        marker = f"x{attempt}"
        handler.handle(orjson.dumps({"op": "snapshot", "client": client, "marker": marker}))
        reply = handler.handle(orjson.dumps({"op": "ready", "client": client, "marker": marker}))
        assert orjson.loads(reply.reply) == {"ok": True}
        assert reply.marker_frame is None
    assert handler.completed_handshakes == 2


def test_a_ready_without_its_snapshot_is_refused_and_not_counted() -> None:
    handler, _, _ = _handler()
    handler.handle(orjson.dumps({"op": "snapshot", "client": "a", "marker": "m1"}))
    for client, marker in (("b", "m1"), ("a", "m2"), ("c", "c")):
        reply = handler.handle(orjson.dumps({"op": "ready", "client": client, "marker": marker}))
        assert orjson.loads(reply.reply)["error"] == "unknown_marker"
    assert handler.completed_handshakes == 0
    reply = handler.handle(orjson.dumps({"op": "ready", "client": "a", "marker": "m1"}))
    assert orjson.loads(reply.reply) == {"ok": True}
    # A marker confirms one handshake: a second ready for it is refused.
    reply = handler.handle(orjson.dumps({"op": "ready", "client": "a", "marker": "m1"}))
    assert orjson.loads(reply.reply)["error"] == "unknown_marker"
    assert handler.completed_handshakes == 1
    assert handler.rejected_by_reason["unknown_marker"] == 4


def _error(handler: SyncHandler, request: bytes) -> str:
    reply = handler.handle(request)
    decoded = orjson.loads(reply.reply)
    assert decoded["ok"] is False and decoded["detail"]
    assert reply.marker_frame is None
    return decoded["error"]


def test_bad_requests_get_error_replies_by_reason() -> None:
    handler, _, _ = _handler(max_symbols=3)
    assert _error(handler, b"{nope") == "not_json"
    assert _error(handler, b"[1, 2]") == "bad_request"
    assert _error(handler, orjson.dumps({"op": "dance", "client": "c", "marker": "m"})) == (
        "bad_request"
    )
    assert _error(handler, _request(marker="has space")) == "bad_request"
    assert _error(handler, _request(client="")) == "bad_request"
    assert _error(handler, _request(symbols="AAPL")) == "bad_request"
    assert _error(handler, _request(symbols=["AAPL", "_hb"])) == "bad_symbol"
    assert _error(handler, _request(symbols=["AAPL", 7])) == "bad_symbol"
    assert _error(handler, _request(symbols=["A", "B", "C", "D"])) == "too_many_symbols"
    assert _error(handler, b" " * 5000) == "too_large"
    assert handler.rejected_by_reason["bad_request"] == 5
    assert handler.snapshots_served == 0


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=300),
        st.builds(
            orjson.dumps,
            st.dictionaries(
                st.sampled_from(["op", "client", "marker", "symbols"]),
                st.one_of(
                    st.none(),
                    st.text(max_size=10),
                    st.sampled_from(["snapshot", "ready"]),
                    st.lists(st.text(max_size=6), max_size=5),
                    st.integers(min_value=-(2**63), max_value=2**63 - 1),
                ),
            ),
        ),
    )
)
def test_any_request_gets_one_json_reply_and_is_counted(request: bytes) -> None:
    handler, publisher, _ = _handler(max_symbols=4)
    publisher.publish([_tick("A")])
    reply = orjson.loads(handler.handle(request).reply)
    if reply["ok"]:
        assert handler.snapshots_served + handler.completed_handshakes == 1
    else:
        assert reply["error"] in ERRORS
        assert sum(handler.rejected_by_reason.values()) == 1


def test_a_snapshot_over_its_byte_bound_is_refused_before_it_is_built() -> None:
    frames: list[bytes] = []
    publisher = Publisher(frames.append, epoch=9, max_symbols=1000)
    bound = 20_000
    handler = SyncHandler(publisher.last_values, 9, 1000, 4096, max_snapshot_bytes=bound)
    publisher.publish([_tick(f"S{index:03d}") for index in range(50)])
    small = orjson.loads(handler.handle(_request()).reply)
    assert small["ok"] is True and len(small["snapshot"]) == 50
    assert len(orjson.dumps(small)) < bound
    publisher.publish([{**_tick(f"B{index:03d}"), "note": "x" * 500} for index in range(50)])
    refused = handler.handle(_request())
    assert orjson.loads(refused.reply)["error"] == "snapshot_too_large"
    assert refused.marker_frame is None
    assert handler.rejected_by_reason["snapshot_too_large"] == 1
    # A client asking for fewer symbols still gets its snapshot.
    few = orjson.loads(handler.handle(_request(symbols=["B001", "S001"])).reply)
    assert few["ok"] is True and set(few["snapshot"]) == {"B001", "S001"}


def test_error_details_never_format_a_nested_or_huge_value() -> None:
    handler, _, _ = _handler(max_symbols=100)
    handler.max_request_bytes = 1_000_000
    deep = b"[" * 900 + b"]" * 900  # deeper than orjson writes, within what it reads
    for symbols in (b"[" + deep + b"]", b'[{"a":' + deep + b"}]", b'["' + b"x" * 100_000 + b'"]'):
        request = b'{"op":"snapshot","client":"c1","marker":"m1","symbols":' + symbols + b"}"
        reply = orjson.loads(handler.handle(request).reply)
        assert reply["error"] == "bad_symbol"
        assert len(reply["detail"]) < 200


def test_a_snapshot_that_does_not_fit_the_inflight_room_is_busy() -> None:
    frames: list[bytes] = []
    publisher = Publisher(frames.append, epoch=9, max_symbols=1000)
    room = [10_000]
    handler = SyncHandler(
        publisher.last_values,
        9,
        100,
        4096,
        snapshot_room=lambda: room[0],
        all_symbols_bytes=lambda: (publisher.symbol_count, publisher.cache_bytes),
    )
    publisher.publish([{**_tick(f"S{index}"), "note": "x" * 500} for index in range(40)])
    assert orjson.loads(handler.handle(_request(symbols=["S1"])).reply)["ok"] is True
    reply, marker = handler.handle(_request(symbols=None))  # about 25 KB: over the room
    assert orjson.loads(reply)["error"] == "busy" and marker is None
    room[0] = 1_000_000
    assert orjson.loads(handler.handle(_request(symbols=None)).reply)["ok"] is True
    assert handler.rejected_by_reason["busy"] == 1
