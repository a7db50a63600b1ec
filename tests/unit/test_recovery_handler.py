"""The recovery handler: a request answered with the frames as broadcast, and every error code
from the input that should produce it (a fake clock for the rate limits, no sockets)."""

from __future__ import annotations

import itertools
from typing import Any

import orjson
import pytest

from feedsvc.config import RecoveryConfig
from feedsvc.protocol.recovery import (
    ERROR_BAD_REQUEST,
    ERROR_BAD_SYMBOL,
    ERROR_BUSY,
    ERROR_NOT_IN_WINDOW,
    ERROR_NOT_JSON,
    ERROR_NOT_PUBLISHED,
    ERROR_RANGE_TOO_LARGE,
    ERROR_RATE_LIMITED,
    ERROR_TOO_LARGE,
    ERROR_UNKNOWN_EPOCH,
    ERRORS,
    MAX_REQUEST_BYTES,
    SOURCE_MEMORY,
)
from feedsvc.server.publisher import Publisher
from feedsvc.server.recovery.handler import RecoveryHandler, RecoveryReply
from feedsvc.server.recovery.window import MARK_INTERVAL_S, RecoveryWindow

EPOCH = 1_796_190_815_129_410_273
START = 500.0
CLIENT = b"\x00client-a"
OTHER_CLIENT = b"\x00client-b"


class Rig:
    """A Publisher with a recovery window and a RecoveryHandler, on one fake clock."""

    def __init__(self, inflight_room: int | None = None, **config: Any) -> None:
        self.now = START
        self.sent: list[bytes] = []
        self.config = RecoveryConfig(**{"window_s": 10.0, "max_ticks_per_request": 1_000, **config})
        holder: list[Publisher] = []
        self.window = RecoveryWindow(
            self.config.window_s,
            self.config.max_bytes,
            published_bytes=lambda: holder[0].published_bytes if holder else 0,
            clock=self.clock,
        )
        self.publisher = Publisher(
            self.sent.append,
            EPOCH,
            max_symbols=1_000,
            clock_ns=itertools.count(1).__next__,
            window=self.window,
        )
        holder.append(self.publisher)
        self.handler = RecoveryHandler(
            self.window,
            EPOCH,
            self.config,
            inflight_room=None if inflight_room is None else lambda: inflight_room,
            clock=self.clock,
        )

    def clock(self) -> float:
        return self.now

    def publish(self, symbol: str, count: int, **extra: Any) -> list[bytes]:
        before = len(self.sent)
        ticks = [
            {"sym": symbol, "bid": 1.0, "ask": 1.1, "bid_size": 1, "ask_size": 1, **extra}
            for _ in range(count)
        ]
        assert self.publisher.publish(ticks) == count
        return self.sent[before:]

    def ask(self, client: bytes = CLIENT, **fields: Any) -> tuple[dict[str, Any], bytes | None]:
        request = {"op": "recover", "id": "AAPL.1", "symbol": "AAPL", "epoch": EPOCH}
        request.update(fields)
        return self.send(orjson.dumps(request), client)

    def send(self, request: bytes, client: bytes = CLIENT) -> tuple[dict[str, Any], bytes | None]:
        reply = self.handler.handle(client, request)
        assert isinstance(reply, RecoveryReply)
        header = orjson.loads(reply.header)
        assert isinstance(header, dict)
        return header, reply.body


def _error(header: dict[str, Any], body: bytes | None) -> str:
    assert header["ok"] is False and body is None, header
    assert header["error"] in ERRORS
    assert isinstance(header["detail"], str) and header["detail"]
    return header["error"]


