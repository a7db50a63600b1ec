"""Fuzzing gap recovery's request decoder end to end: any bytes, any JSON and requests a field
away from valid go through `feedsvc.server.guard.answer_recovery_request`, as the service calls
it, into a RecoveryHandler over a recovery window filled by a real Publisher (partly trimmed, on
a fake clock).

The properties are what recovery clients and operators rely on: every request gets one header
that is a JSON object with "ok"; an error is a documented code whose claim holds (the range
really is too large, past the latest seq, older than the window, ...), counted once, with no
body; a served reply holds the frames exactly as broadcast; and nothing raises inside the
handler (feedsvc_internal_errors_total{where="recovery"} stays 0).

The test command runs these derandomized (profile "ci" in tests/conftest.py); the fuzz profile
(FEEDSVC_HYPOTHESIS_PROFILE=fuzz, as scripts/fuzz.sh sets it) searches at random with many more
examples.
"""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

import orjson
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

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
    REQUEST_ID_PATTERN,
    SOURCE_MEMORY,
)
from feedsvc.protocol.ticks import symbol_problem
from feedsvc.server.guard import WHERE_RECOVERY, InputGuard, answer_recovery_request
from feedsvc.server.publisher import Publisher
from feedsvc.server.recovery.handler import RecoveryHandler
from feedsvc.server.recovery.window import MARK_INTERVAL_S, RecoveryWindow
from tests.conftest import fuzz_examples
from tests.unit.test_fuzz_entry_points import ENCODERS, JSON_VALUES, VALID_SYMBOLS

EPOCH = 1_796_190_815_129_410_273
START = 1_000.0
WINDOW_S = 10.0
# Error details are shown to operators and quoted in client logs: short whatever was sent.
MAX_DETAIL_CHARACTERS = 300
# Ticks published per symbol before and after the old ones are trimmed (OLD has only old ones).
PUBLISHED = {"AAPL": (5, 20), "MSFT": (0, 7), "OLD": (4, 0), "BIG": (0, 30)}
CLIENTS = [b"\x00a", b"\x00b", b"\x00c"]


def fuzz(ci_examples: int) -> settings:
    """This module's settings: the loaded profile's, with `ci_examples` raised under "fuzz"."""
    return settings(max_examples=fuzz_examples(ci_examples))


class Rig:
    """A publisher, its recovery window (AAPL's and OLD's first ticks trimmed by age) and a
    handler over it, wired as feedsvc/server/service.py wires them, on one fake clock."""

    def __init__(self, config: RecoveryConfig, inflight_room: int | None) -> None:
        self.now = START
        self.config = config
        self.sent: list[bytes] = []
        holder: list[Publisher] = []
        self.window = RecoveryWindow(
            WINDOW_S,
            config.max_bytes,
            published_bytes=lambda: holder[0].published_bytes if holder else 0,
            clock=self.clock,
        )
        publisher = Publisher(
            self.sent.append,
            EPOCH,
            max_symbols=100,
            clock_ns=itertools.count(1).__next__,
            window=self.window,
        )
        holder.append(publisher)
        for symbol, (old, _) in PUBLISHED.items():
            self._publish(publisher, symbol, old)
        self._trim(START + MARK_INTERVAL_S)
        self._trim(START + 3 * MARK_INTERVAL_S)
        for symbol, (_, young) in PUBLISHED.items():
            self._publish(publisher, symbol, young)
        self._trim(START + 4 * MARK_INTERVAL_S)
        # The old ticks' mark has expired, the young ones' has not.
        self._trim(START + MARK_INTERVAL_S + WINDOW_S + 0.5)
        self.frames = {
            symbol: [frame for frame in self.sent if frame.startswith(symbol.encode() + b" ")]
            for symbol in PUBLISHED
        }
        self.handler = RecoveryHandler(
            self.window,
            EPOCH,
            config,
            inflight_room=None if inflight_room is None else lambda: inflight_room,
            clock=self.clock,
        )

    def clock(self) -> float:
        return self.now

    def _trim(self, at: float) -> None:
        self.now = at
        self.window.trim(at)

    @staticmethod
    def _publish(publisher: Publisher, symbol: str, count: int) -> None:
        pad = {"note": "n" * 3_000} if symbol == "BIG" else {}
        tick = {"sym": symbol, "bid": 1.0, "ask": 1.1, "bid_size": 1, "ask_size": 1, **pad}
        assert publisher.publish([dict(tick) for _ in range(count)]) == count


