"""The client's gap recovery without sockets: GapFiller asks for what a gap missed, releases the
recovered and held ticks in seq order, re-sends and gives up on its own fake clock."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from feedsvc.client.recovery import (
    GAVE_UP_BAD_REPLY,
    GAVE_UP_HOLD_FULL,
    GAVE_UP_RESTART,
    GAVE_UP_TIMEOUT,
    GapFiller,
)
from feedsvc.client.sequence import Gap
from feedsvc.protocol.recovery import (
    ERROR_BUSY,
    ERROR_NOT_IN_WINDOW,
    ERROR_NOT_PUBLISHED,
    ERROR_RANGE_TOO_LARGE,
    ERROR_RATE_LIMITED,
    ERROR_UNKNOWN_EPOCH,
)

EPOCH = 1_796_190_815_129_410_273
START = 50.0


def _tick(seq: int, symbol: str = "AAPL", epoch: int = EPOCH) -> dict[str, Any]:
    return {
        "sym": symbol,
        "bid": 1.0 + seq,
        "ask": 1.5 + seq,
        "seq": seq,
        "epoch": epoch,
        "ts": seq,
    }


def _frame(tick: dict[str, Any]) -> bytes:
    return tick["sym"].encode() + b" " + orjson.dumps(tick)


def _decode(frame: bytes) -> dict[str, Any]:
    # As the subscriber decodes a broadcast frame: ValueError when it has no payload.
    return orjson.loads(frame[frame.index(b" ") + 1 :])


def _gap(first: int, received: int, symbol: str = "AAPL") -> Gap:
    return Gap(symbol, EPOCH, first, received, received - first)


def _lost(first: int, last: int, reason: str, symbol: str = "AAPL") -> tuple[str, Gap]:
    return ("gap", Gap(symbol, EPOCH, first, last + 1, last - first + 1, True, reason))


def _ticks(first: int, last: int, symbol: str = "AAPL") -> list[tuple[str, dict[str, Any]]]:
    return [("tick", _tick(seq, symbol)) for seq in range(first, last + 1)]


class Rig:
    def __init__(self, **options: Any) -> None:
        self.now = START
        self.filler = GapFiller(_decode, clock=lambda: self.now, **options)

    def requests(self) -> list[dict[str, Any]]:
        return [orjson.loads(request) for request in self.filler.take_requests(self.now)]

    def one_request(self) -> dict[str, Any]:
        [request] = self.requests()
        return request

    def hold(self, seq: int, symbol: str = "AAPL") -> None:
        self.filler.hold(self.filler.recovering[symbol], _tick(seq, symbol))

    def reply_ok(
        self, request: dict[str, Any], first: int | None = None, last: int | None = None
    ) -> None:
        first = request["first"] if first is None else first
        last = request["last"] if last is None else last
        header = {
            "ok": True,
            "id": request["id"],
            "symbol": request["symbol"],
            "epoch": request["epoch"],
            "first": first,
            "last": last,
            "count": last - first + 1,
            "source": "memory",
        }
        body = b"\n".join(_frame(_tick(seq, request["symbol"])) for seq in range(first, last + 1))
        self.filler.on_reply([orjson.dumps(header), body])

    def reply_error(self, request: dict[str, Any], error: str, **fields: Any) -> None:
        header = {"ok": False, "id": request["id"], "error": error, "detail": "x", **fields}
        self.filler.on_reply([orjson.dumps(header)])


def test_a_gap_produces_one_request_for_the_missing_range() -> None:
    rig = Rig()
    rig.filler.start(_gap(3, 6), _tick(6))
    request = rig.one_request()
    assert set(request) == {"op", "id", "symbol", "epoch", "first", "last"}
    assert request["op"] == "recover"
    assert (request["symbol"], request["epoch"]) == ("AAPL", EPOCH)
    assert (request["first"], request["last"]) == (3, 5)
    assert isinstance(request["id"], str) and 1 <= len(request["id"]) <= 64
    # Sent once: nothing more until its timeout; nothing released while it is out.
    assert rig.requests() == []
    assert rig.filler.released == []
    assert "AAPL" in rig.filler.recovering
    assert rig.filler.stats.requests == 1


def test_a_reply_releases_recovered_then_held_ticks_in_seq_order() -> None:
    rig = Rig()
    rig.filler.start(_gap(3, 6), _tick(6))
    request = rig.one_request()
    rig.hold(7)
    rig.hold(8)
    rig.now += 0.25
    rig.reply_ok(request)
    assert rig.filler.released == _ticks(3, 8)
    assert rig.filler.recovering == {}
    assert rig.requests() == []
    stats = rig.filler.stats
    assert (stats.recovered, stats.unrecoverable_gaps, stats.recoveries) == (3, 0, 1)
    assert stats.latency_max_s == pytest.approx(0.25)


def test_other_symbols_are_not_held_while_one_is_recovered() -> None:
    rig = Rig()
    rig.filler.start(_gap(3, 6), _tick(6))
    rig.filler.start(_gap(1, 3, "MSFT"), _tick(3, "MSFT"))
    requests = {request["symbol"]: request for request in rig.requests()}
    assert set(requests) == {"AAPL", "MSFT"}
    rig.reply_ok(requests["MSFT"])
    assert rig.filler.released == _ticks(1, 3, "MSFT")
    assert set(rig.filler.recovering) == {"AAPL"}


def test_gaps_while_a_request_is_out_are_covered_by_one_next_request() -> None:
    rig = Rig()
    rig.filler.start(_gap(3, 6), _tick(6))
    first_request = rig.one_request()
    rig.hold(7)
    rig.filler.start(_gap(8, 10), _tick(10))
    rig.hold(11)
    rig.filler.start(_gap(12, 15), _tick(15))
    rig.filler.start(_gap(16, 18), _tick(18))
    # Still one request out, nothing more sent meanwhile.
    assert rig.requests() == []
    rig.reply_ok(first_request)
    assert rig.filler.released == []
    second_request = rig.one_request()
    assert (second_request["first"], second_request["last"]) == (8, 17)
    assert second_request["id"] != first_request["id"]
    # Ticks held inside the span (10, 11, 15) come back identical: each is released once.
    rig.reply_ok(second_request)
    assert rig.filler.released == _ticks(3, 18)
    assert rig.filler.stats.requests == 2
    assert rig.filler.stats.recovered == 3 + 2 + 3 + 2


def test_a_cut_reply_is_followed_by_a_request_for_the_rest() -> None:
    rig = Rig()
    rig.filler.start(_gap(1, 21), _tick(21))
    request = rig.one_request()
    rig.reply_ok(request, last=12)
    rest = rig.one_request()
    assert (rest["first"], rest["last"]) == (13, 20)
    rig.reply_ok(rest)
    assert rig.filler.released == _ticks(1, 21)


def test_not_in_window_reports_the_older_part_and_asks_for_the_rest() -> None:
    rig = Rig()
    rig.filler.start(_gap(3, 10), _tick(10))
    request = rig.one_request()
    rig.reply_error(request, ERROR_NOT_IN_WINDOW, oldest=6, latest=40)
    assert rig.filler.released == []
    rest = rig.one_request()
    assert (rest["first"], rest["last"]) == (6, 9)
    rig.reply_ok(rest)
    assert rig.filler.released == [_lost(3, 5, ERROR_NOT_IN_WINDOW), *_ticks(6, 10)]
    gap = rig.filler.released[0][1]
    assert gap.recovery_tried is True and gap.recovery_error == ERROR_NOT_IN_WINDOW
    assert (rig.filler.stats.unrecoverable_gaps, rig.filler.stats.unrecoverable_ticks) == (1, 3)


@pytest.mark.parametrize("oldest", [None, 20])
def test_not_in_window_with_nothing_of_the_range_held_reports_all_of_it(
    oldest: int | None,
) -> None:
    rig = Rig()
    rig.filler.start(_gap(3, 10), _tick(10))
    rig.reply_error(rig.one_request(), ERROR_NOT_IN_WINDOW, oldest=oldest, latest=None)
    assert rig.filler.released == [_lost(3, 9, ERROR_NOT_IN_WINDOW), ("tick", _tick(10))]
    assert rig.requests() == []


@pytest.mark.parametrize("error", [ERROR_UNKNOWN_EPOCH, ERROR_NOT_PUBLISHED, "some_new_error"])
def test_a_final_error_reports_the_range_with_that_error(error: str) -> None:
    rig = Rig()
    rig.filler.start(_gap(3, 6), _tick(6))
    rig.hold(7)
    rig.reply_error(rig.one_request(), error)
    assert rig.filler.released == [_lost(3, 5, error), *_ticks(6, 7)]
    assert rig.filler.recovering == {}


def test_range_too_large_asks_again_in_pieces_of_max_ticks() -> None:
    rig = Rig()
    rig.filler.start(_gap(1, 26), _tick(26))
    rig.reply_error(rig.one_request(), ERROR_RANGE_TOO_LARGE, max_ticks=10)
    pieces = []
    while rig.filler.recovering:
        request = rig.one_request()
        pieces.append((request["first"], request["last"]))
        rig.reply_ok(request)
    assert pieces == [(1, 10), (11, 20), (21, 25)]
    assert rig.filler.released == _ticks(1, 26)


def test_no_reply_is_sent_again_after_timeout_then_given_up_after_attempts() -> None:
    rig = Rig(timeout_s=1.0, attempts=3)
    rig.filler.start(_gap(3, 6), _tick(6))
    sends = [rig.one_request()]
    rig.now = START + 0.999
    assert rig.requests() == []
    for attempt in (1, 2):
        rig.now = START + attempt * 1.0
        assert rig.filler.next_due_at() == rig.now
        sends.append(rig.one_request())
        rig.hold(6 + attempt)
    assert all((sent["first"], sent["last"]) == (3, 5) for sent in sends)
    assert rig.filler.released == []
    rig.now = START + 3.0
    assert rig.requests() == []
    assert rig.filler.released == [_lost(3, 5, GAVE_UP_TIMEOUT), *_ticks(6, 8)]
    assert rig.filler.stats.requests == 3
    assert rig.filler.next_due_at() is None
    # A reply after giving up changes nothing.
    rig.reply_ok(sends[-1])
    assert rig.filler.released == [_lost(3, 5, GAVE_UP_TIMEOUT), *_ticks(6, 8)]


def test_a_reply_to_a_re_sent_request_is_used() -> None:
    rig = Rig(timeout_s=1.0, attempts=3)
    rig.filler.start(_gap(3, 6), _tick(6))
    rig.one_request()
    rig.now = START + 1.0
    resent = rig.one_request()
    rig.reply_ok(resent)
    assert rig.filler.released == _ticks(3, 6)


def test_a_stale_or_unknown_reply_is_ignored() -> None:
    rig = Rig()
    rig.filler.start(_gap(3, 6), _tick(6))
    first_request = rig.one_request()
    rig.reply_ok(first_request)
    rig.filler.start(_gap(8, 10), _tick(10))
    second_request = rig.one_request()
    released = list(rig.filler.released)
    # A late second reply to the first request (identical, or an error) changes nothing.
    rig.reply_ok(first_request)
    rig.reply_error(first_request, ERROR_NOT_PUBLISHED)
    rig.reply_error({**second_request, "id": "AAPL.999"}, ERROR_NOT_PUBLISHED)
    for junk in ([b"not json"], [b"[1, 2]"], [b'{"id": 5}'], [], [b"{}"]):
        rig.filler.on_reply(junk)
    assert rig.filler.released == released
    assert rig.filler.recovering["AAPL"].request is not None
    rig.reply_ok(second_request)
    assert rig.filler.released == released + _ticks(8, 10)


def test_holding_more_than_hold_ticks_gives_up_with_hold_full() -> None:
    rig = Rig(hold_ticks=3)
    rig.filler.start(_gap(3, 6), _tick(6))
    request = rig.one_request()
    rig.hold(7)
    rig.hold(8)
    assert rig.filler.released == []
    rig.hold(9)
    assert rig.filler.released == [_lost(3, 5, GAVE_UP_HOLD_FULL), *_ticks(6, 9)]
    assert rig.filler.recovering == {}
    rig.reply_ok(request)
    assert len(rig.filler.released) == 5


BAD_BODIES = {
    "wrong seq": [3, 4, 4],
    "wrong order": [3, 5, 4],
    "too few": [3, 4],
    "too many": [3, 4, 5, 6],
}


@pytest.mark.parametrize("seqs", BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_a_body_with_the_wrong_seqs_gives_up_with_bad_reply(seqs: list[int]) -> None:
    rig = Rig()
    rig.filler.start(_gap(3, 6), _tick(6))
    request = rig.one_request()
    header = {"ok": True, "id": request["id"], "first": 3, "last": 5, "count": 3}
    body = b"\n".join(_frame(_tick(seq)) for seq in seqs)
    rig.filler.on_reply([orjson.dumps(header), body])
    assert rig.filler.released == [_lost(3, 5, GAVE_UP_BAD_REPLY), ("tick", _tick(6))]


@pytest.mark.parametrize(
    "frame",
    [
        _frame(_tick(4, "MSFT")),
        _frame(_tick(4, epoch=EPOCH + 1)),
        b"AAPL {not json",
        b"AAPL " + orjson.dumps({"sym": "AAPL", "epoch": EPOCH}),
        b"",
    ],
)
def test_a_body_with_a_foreign_or_malformed_tick_gives_up_with_bad_reply(frame: bytes) -> None:
    rig = Rig()
    rig.filler.start(_gap(3, 6), _tick(6))
    request = rig.one_request()
    header = {"ok": True, "id": request["id"], "first": 3, "last": 5, "count": 3}
    body = b"\n".join([_frame(_tick(3)), frame, _frame(_tick(5))])
    rig.filler.on_reply([orjson.dumps(header), body])
    assert rig.filler.released == [_lost(3, 5, GAVE_UP_BAD_REPLY), ("tick", _tick(6))]


@pytest.mark.parametrize("last", [2, 6, "5", None])
def test_a_header_naming_seqs_outside_the_request_gives_up_with_bad_reply(last: object) -> None:
    rig = Rig()
    rig.filler.start(_gap(3, 6), _tick(6))
    request = rig.one_request()
    header = {"ok": True, "id": request["id"], "first": 3, "last": last}
    body = b"\n".join(_frame(_tick(seq)) for seq in (3, 4, 5))
    rig.filler.on_reply([orjson.dumps(header), body])
    assert rig.filler.released == [_lost(3, 5, GAVE_UP_BAD_REPLY), ("tick", _tick(6))]


def test_give_up_all_releases_every_symbol() -> None:
    rig = Rig()
    rig.filler.start(_gap(3, 6), _tick(6))
    rig.filler.start(_gap(2, 4, "MSFT"), _tick(4, "MSFT"))
    requests = rig.requests()
    rig.hold(7)
    rig.filler.start(_gap(9, 11), _tick(11))
    rig.filler.give_up_all(GAVE_UP_RESTART)
    by_symbol: dict[str, list[tuple[str, Any]]] = {}
    for kind, item in rig.filler.released:
        symbol = item.symbol if kind == "gap" else item["sym"]
        by_symbol.setdefault(symbol, []).append((kind, item))
    assert by_symbol == {
        "AAPL": [
            _lost(3, 5, GAVE_UP_RESTART),
            *_ticks(6, 7),
            _lost(9, 10, GAVE_UP_RESTART),
            ("tick", _tick(11)),
        ],
        "MSFT": [_lost(2, 3, GAVE_UP_RESTART, "MSFT"), ("tick", _tick(4, "MSFT"))],
    }
    assert len(rig.filler.released) == 7
    assert rig.filler.recovering == {} and rig.filler.next_due_at() is None
    rig.now += 10
    assert rig.requests() == []
    for request in requests:
        rig.reply_ok(request)
    assert len(rig.filler.released) == 7


@pytest.mark.parametrize("error", [ERROR_RATE_LIMITED, ERROR_BUSY])
def test_a_retryable_error_is_sent_again_after_retry_after_ms(error: str) -> None:
    rig = Rig(timeout_s=1.0, attempts=3)
    rig.filler.start(_gap(3, 6), _tick(6))
    request = rig.one_request()
    rig.now = START + 0.5
    rig.reply_error(request, error, retry_after_ms=250)
    assert rig.filler.released == []
    assert rig.filler.next_due_at() == START + 0.75
    rig.now = START + 0.74
    assert rig.requests() == []
    rig.now = START + 0.75
    again = rig.one_request()
    assert (again["first"], again["last"]) == (3, 5)
    rig.reply_ok(again)
    assert rig.filler.released == _ticks(3, 6)


def test_retryable_errors_give_up_once_the_attempts_are_spent() -> None:
    rig = Rig(timeout_s=1.0, attempts=2)
    rig.filler.start(_gap(3, 6), _tick(6))
    rig.reply_error(rig.one_request(), ERROR_RATE_LIMITED, retry_after_ms=100)
    rig.now = START + 0.25
    rig.reply_error(rig.one_request(), ERROR_RATE_LIMITED, retry_after_ms=100)
    assert rig.filler.released == [_lost(3, 5, ERROR_RATE_LIMITED), ("tick", _tick(6))]
    assert rig.filler.stats.requests == 2


def test_every_send_has_a_new_id_and_a_late_reply_to_an_earlier_one_is_ignored() -> None:
    rig = Rig(timeout_s=1.0, attempts=3)
    rig.filler.start(_gap(3, 6), _tick(6))
    first_send = rig.one_request()
    rig.now += 1.0
    second_send = rig.one_request()
    rig.now += 1.0
    third_send = rig.one_request()
    assert len({first_send["id"], second_send["id"], third_send["id"]}) == 3
    assert rig.filler.stats.requests == 3
    # The first send's busy reply arrives late: it does not end the recovery...
    rig.reply_error(first_send, ERROR_BUSY)
    assert "AAPL" in rig.filler.recovering and rig.filler.released == []
    # ... and the last send's reply fills the gap.
    rig.reply_ok(third_send)
    assert rig.filler.released == _ticks(3, 6)
    assert rig.filler.stats.unrecoverable_gaps == 0