def test_a_good_request_gets_the_frames_as_broadcast() -> None:
    rig = Rig()
    frames = rig.publish("AAPL", 10)
    rig.publish("MSFT", 3)
    header, body = rig.ask(first=3, last=7)
    assert header == {
        "ok": True,
        "id": "AAPL.1",
        "symbol": "AAPL",
        "epoch": EPOCH,
        "first": 3,
        "last": 7,
        "count": 5,
        "source": SOURCE_MEMORY,
    }
    assert body is not None and body.split(b"\n") == frames[2:7]
    single, body = rig.ask(first=10, last=10)
    assert single["count"] == 1 and body == frames[9]
    assert rig.handler.requests == 2
    assert rig.handler.served_ticks == 6
    assert rig.handler.served_by_source[SOURCE_MEMORY] == 6
    assert sum(rig.handler.served_by_source.values()) == 6
    assert rig.handler.served_bytes == len(b"\n".join(frames[2:7])) + len(frames[9])
    assert sum(rig.handler.rejected_by_reason.values()) == 0


def test_unknown_fields_are_ignored() -> None:
    rig = Rig()
    frames = rig.publish("AAPL", 2)
    header, body = rig.ask(first=1, last=2, note="hi", extra={"a": [1]})
    assert header["ok"] is True and body == b"\n".join(frames)


@pytest.mark.parametrize(
    ("request_bytes", "code"),
    [
        (b"", ERROR_NOT_JSON),
        (b"{", ERROR_NOT_JSON),
        (b"\xff\xfe", ERROR_NOT_JSON),
        (b'{"op": "recover", "id": "a", NaN}', ERROR_NOT_JSON),
        (b"[]", ERROR_BAD_REQUEST),
        (b'"recover"', ERROR_BAD_REQUEST),
        (b"null", ERROR_BAD_REQUEST),
        (b"{" + b" " * MAX_REQUEST_BYTES + b"}", ERROR_TOO_LARGE),
        (
            orjson.dumps({"op": "recover", "id": "a", "pad": "x" * MAX_REQUEST_BYTES}),
            ERROR_TOO_LARGE,
        ),
    ],
)
def test_malformed_request_bytes_get_their_error_with_a_null_id(
    request_bytes: bytes, code: str
) -> None:
    rig = Rig()
    rig.publish("AAPL", 3)
    header, body = rig.send(request_bytes)
    assert _error(header, body) == code
    assert header["id"] is None
    assert rig.handler.rejected_by_reason[code] == 1


def test_a_request_of_exactly_max_request_bytes_is_read() -> None:
    rig = Rig()
    frames = rig.publish("AAPL", 3)
    request = {"op": "recover", "id": "a", "symbol": "AAPL", "epoch": EPOCH, "first": 1}
    request["last"] = 3
    length = len(orjson.dumps({**request, "pad": ""}))
    request["pad"] = "x" * (MAX_REQUEST_BYTES - length)
    encoded = orjson.dumps(request)
    assert len(encoded) == MAX_REQUEST_BYTES
    header, body = rig.send(encoded)
    assert header["ok"] is True and body == b"\n".join(frames)


@pytest.mark.parametrize("id_value", [None, 5, "", "has space", "x" * 65, ["a"], "é", "a/b", True])
def test_a_missing_or_invalid_id_is_a_bad_request_with_a_null_id(id_value: object) -> None:
    rig = Rig()
    rig.publish("AAPL", 3)
    fields = {"op": "recover", "symbol": "AAPL", "epoch": EPOCH, "first": 1, "last": 1}
    if id_value is not None:
        fields["id"] = id_value
    header, body = rig.send(orjson.dumps(fields))
    assert _error(header, body) == ERROR_BAD_REQUEST
    assert header["id"] is None


def test_the_longest_id_is_echoed() -> None:
    rig = Rig()
    rig.publish("AAPL", 1)
    request_id = "Az09_.:-" * 8
    header, _ = rig.ask(id=request_id, first=1, last=1)
    assert header["ok"] is True and header["id"] == request_id