def _seq_value(value: object) -> bool:
    return type(value) is int and value >= 1


def _well_formed(request: bytes) -> dict[str, Any] | None:
    """The request's fields if the protocol (docs/recovery-protocol.md) calls it well formed."""
    if len(request) > MAX_REQUEST_BYTES:
        return None
    try:
        fields = orjson.loads(request)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(fields, dict):
        return None
    request_id = fields.get("id")
    if not isinstance(request_id, str) or not REQUEST_ID_PATTERN.fullmatch(request_id):
        return None
    first, last = fields.get("first"), fields.get("last")
    if (
        fields.get("op") != "recover"
        or symbol_problem(fields.get("symbol")) is not None
        or type(fields.get("epoch")) is not int
        or not (_seq_value(first) and _seq_value(last))
        or last < first
    ):
        return None
    return fields


def _check_error(rig: Rig, request: bytes, header: dict[str, Any]) -> str:
    """An error reply whose claim holds for `request`; returns its code."""
    code = header["error"]
    assert code in ERRORS, header
    assert isinstance(header["detail"], str), header
    assert len(header["detail"]) <= MAX_DETAIL_CHARACTERS, header["detail"]
    fields = _well_formed(request)
    if code == ERROR_TOO_LARGE:
        assert len(request) > MAX_REQUEST_BYTES
    elif code == ERROR_NOT_JSON:
        assert len(request) <= MAX_REQUEST_BYTES
        try:
            orjson.loads(request)
        except orjson.JSONDecodeError:
            pass
        else:
            raise AssertionError(f"not_json for JSON text {request[:100]!r}")
    if code in (ERROR_TOO_LARGE, ERROR_NOT_JSON, ERROR_BAD_REQUEST, ERROR_BAD_SYMBOL):
        # A malformed request is refused, and a well-formed one never is.
        assert fields is None, (code, request)
        return code
    assert fields is not None, (code, request)
    # Any error after the id was read echoes it.
    assert header["id"] == fields["id"]
    first, last = fields["first"], fields["last"]
    held = rig.window.lookup(fields["symbol"], 1, 1)
    if code == ERROR_UNKNOWN_EPOCH:
        assert fields["epoch"] != EPOCH and header["epoch"] == EPOCH
    elif code == ERROR_RANGE_TOO_LARGE:
        assert last - first + 1 > rig.config.max_ticks_per_request == header["max_ticks"]
    elif code == ERROR_NOT_PUBLISHED:
        assert header["latest"] == held.latest is not None and last > held.latest
    elif code == ERROR_NOT_IN_WINDOW:
        assert header["oldest"] == held.oldest
        assert held.oldest is None or first < held.oldest
    elif code in (ERROR_RATE_LIMITED, ERROR_BUSY):
        assert type(header["retry_after_ms"]) is int and header["retry_after_ms"] >= 1
    return code


def _check_served(rig: Rig, request: bytes, header: dict[str, Any], body: bytes | None) -> int:
    """A served reply: the frames of the range as broadcast, within max_reply_bytes; returns
    how many."""
    fields = _well_formed(request)
    assert fields is not None, request
    assert fields["epoch"] == EPOCH
    first, last = fields["first"], fields["last"]
    assert header["id"] == fields["id"] and header["symbol"] == fields["symbol"]
    assert header["epoch"] == EPOCH and header["source"] == SOURCE_MEMORY
    assert header["first"] == first and first <= header["last"] <= last
    assert header["count"] == header["last"] - first + 1
    assert body is not None
    frames = body.split(b"\n")
    assert len(frames) == header["count"]
    assert len(body) <= rig.config.max_reply_bytes or len(frames) == 1
    # Seq n of a symbol is its n-th frame as broadcast.
    assert frames == rig.frames[fields["symbol"]][first - 1 : header["last"]]
    return len(frames)


def _check_stream(rig: Rig, steps: list[tuple[bytes, bytes, float]]) -> None:
    guard = InputGuard()
    served = 0
    for client, request, wait_s in steps:
        rig.now += wait_s
        rejected_before = Counter(rig.handler.rejected_by_reason)
        reply = answer_recovery_request(client, request, rig.handler, guard)
        header = orjson.loads(reply.header)
        assert isinstance(header, dict) and isinstance(header.get("ok"), bool), header
        rejected = Counter(rig.handler.rejected_by_reason)
        rejected.subtract(rejected_before)
        if header["ok"]:
            served += _check_served(rig, request, header, reply.body)
            assert +rejected == Counter()
            event("recovery reply: served")
        else:
            assert reply.body is None
            code = _check_error(rig, request, header)
            assert +rejected == Counter({code: 1})
            event(f"recovery reply: {code}")
    assert rig.handler.requests == len(steps)
    assert rig.handler.served_ticks == served
    # Contained or not, an exception is a bug the handler's validation did not foresee.
    assert guard.errors_by_where[WHERE_RECOVERY] == 0
    assert guard.errors_total == 0