BAD_FIELDS: list[dict[str, Any]] = [
    {"op": None},
    {"op": "snapshot"},
    {"op": "RECOVER"},
    {"first": None},
    {"first": "1"},
    {"first": 1.0},
    {"first": True},
    {"first": 0},
    {"first": -3},
    {"last": None},
    {"last": [3]},
    {"last": 2.5},
    {"epoch": None},
    {"epoch": str(EPOCH)},
    {"epoch": float(EPOCH)},
    {"epoch": False},
    {"first": 3, "last": 2},
]


@pytest.mark.parametrize("fields", BAD_FIELDS)
def test_a_bad_op_seq_or_epoch_is_a_bad_request_echoing_the_id(fields: dict[str, Any]) -> None:
    rig = Rig()
    rig.publish("AAPL", 5)
    request = {"op": "recover", "id": "AAPL.9", "symbol": "AAPL", "epoch": EPOCH}
    request.update({"first": 1, "last": 2})
    request.update(fields)
    request = {name: value for name, value in request.items() if value is not None}
    header, body = rig.send(orjson.dumps(request))
    assert _error(header, body) == ERROR_BAD_REQUEST
    assert header["id"] == "AAPL.9"
    assert rig.handler.rejected_by_reason == {**dict.fromkeys(ERRORS, 0), ERROR_BAD_REQUEST: 1}


@pytest.mark.parametrize("symbol", [None, "", "_hb", "has space", "A" * 65, 7, ["AAPL"], "é"])
def test_a_bad_symbol_is_refused(symbol: object) -> None:
    rig = Rig()
    rig.publish("AAPL", 2)
    header, body = rig.ask(symbol=symbol, first=1, last=1)
    assert _error(header, body) == ERROR_BAD_SYMBOL
    assert header["id"] == "AAPL.1"


def test_another_epoch_gets_unknown_epoch_with_the_current_one() -> None:
    rig = Rig()
    rig.publish("AAPL", 2)
    header, body = rig.ask(epoch=EPOCH - 1, first=1, last=1)
    assert _error(header, body) == ERROR_UNKNOWN_EPOCH
    assert header["epoch"] == EPOCH


def test_a_range_older_than_the_window_gets_not_in_window_with_oldest() -> None:
    rig = Rig()
    rig.publish("AAPL", 5)
    rig.now = START + MARK_INTERVAL_S
    rig.window.trim(rig.now)
    rig.now = START + 3 * MARK_INTERVAL_S
    rig.window.trim(rig.now)
    young = rig.publish("AAPL", 5)
    rig.now = START + 4 * MARK_INTERVAL_S
    rig.window.trim(rig.now)
    rig.now = START + MARK_INTERVAL_S + rig.config.window_s + 0.5
    rig.window.trim(rig.now)
    header, body = rig.ask(first=4, last=8)
    assert _error(header, body) == ERROR_NOT_IN_WINDOW
    assert (header["oldest"], header["latest"]) == (6, 10)
    # What is still held is served.
    header, body = rig.ask(first=6, last=10)
    assert header["ok"] is True and body == b"\n".join(young)


def test_a_range_of_a_symbol_never_published_gets_not_in_window_with_null_oldest() -> None:
    rig = Rig()
    rig.publish("AAPL", 2)
    header, body = rig.ask(symbol="QUIET", first=1, last=1)
    assert _error(header, body) == ERROR_NOT_IN_WINDOW
    assert header["oldest"] is None


def test_a_range_past_the_last_seq_gets_not_published_with_latest() -> None:
    rig = Rig()
    rig.publish("AAPL", 5)
    for first, last in [(5, 6), (6, 6), (1, 50)]:
        header, body = rig.ask(first=first, last=last)
        assert _error(header, body) == ERROR_NOT_PUBLISHED
        assert (header["oldest"], header["latest"]) == (1, 5)
    assert rig.handler.rejected_by_reason[ERROR_NOT_PUBLISHED] == 3