def _encoded(documents: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    return st.builds(
        lambda encode, document: encode(document), st.sampled_from(ENCODERS), documents
    )


def _mostly(valid: st.SearchStrategy[Any], other: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`valid` nine times out of ten, else `other`: inputs one field away from valid."""
    return st.integers(0, 9).flatmap(lambda draw: valid if draw else other)


REQUEST_IDS = st.one_of(
    st.from_regex(REQUEST_ID_PATTERN, fullmatch=True),
    st.sampled_from(["AAPL.1", "x" * 64]),
)
# orjson writes integers of at most 64 bits (larger ones are in the examples, written by hand).
INT64S = st.integers(-(2**63), 2**64 - 1)
SEQS = st.one_of(st.integers(1, 40), INT64S)
NEAR_REQUESTS = st.builds(
    lambda extra, request: {**extra, **request},
    # Unknown fields, sometimes padding the request past MAX_REQUEST_BYTES.
    st.dictionaries(st.sampled_from(["pad", "x", "note"]), st.text(max_size=1_100), max_size=1),
    st.fixed_dictionaries(
        {
            "op": _mostly(st.just("recover"), JSON_VALUES),
            "id": _mostly(REQUEST_IDS, st.one_of(JSON_VALUES, st.text(min_size=60, max_size=70))),
            "symbol": _mostly(
                st.sampled_from([*PUBLISHED, "QUIET"]),
                st.one_of(VALID_SYMBOLS, JSON_VALUES, st.sampled_from(["_hb", "", "a b"])),
            ),
            "epoch": _mostly(st.just(EPOCH), st.one_of(INT64S, JSON_VALUES)),
            "first": _mostly(SEQS, JSON_VALUES),
            "last": _mostly(SEQS, JSON_VALUES),
        }
    ),
)
# Every field present and of the right type: what reaches the window and the limits.
VALID_REQUESTS = st.builds(
    lambda request_id, symbol, epoch, first, length: orjson.dumps(
        {
            "op": "recover",
            "id": request_id,
            "symbol": symbol,
            "epoch": epoch,
            "first": first,
            "last": first + length,
        }
    ),
    REQUEST_IDS,
    st.sampled_from([*PUBLISHED, "QUIET"]),
    st.sampled_from([EPOCH] * 9 + [EPOCH - 1]),
    st.integers(1, 35),
    st.one_of(st.integers(0, 3), st.integers(0, 30)),
)
# Ranges the window holds (AAPL's first 5 ticks are trimmed): what is served.
HELD = {"AAPL": (6, 25), "MSFT": (1, 7), "BIG": (1, 30)}
HELD_REQUESTS = st.sampled_from(sorted(HELD)).flatmap(
    lambda symbol: st.builds(
        lambda request_id, first, length: orjson.dumps(
            {
                "op": "recover",
                "id": request_id,
                "symbol": symbol,
                "epoch": EPOCH,
                "first": first,
                "last": min(first + length, HELD[symbol][1]),
            }
        ),
        REQUEST_IDS,
        st.integers(*HELD[symbol]),
        st.one_of(st.integers(0, 2), st.integers(0, 30)),
    )
)
ARBITRARY_OBJECTS = st.dictionaries(st.text(max_size=10), JSON_VALUES, max_size=8)


def _with_truncations(requests: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    truncated = requests.flatmap(lambda data: st.integers(0, len(data)).map(lambda n: data[:n]))
    return st.one_of(requests, truncated)


REQUESTS = st.one_of(
    st.binary(max_size=1_200),
    _encoded(JSON_VALUES),
    _encoded(ARBITRARY_OBJECTS),
    _encoded(NEAR_REQUESTS),
    _encoded(NEAR_REQUESTS),
    VALID_REQUESTS,
    HELD_REQUESTS,
    HELD_REQUESTS,
    _with_truncations(st.one_of(VALID_REQUESTS, _encoded(NEAR_REQUESTS))),
)
STEPS = st.lists(
    st.tuples(
        st.sampled_from([CLIENTS[0], *CLIENTS]),
        REQUESTS,
        st.sampled_from([0.0, 0.0, 0.01, 0.3, 2.0]),
    ),
    min_size=1,
    max_size=12,
)
CONFIGS = st.builds(
    lambda max_ticks, max_reply_bytes, requests_per_s, bytes_per_s: RecoveryConfig(
        window_s=WINDOW_S,
        max_ticks_per_request=max_ticks,
        max_reply_bytes=max_reply_bytes,
        client_requests_per_s=requests_per_s,
        client_bytes_per_s=bytes_per_s,
    ),
    st.sampled_from([1, 10, 10_000]),
    # 65,536 is the config's minimum: BIG's 30 frames (about 90 kB) do not fit in it.
    st.sampled_from([65_536, 8_388_608]),
    st.sampled_from([0.5, 0.5, 3.0, 200.0]),
    st.sampled_from([1_024.0, 33_554_432.0]),
)
INFLIGHT_ROOMS = st.one_of(st.none(), st.just(0), st.integers(0, 200_000))
DEFAULT_CONFIG = RecoveryConfig(window_s=WINDOW_S)


def _request(**fields: Any) -> bytes:
    return orjson.dumps({"op": "recover", "id": "r.1", "symbol": "AAPL", "epoch": EPOCH, **fields})


@fuzz(200)
@given(config=CONFIGS, inflight_room=INFLIGHT_ROOMS, steps=STEPS)
@example(config=DEFAULT_CONFIG, inflight_room=None, steps=[(CLIENTS[0], b"\xff" * 2000, 0.0)])
@example(
    config=DEFAULT_CONFIG,
    inflight_room=None,
    steps=[
        (CLIENTS[0], _request(first=6, last=25), 0.0),
        (CLIENTS[0], _request(first=1, last=6), 0.0),
        (CLIENTS[0], _request(first=25, last=26), 0.0),
        (CLIENTS[0], _request(symbol="BIG", first=1, last=30), 0.0),
        (CLIENTS[0], _request(symbol="OLD", first=1, last=4), 0.0),
        (CLIENTS[0], _request(first=2**64 - 1, last=2**64 - 1), 0.0),
        (CLIENTS[0], _request(first=1, last=2**64 - 1), 0.0),
        # Integers past 64 bits (any JSON writer may send them): orjson does not read them.
        (CLIENTS[0], _request(first=1)[:-1] + b',"last":' + b"9" * 30 + b"}", 0.0),
        (CLIENTS[0], _request(first=1, last=2)[:-1] + b',"epoch":-' + b"9" * 30 + b"}", 0.0),
    ],
)
@example(
    config=RecoveryConfig(window_s=WINDOW_S, client_requests_per_s=0.5),
    inflight_room=None,
    steps=[(CLIENTS[0], _request(first=6, last=7), 0.0)] * 4
    + [(CLIENTS[1], _request(first=6, last=7), 0.0), (CLIENTS[0], _request(first=6, last=7), 2.0)],
)
def test_every_recovery_request_gets_one_header_served_or_a_counted_documented_error(
    config: RecoveryConfig, inflight_room: int | None, steps: list[tuple[bytes, bytes, float]]
) -> None:
    """Whatever clients send, through answer_recovery_request as the service calls it: one
    header, a JSON object with "ok"; served, the frames of the range as broadcast (cut to
    max_reply_bytes); refused, a documented error whose claim holds, counted once, no body;
    and no internal error."""
    _check_stream(Rig(config, inflight_room), steps)


@fuzz(200)
@given(request=st.one_of(st.binary(max_size=1_200), _encoded(ARBITRARY_OBJECTS)))
def test_arbitrary_bytes_and_objects_never_raise_and_get_an_error_header(request: bytes) -> None:
    """Random bytes and random JSON objects (no near-valid fields) are refused with a
    documented error, without an internal error."""
    rig = Rig(DEFAULT_CONFIG, None)
    guard = InputGuard()
    reply = answer_recovery_request(CLIENTS[0], request, rig.handler, guard)
    header = orjson.loads(reply.header)
    assert isinstance(header, dict) and "ok" in header
    if header["ok"] is not True:
        assert header["ok"] is False and header["error"] in ERRORS
        assert reply.body is None
    assert guard.errors_by_where[WHERE_RECOVERY] == 0