def test_more_than_max_ticks_gets_range_too_large_with_max_ticks() -> None:
    rig = Rig(max_ticks_per_request=10)
    frames = rig.publish("AAPL", 30)
    header, body = rig.ask(first=1, last=11)
    assert _error(header, body) == ERROR_RANGE_TOO_LARGE
    assert header["max_ticks"] == 10
    header, body = rig.ask(first=2, last=11)
    assert header["ok"] is True and body == b"\n".join(frames[1:11])


def test_a_reply_is_cut_to_max_reply_bytes_and_names_its_last_seq() -> None:
    max_reply_bytes = 65_536
    rig = Rig(max_reply_bytes=max_reply_bytes)
    frames = rig.publish("AAPL", 200, note="n" * 1_000)
    assert len(b"\n".join(frames)) > 2 * max_reply_bytes
    header, body = rig.ask(first=1, last=200)
    assert header["ok"] is True and body is not None
    assert len(body) <= max_reply_bytes
    # Most of what fits is sent (one frame is about 1,100 bytes).
    assert len(body) > max_reply_bytes - 3 * len(frames[0])
    assert header["first"] == 1 and 1 <= header["last"] < 200
    assert header["count"] == header["last"] == len(body.split(b"\n"))
    assert body.split(b"\n") == frames[: header["last"]]
    # The client asks for the rest from last + 1, until all is served.
    received = body.split(b"\n")
    while len(received) < 200:
        rig.now += 1.0
        header, body = rig.ask(first=len(received) + 1, last=200)
        assert header["ok"] is True and body is not None and len(body) <= max_reply_bytes
        assert header["first"] == len(received) + 1
        received += body.split(b"\n")
        assert header["last"] == len(received)
    assert received == frames


def test_a_client_over_its_request_rate_is_rate_limited_until_retry_after_ms() -> None:
    rate = 4
    rig = Rig(client_requests_per_s=float(rate))
    frames = rig.publish("AAPL", 3)
    headers = [rig.ask(first=1, last=3)[0] for _ in range(3 * rate)]
    served = [header["ok"] for header in headers]
    # The first `rate` requests of an instant are served; once refused, the rest are too
    # (a refusal costs no token).
    assert served[:rate] == [True] * rate
    assert False in served
    refused_from = served.index(False)
    assert served[refused_from:] == [False] * (len(served) - refused_from)
    for header in headers[refused_from:]:
        assert header["error"] == ERROR_RATE_LIMITED
        assert type(header["retry_after_ms"]) is int and header["retry_after_ms"] >= 1
    retry_after_s = headers[-1]["retry_after_ms"] / 1000
    assert retry_after_s <= 1 / rate + 0.001
    # Just before retry_after_ms still refused; at it, served again.
    rig.now = START + retry_after_s - 0.002
    assert rig.ask(first=1, last=3)[0]["error"] == ERROR_RATE_LIMITED
    rig.now = START + retry_after_s
    header, body = rig.ask(first=1, last=3)
    assert header["ok"] is True and body == b"\n".join(frames)
    assert rig.handler.rejected_by_reason[ERROR_RATE_LIMITED] == len(served) - refused_from + 1


def test_a_client_sending_within_its_rate_is_never_limited() -> None:
    rate = 4
    rig = Rig(client_requests_per_s=float(rate))
    rig.publish("AAPL", 3)
    for _ in range(40):
        assert rig.ask(first=1, last=3)[0]["ok"] is True
        rig.now += 1 / rate
    assert rig.handler.rejected_by_reason[ERROR_RATE_LIMITED] == 0


def test_one_client_rate_limited_does_not_limit_another() -> None:
    rig = Rig(client_requests_per_s=1.0)
    frames = rig.publish("AAPL", 3)
    served = [rig.ask(first=1, last=3)[0]["ok"] for _ in range(5)]
    assert served[0] is True and served[-1] is False
    assert rig.ask(first=1, last=3)[0]["error"] == ERROR_RATE_LIMITED
    header, body = rig.ask(OTHER_CLIENT, first=1, last=3)
    assert header["ok"] is True and body == b"\n".join(frames)


def test_a_client_over_its_byte_rate_is_rate_limited() -> None:
    rig = Rig(client_bytes_per_s=70_000.0, max_reply_bytes=65_536, client_requests_per_s=1e6)
    frames = rig.publish("AAPL", 50, note="n" * 1_000)
    body_bytes = len(b"\n".join(frames))
    served = [rig.ask(first=1, last=50)[0]["ok"] for _ in range(10)].index(False)
    assert served >= 1
    # The burst (70,000 bytes) and at most one reply of debt beyond it.
    assert served * body_bytes <= 70_000 + body_bytes
    header, _ = rig.ask(first=1, last=50)
    assert header["error"] == ERROR_RATE_LIMITED and header["retry_after_ms"] >= 1
    assert rig.ask(OTHER_CLIENT, first=1, last=50)[0]["ok"] is True


def test_no_inflight_room_gets_busy_retryable() -> None:
    rig = Rig(inflight_room=0)
    rig.publish("AAPL", 3)
    header, body = rig.ask(first=1, last=3)
    assert _error(header, body) == ERROR_BUSY
    assert type(header["retry_after_ms"]) is int and header["retry_after_ms"] > 0
    assert rig.handler.served_ticks == 0 and rig.handler.served_bytes == 0


def test_a_reply_that_fits_the_inflight_room_is_served() -> None:
    frames = Rig().publish("AAPL", 3)
    size = len(b"\n".join(frames))
    rig = Rig(inflight_room=size)
    assert rig.publish("AAPL", 3) == frames
    assert rig.ask(first=1, last=3)[0]["ok"] is True
    rig = Rig(inflight_room=size - 1)
    rig.publish("AAPL", 3)
    assert rig.ask(first=1, last=3)[0]["error"] == ERROR_BUSY


def test_rejected_by_reason_counts_each_refusal_once() -> None:
    rig = Rig(max_ticks_per_request=5)
    rig.publish("AAPL", 5)
    rig.send(b"nope")
    rig.send(b"nope")
    rig.send(b"{}")
    rig.ask(symbol="_x", first=1, last=1)
    rig.ask(epoch=1, first=1, last=1)
    rig.ask(first=1, last=9)
    rig.ask(first=5, last=6)
    rig.ask(first=1, last=5)
    assert rig.handler.requests == 8
    assert rig.handler.rejected_by_reason == {
        **dict.fromkeys(ERRORS, 0),
        ERROR_NOT_JSON: 2,
        ERROR_BAD_REQUEST: 1,
        ERROR_BAD_SYMBOL: 1,
        ERROR_UNKNOWN_EPOCH: 1,
        ERROR_RANGE_TOO_LARGE: 1,
        ERROR_NOT_PUBLISHED: 1,
    }
    assert rig.handler.served_ticks == 5


def test_a_symbol_whose_frames_all_aged_out_still_knows_its_latest_seq() -> None:
    rig = Rig()
    rig.publish("AAPL", 5)
    for step in range(1, 4):
        rig.now = START + step * MARK_INTERVAL_S
        rig.window.trim(rig.now)
    rig.now = START + MARK_INTERVAL_S + rig.config.window_s + 0.5
    rig.window.trim(rig.now)
    assert rig.window.lookup("AAPL", 1, 1).frames is None
    header, body = rig.ask(first=6, last=9)
    assert _error(header, body) == ERROR_NOT_PUBLISHED
    assert (header["oldest"], header["latest"]) == (None, 5)
    header, body = rig.ask(first=2, last=4)
    assert _error(header, body) == ERROR_NOT_IN_WINDOW
    assert (header["oldest"], header["latest"]) == (None, 5)


def test_a_burst_gets_exactly_client_requests_per_s_requests() -> None:
    rate = 4
    rig = Rig(client_requests_per_s=float(rate))
    rig.publish("AAPL", 3)
    served = [rig.ask(first=1, last=3)[0]["ok"] for _ in range(2 * rate)]
    assert served == [True] * rate + [False] * rate
