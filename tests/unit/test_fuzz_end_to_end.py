"""End-to-end fuzzing of the handlers that take outside input, through the code the service runs.

test_fuzz_entry_points.py fuzzes the decoder and the sync handler on their own; here the inputs go
through `feedsvc.guard.handle_ingest_frame` (decode, validate, publish) and
`feedsvc.guard.answer_sync_request` into a real `Publisher` whose socket is a list, and through
`SubscriptionLimiter.observe` as the XPUB loop calls it. The properties are what subscribers,
sync clients and operators rely on: what is published is a well-formed frame in contiguous
sequence, everything else is counted once, and no bound is exceeded whatever arrives.

CI runs these derandomized (profile "ci" in tests/conftest.py); scripts/fuzz.sh runs them at
random with many more examples (profile "fuzz").
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from feedsvc.protocol.sync import ERROR_BUSY, ERRORS, MARKER_TOPIC_PREFIX
from feedsvc.protocol.ticks import REJECT_INTERNAL_ERROR, TOPIC_DELIMITER, tick_problem
from feedsvc.server.access import (
    REFUSED_SUBSCRIPTION_TOO_LONG,
    REFUSED_TOO_MANY_SUBSCRIPTIONS,
    SUBSCRIBE,
    UNSUBSCRIBE,
    SubscriptionLimiter,
)
from feedsvc.server.guard import WHERE_INGEST, InputGuard, answer_sync_request, handle_ingest_frame
from feedsvc.server.ingest import IngestDecoder
from feedsvc.server.publisher import UNBOUNDED, Publisher
from feedsvc.server.sockets import MAX_SUBSCRIPTION_PREFIX_BYTES
from feedsvc.server.sync import SyncHandler
from tests.conftest import fuzz_examples
from tests.unit.test_fuzz_entry_points import (
    ENCODERS,
    INGEST_FRAMES,
    JSON_SCALARS,
    JSON_VALUES,
    NEAR_TICKS,
    PRICES,
    SIZES,
    SYNC_IDS,
    SYNC_REQUEST_DICTS,
    SYNC_REQUESTS,
    VALID_SYMBOLS,
    VALID_TICKS,
)


def fuzz(ci_examples: int) -> settings:
    """This module's settings: the loaded profile's, with `ci_examples` raised under "fuzz"."""
    return settings(max_examples=fuzz_examples(ci_examples))


EPOCH = 1_795_427_742_012_345_678
# The README's limit on a published tick's nesting (the tick itself is level 1).
MAX_PUBLISHED_NESTING = 64
# Error details are shown to operators and quoted in client logs: short whatever was sent.
MAX_DETAIL_CHARACTERS = 300


def _encoded(documents: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    return st.builds(
        lambda encode, document: encode(document), st.sampled_from(ENCODERS), documents
    )


def _nesting(value: object) -> int:
    """Levels of containers in `value` (a scalar is 0, `{}` is 1); iterative, so a deep value
    cannot exhaust the test's own stack."""
    deepest = 0
    pending: list[tuple[object, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        pending.extend((child, depth + 1) for child in children)
    return deepest


def _nested_json(kinds: list[bool], leaf: bytes = b"0") -> bytes:
    """JSON text of containers nested len(kinds) deep (True: a list, False: an object), written
    by hand: orjson.dumps refuses more than 254 levels, the decoder reads up to 1024."""
    opening = b"".join(b"[" if is_list else b'{"k":' for is_list in kinds)
    closing = b"".join(b"]" if is_list else b"}" for is_list in reversed(kinds))
    return opening + leaf + closing


def _with_raw_field(tick: dict[str, Any], name: str, raw_json: bytes) -> bytes:
    """The tick's JSON with one more field whose value is `raw_json`, verbatim."""
    body = orjson.dumps({key: value for key, value in tick.items() if key != name})
    separator = b"," if len(body) > 2 else b""
    return body[:-1] + separator + orjson.dumps(name) + b":" + raw_json + b"}"


def _array(items: list[bytes]) -> bytes:
    return b"[" + b",".join(items) + b"]"


# Symbols few enough that a stream revisits them: seqs must then continue where they stopped.
SYMBOLS = [f"S{index}" for index in range(10)]
TICKS = st.fixed_dictionaries(
    {
        "sym": st.sampled_from(SYMBOLS[:4]),
        "bid": PRICES,
        "ask": PRICES,
        "bid_size": SIZES,
        "ask_size": SIZES,
    }
)
# How containers alternate going down (True: a list): a pattern, not a drawn boolean per level,
# so that a thousand levels cost one draw and shrink at once.
NESTING_PATTERNS: list[Callable[[int], bool]] = [
    lambda level: True,
    lambda level: False,
    lambda level: level % 2 == 0,
    lambda level: level % 3 != 0,
]


def _nesting_kinds(min_depth: int, max_depth: int) -> st.SearchStrategy[list[bool]]:
    return st.builds(
        lambda depth, pattern: [pattern(level) for level in range(depth)],
        st.integers(min_depth, max_depth),
        st.sampled_from(NESTING_PATTERNS),
    )


# A pass-through field nested d deep makes the tick 1 + d levels: depths around the limit weigh
# most, deeper ones go up to orjson.loads' own limit (1024) and past it.
NESTING_KINDS = st.one_of(
    _nesting_kinds(MAX_PUBLISHED_NESTING - 6, MAX_PUBLISHED_NESTING + 6), _nesting_kinds(1, 1100)
)
DEEP_TICKS = st.builds(
    lambda tick, kinds: _with_raw_field(tick, "x", _nested_json(kinds)),
    st.one_of(TICKS, VALID_TICKS),
    NESTING_KINDS,
)
# A batch whose other elements hold no bracket: what a "count the brackets" shortcut misjudges.
DEEP_FRAMES = st.builds(
    lambda numbers, deep, shallow, as_batch: (
        _array([b"%d" % n for n in range(numbers)] + [deep] + [orjson.dumps(t) for t in shallow])
        if as_batch
        else deep
    ),
    st.integers(0, 450),
    DEEP_TICKS,
    st.lists(TICKS, max_size=3),
    st.booleans(),
)
# Frame sizes the limits below are drawn from: long strings aim at them from both sides.
TICK_BYTES_CHOICES = [256, 1024, 4096]
# Characters and the bytes each takes in orjson's output (control characters are \u-escaped).
WIDE_CHARACTERS = {"x": 1, '"': 2, "\u00e9": 2, "\u20ac": 3, "\U0001f4c8": 4, "\x01": 6}
HUGE_STRING_TICKS = st.builds(
    lambda tick, field, target, offset, character: orjson.dumps(
        {**tick, field: character * max(0, (target - offset) // WIDE_CHARACTERS[character])}
    ),
    TICKS,
    st.sampled_from(["venue", "note"]),
    st.sampled_from(TICK_BYTES_CHOICES),
    # A tick's other fields and the stamped seq/epoch/ts take roughly 100 to 250 bytes.
    st.integers(-64, 320),
    st.sampled_from(sorted(WIDE_CHARACTERS)),
)
# Feed handlers inventing symbols: each frame brings a run of names never seen before.
NEW_SYMBOL_FRAMES = st.builds(
    lambda first, count, pad: orjson.dumps(
        [
            {"sym": f"N{first + index}", "bid": 1, "ask": 2, "bid_size": 1, "ask_size": 1}
            | ({"venue": "v" * pad} if pad else {})
            for index in range(count)
        ]
    ),
    st.integers(0, 10**6),
    st.integers(1, 40),
    st.sampled_from([0, 0, 100, 600]),
)
BATCHES = _encoded(
    st.lists(st.one_of(TICKS, VALID_TICKS, NEAR_TICKS, JSON_SCALARS, JSON_VALUES), max_size=12)
)
INGEST_STREAM_FRAMES = st.one_of(
    INGEST_FRAMES,  # arbitrary bytes, JSON structures, near-valid ticks, truncated frames
    BATCHES,
    # Plain valid ticks of a few symbols, so that streams revisit symbols and seqs must go on.
    TICKS.map(orjson.dumps),
    st.lists(TICKS, min_size=1, max_size=8).map(orjson.dumps),
    DEEP_FRAMES,
    HUGE_STRING_TICKS,
    HUGE_STRING_TICKS.flatmap(
        lambda huge: st.lists(TICKS, max_size=3).map(
            lambda ticks: _array([huge, *map(orjson.dumps, ticks)])
        )
    ),
    NEW_SYMBOL_FRAMES,
)

# The attack: 400 elements that hold no container, then a valid tick whose pass-through field
# orjson reads (300 < 1024 levels) but cannot write back (300 > 254): published, it would fail
# in the hot path.
ATTACK_TICK = {"sym": "S0", "bid": 1.5, "ask": 1.6, "bid_size": 100, "ask_size": 200}
ATTACK_FRAME = _array(
    [b"%d" % n for n in range(400)]
    + [_with_raw_field(ATTACK_TICK, "x", _nested_json([True] * 300))]
)


def _elements(frame: bytes, max_message_bytes: int) -> list[object] | None:
    """The input elements of a frame (see the counting rule in the ingest test), or None for a
    frame that counts as one element because it is too large or not JSON."""
    if len(frame) > max_message_bytes:
        return None
    try:
        decoded = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return None
    return decoded if isinstance(decoded, list) else [decoded]


def _counted(decoder: IngestDecoder, publisher: Publisher) -> int:
    return sum(decoder.rejected_by_reason.values()) + sum(publisher.refused_by_reason.values())


def _check_published_frame(
    frame: bytes, elements: list[object], cursor: int, max_tick_bytes: int, last_seq: dict[str, int]
) -> tuple[str, int, bytes, int]:
    """Check one published frame against the input and the symbol's last seq; returns its topic,
    seq and payload, and the index after the input element it was made from (elements are
    published in order)."""
    topic_bytes, delimiter, payload = frame.partition(TOPIC_DELIMITER)
    assert delimiter == TOPIC_DELIMITER, frame[:100]
    assert len(frame) <= max_tick_bytes
    # Plain orjson, as a subscriber in any language would read it: no feedsvc helper.
    tick = orjson.loads(payload)
    assert isinstance(tick, dict)
    topic = topic_bytes.decode()
    assert topic == tick["sym"]
    previous = last_seq.get(topic, 0)
    assert tick["seq"] == previous + 1, (topic, tick["seq"], previous)
    assert tick["epoch"] == EPOCH and type(tick["ts"]) is int
    assert _nesting(tick) <= MAX_PUBLISHED_NESTING
    stamps = {"seq": tick["seq"], "epoch": EPOCH, "ts": tick["ts"]}
    for index in range(cursor, len(elements)):
        element = elements[index]
        # Pass-through fields arrive unchanged; only the publisher's own fields are stamped.
        if isinstance(element, dict) and {**element, **stamps} == tick:
            assert tick_problem(element) is None, element
            return topic, tick["seq"], payload, index + 1
    raise AssertionError(f"published tick {payload[:200]!r} is no remaining input element")


def _check_ingest_stream(
    frames: list[bytes],
    max_message_bytes: int,
    max_tick_bytes: int,
    max_symbols: int,
    max_cache_bytes: int,
) -> None:
    sent: list[bytes] = []
    decoder = IngestDecoder(max_message_bytes)
    publisher = Publisher(
        sent.append,
        EPOCH,
        max_symbols,
        clock_ns=itertools.count(1).__next__,
        max_tick_bytes=max_tick_bytes,
        max_cache_bytes=max_cache_bytes,
    )
    guard = InputGuard()
    last_seq: dict[str, int] = {}
    last_payload: dict[str, bytes] = {}
    for frame in frames:
        counted_before, sent_before = _counted(decoder, publisher), len(sent)
        reasons_before = Counter(decoder.rejected_by_reason) + Counter(publisher.refused_by_reason)
        published = handle_ingest_frame(frame, decoder, publisher, guard)
        new_frames = sent[sent_before:]
        assert published == len(new_frames)
        elements = _elements(frame, max_message_bytes)
        element_count = 1 if elements is None else len(elements)
        cursor = 0
        for sent_frame in new_frames:
            assert elements is not None
            topic, seq, payload, cursor = _check_published_frame(
                sent_frame, elements, cursor, max_tick_bytes, last_seq
            )
            last_seq[topic], last_payload[topic] = seq, payload
        assert _counted(decoder, publisher) - counted_before == element_count - published
        # What the stream reached, for --hypothesis-show-statistics.
        reasons = Counter(decoder.rejected_by_reason) + Counter(publisher.refused_by_reason)
        for reason in reasons - reasons_before:
            event(f"ingest frame: counted {reason}")
        if published:
            event("ingest frame: published")
        assert publisher.cache_bytes <= max_cache_bytes
        assert publisher.symbol_count <= max_symbols
        last_values = publisher.last_values(None)
        assert set(last_payload) <= set(last_values)
        for symbol, value in last_values.items():
            # A symbol admitted whose every tick was refused has nothing to snapshot.
            expected = (last_seq[symbol], last_payload[symbol]) if symbol in last_seq else (0, None)
            assert value == expected, symbol
    if any(seq >= 3 for seq in last_seq.values()):
        event("ingest stream: a symbol reached seq 3")
    assert guard.errors_by_where[WHERE_INGEST] == decoder.rejected_by_reason[REJECT_INTERNAL_ERROR]
    # Contained or not, an exception is a bug validation did not foresee: none may happen.
    assert guard.errors_total == 0
    assert publisher.refused_by_reason[REJECT_INTERNAL_ERROR] == 0


@fuzz(150)
@given(
    frames=st.lists(INGEST_STREAM_FRAMES, min_size=3, max_size=10),
    max_message_bytes=st.sampled_from([512, 8192, 1 << 20]),
    max_tick_bytes=st.sampled_from(TICK_BYTES_CHOICES),
    max_symbols=st.one_of(st.integers(1, 6), st.just(100_000)),
    max_cache_bytes=st.one_of(st.integers(0, 6000), st.integers(6000, 60_000), st.just(UNBOUNDED)),
)
@example(
    # The attack, then an ordinary tick of the same symbol: the refused one used no seq.
    frames=[ATTACK_FRAME, orjson.dumps(ATTACK_TICK)],
    max_message_bytes=1 << 20,
    max_tick_bytes=16_384,
    max_symbols=100_000,
    max_cache_bytes=UNBOUNDED,
)
def test_every_ingest_element_is_published_once_in_sequence_or_counted_once(
    frames: list[bytes],
    max_message_bytes: int,
    max_tick_bytes: int,
    max_symbols: int,
    max_cache_bytes: int,
) -> None:
    """A stream of ingest frames, whatever they hold, through decode -> validate -> publish.

    Counting rule: a frame longer than ingest.max_message_bytes, or not JSON, is one input
    element; a JSON array is as many elements as it has items (an empty array is none); any
    other JSON value is one element. Each element is either published exactly once or counted
    exactly once: over each frame, the increase of the decoder's rejected_by_reason plus the
    publisher's refused_by_reason equals the elements not published.

    A published element is a frame `sym + b" " + JSON` that plain orjson reads after the first
    space, equal to the input element with only seq/epoch/ts stamped, its seq one more than the
    symbol's previous one (refused ticks leave no gap), at most 64 levels deep and at most
    max_tick_bytes long. The cache stays within max_cache_bytes and max_symbols, and
    last_values(None) holds exactly each symbol's last published payload.
    """
    _check_ingest_stream(frames, max_message_bytes, max_tick_bytes, max_symbols, max_cache_bytes)


# The sync handler's publisher: these symbols got ticks, "BIG" was admitted but its only tick
# was refused (too large), "QUIET" was never seen.
SYNC_MAX_TICK_BYTES = 1024
SYNC_SYMBOLS = [*SYMBOLS, "BIG", "QUIET"]
SYNC_PUBLISHED = st.lists(
    st.fixed_dictionaries(
        {
            "sym": st.sampled_from(SYMBOLS),
            "bid": PRICES,
            "ask": PRICES,
            "bid_size": SIZES,
            "ask_size": SIZES,
        },
        optional={"venue": st.text(max_size=30), "x": JSON_VALUES},
    ),
    min_size=1,
    max_size=20,
)
SYMBOL_NAMES = st.one_of(st.sampled_from(SYNC_SYMBOLS), VALID_SYMBOLS)
BAD_SYMBOL_VALUES = st.one_of(
    JSON_VALUES, st.sampled_from(["_hb", "_sync.m", "has space", "", "A" * 65, "caf\u00e9"])
)


def _request(op: object, client: object, marker: object, extra: dict[str, Any]) -> bytes:
    return orjson.dumps({"op": op, "client": client, "marker": marker, **extra})


def _raw_request(symbols_json: bytes) -> bytes:
    """A snapshot request whose symbols value is given as JSON text (nested past what orjson
    writes)."""
    return b'{"op":"snapshot","client":"c1","marker":"m1","symbols":' + symbols_json + b"}"


VALID_SYNC_REQUESTS = st.builds(
    _request,
    st.sampled_from(["snapshot", "snapshot", "ready"]),
    SYNC_IDS,
    SYNC_IDS,
    st.one_of(
        st.just({}),
        st.just({"symbols": None}),
        st.lists(SYMBOL_NAMES, max_size=12).map(lambda symbols: {"symbols": symbols}),
    ),
)
# Lists long enough for too_many_symbols and too_large, built in one step (drawing thousands of
# elements one by one would be slow to generate and to shrink).
HUGE_LIST_REQUESTS = st.builds(
    lambda count, bad_at, name: _request(
        "snapshot",
        "c1",
        "m1",
        {
            "symbols": [
                ("_bad" if index == bad_at else f"{name}{index % 12}") for index in range(count)
            ]
        },
    ),
    st.one_of(st.integers(0, 40), st.integers(0, 40_000)),
    st.integers(-1, 40_000),
    st.sampled_from(["S", "N", "A" * 60]),
)
# One field away from valid: one of the four fields replaced by any JSON value, or by a list of
# values that are no symbol (wrong types mostly, and symbols lists that must be refused).
WRONG_TYPE_REQUESTS = st.builds(
    lambda field, value, base: orjson.dumps({**orjson.loads(base), field: value}),
    st.sampled_from(["op", "client", "marker", "symbols"]),
    st.one_of(JSON_VALUES, st.lists(BAD_SYMBOL_VALUES, min_size=1, max_size=3)),
    VALID_SYNC_REQUESTS,
)
DEEP_SYMBOLS_REQUESTS = st.builds(
    lambda kinds, wrapped: _raw_request(
        b"[" + _nested_json(kinds, b'"S0"') + b"]" if wrapped else _nested_json(kinds, b'"S0"')
    ),
    st.one_of(_nesting_kinds(1, 5), _nesting_kinds(250, 1100)),
    st.booleans(),
)
SYNC_STREAM_REQUESTS = st.one_of(
    SYNC_REQUESTS,  # arbitrary bytes, near-valid objects, truncated requests
    _encoded(SYNC_REQUEST_DICTS),
    VALID_SYNC_REQUESTS,
    HUGE_LIST_REQUESTS,
    WRONG_TYPE_REQUESTS,
    DEEP_SYMBOLS_REQUESTS,
)
SYNC_LIMITS = st.fixed_dictionaries(
    {
        "max_symbols_per_request": st.sampled_from([4, 10_000]),
        "max_request_bytes": st.sampled_from([512, 1 << 20]),
        "max_snapshot_bytes": st.sampled_from([300, 3000, 1 << 26]),
        "snapshot_room": st.one_of(st.just(1 << 40), st.integers(-10, 5000)),
    }
)
DEEP_SYMBOLS_REQUEST = _raw_request(b"[" + _nested_json([True] * 1000) + b"]")
UNLIMITED_SYNC = {
    "max_symbols_per_request": 10_000,
    "max_request_bytes": 1 << 20,
    "max_snapshot_bytes": 1 << 26,
    "snapshot_room": 1 << 40,
}


def _sync_rig(ticks: list[dict[str, Any]], limits: dict[str, int]) -> tuple[Publisher, SyncHandler]:
    """A publisher that has published `ticks` (and refused BIG's), and a handler over it wired
    as feedsvc/service.py wires it."""
    publisher = Publisher(
        lambda frame: None,
        EPOCH,
        100,
        clock_ns=itertools.count(1).__next__,
        max_tick_bytes=SYNC_MAX_TICK_BYTES,
    )
    big = {"sym": "BIG", "bid": 1, "ask": 2, "bid_size": 1, "ask_size": 1}
    publisher.publish([{**big, "venue": "v" * SYNC_MAX_TICK_BYTES}, *ticks])
    room = limits["snapshot_room"]
    handler = SyncHandler(
        publisher.last_values,
        EPOCH,
        limits["max_symbols_per_request"],
        limits["max_request_bytes"],
        limits["max_snapshot_bytes"],
        snapshot_room=lambda: room,
        all_symbols_bytes=lambda: (publisher.symbol_count, publisher.cache_bytes),
    )
    return publisher, handler


def _check_snapshot_reply(
    request: bytes, reply: Any, decoded: dict[str, Any], publisher: Publisher
) -> None:
    fields = orjson.loads(request)
    assert fields["op"] == "snapshot"
    marker = fields["marker"]
    assert decoded["epoch"] == EPOCH and decoded["marker"] == MARKER_TOPIC_PREFIX + marker
    symbols = fields.get("symbols")
    last_values = publisher.last_values(None if symbols is None else symbols)
    assert decoded["snapshot"] == {
        symbol: {"seq": seq, "tick": None if payload is None else orjson.loads(payload)}
        for symbol, (seq, payload) in last_values.items()
    }
    # Embedded as broadcast, byte for byte.
    assert all(payload is None or payload in reply.reply for _, payload in last_values.values())
    assert reply.marker_frame is not None
    topic, delimiter, body = reply.marker_frame.partition(TOPIC_DELIMITER)
    assert delimiter and topic.decode() == MARKER_TOPIC_PREFIX + marker
    assert orjson.loads(body) == {"epoch": EPOCH, "marker": marker}


@fuzz(150)
@given(
    ticks=SYNC_PUBLISHED,
    requests=st.lists(SYNC_STREAM_REQUESTS, min_size=1, max_size=6),
    limits=SYNC_LIMITS,
)
@example(
    ticks=[{"sym": "S0", "bid": 1, "ask": 2, "bid_size": 1, "ask_size": 1}],
    requests=[DEEP_SYMBOLS_REQUEST],
    limits=UNLIMITED_SYNC,
)
def test_every_sync_request_gets_one_json_object_served_or_a_counted_bounded_error(
    ticks: list[dict[str, Any]], requests: list[bytes], limits: dict[str, int]
) -> None:
    """Whatever a client sends, through answer_sync_request as the service calls it: the reply
    is one JSON object, either ok (a snapshot equal to the publisher's last values with a marker
    frame `_sync.<marker> {json}` of the same epoch and marker, or a ready ack) or ok:false with
    a documented error, a short detail and no marker frame, counted exactly once by reason."""
    publisher, handler = _sync_rig(ticks, limits)
    guard = InputGuard()
    served = 0
    for request in requests:
        rejected_before = Counter(handler.rejected_by_reason)
        reply = answer_sync_request(request, handler, guard)
        decoded = orjson.loads(reply.reply)
        assert isinstance(decoded, dict)
        rejected = Counter(handler.rejected_by_reason)
        rejected.subtract(rejected_before)
        event(f"sync reply: {decoded.get('error', 'snapshot' if 'snapshot' in decoded else 'ok')}")
        if decoded["ok"] is True:
            assert +rejected == Counter()
            if "snapshot" in decoded:
                _check_snapshot_reply(request, reply, decoded, publisher)
                served += 1
            else:
                assert decoded == {"ok": True} and reply.marker_frame is None
                assert orjson.loads(request)["op"] == "ready"
            continue
        assert decoded["ok"] is False and set(decoded) == {"ok", "error", "detail"}
        assert decoded["error"] in ERRORS
        assert isinstance(decoded["detail"], str)
        assert len(decoded["detail"]) <= MAX_DETAIL_CHARACTERS, decoded["detail"]
        assert reply.marker_frame is None
        assert +rejected == Counter({decoded["error"]: 1})
    assert handler.snapshots_served == served
    # Contained or not, an exception is a bug the handler's validation did not foresee.
    assert guard.errors_total == 0


@fuzz(100)
@given(ticks=SYNC_PUBLISHED, request=SYNC_STREAM_REQUESTS)
@example(
    ticks=[{"sym": "S0", "bid": 1, "ask": 2, "bid_size": 1, "ask_size": 1}],
    request=_request("snapshot", "c1", "m1", {}),
)
@example(
    ticks=[{"sym": "S0", "bid": 1, "ask": 2, "bid_size": 1, "ask_size": 1}],
    request=_request("snapshot", "c1", "m1", {"symbols": []}),
)
def test_with_no_snapshot_room_every_valid_snapshot_request_is_answered_busy(
    ticks: list[dict[str, Any]], request: bytes
) -> None:
    """With sync.max_inflight_bytes taken by replies still on their way (snapshot_room 0), a
    request that would be served gets `busy` (retryable) and no marker; any other request gets
    the same answer as with room to spare."""
    _, open_handler = _sync_rig(ticks, UNLIMITED_SYNC)
    _, full_handler = _sync_rig(ticks, {**UNLIMITED_SYNC, "snapshot_room": 0})
    guard = InputGuard()
    served = orjson.loads(answer_sync_request(request, open_handler, guard).reply)
    reply = answer_sync_request(request, full_handler, guard)
    answered = orjson.loads(reply.reply)
    if served["ok"] is True and "snapshot" in served:
        assert answered["ok"] is False and answered["error"] == ERROR_BUSY, answered
        assert reply.marker_frame is None
        assert full_handler.snapshots_served == 0
    else:
        assert answered == served
    assert guard.errors_total == 0


# Connections of the XPUB socket: descriptors far above any open one, so that the limiter's
# close_connection() on a refusal finds no socket and closes nothing real.
FAKE_FDS = [10**6 + index for index in range(4)]
# Few prefixes, so that connections share them and unsubscribe what they subscribed.
_SHARED_PREFIXES = st.sampled_from([b"", b"S0 ", b"S1 ", b"_hb ", b"S", b"_sync.m "])
PREFIXES = st.one_of(_SHARED_PREFIXES, _SHARED_PREFIXES, st.binary(max_size=10))
SUBSCRIPTION_MESSAGES = st.one_of(
    st.builds(
        lambda command, prefix: bytes([command]) + prefix,
        # Mostly subscribes, so that the bounds are reached; any other command is ignored.
        st.sampled_from([*[SUBSCRIBE] * 5, UNSUBSCRIBE, UNSUBSCRIBE, 2, 255]),
        PREFIXES,
    ),
    st.just(b""),
)


class SubscriptionModel:
    """What the limiter should hold: each connection's subscriptions (a prefix subscribed twice
    is held twice, as libzmq counts it), written from the bounds' definitions."""

    def __init__(self, per_connection: int, total: int, max_prefix: int, max_distinct: int) -> None:
        self.bounds = (per_connection, total, max_prefix, max_distinct)
        self.held: dict[int, Counter[bytes]] = {}
        self.refused: Counter[str] = Counter()

    @property
    def total(self) -> int:
        return sum(sum(prefixes.values()) for prefixes in self.held.values())

    @property
    def distinct_bytes(self) -> int:
        return sum(len(prefix) for prefix in self._distinct())

    def _distinct(self) -> set[bytes]:
        return {prefix for prefixes in self.held.values() for prefix in +prefixes}

    def observe(self, message: bytes, fd: int) -> bool:
        """Whether the connection is kept after `message`."""
        per_connection, total, max_prefix, max_distinct = self.bounds
        prefixes = self.held.setdefault(fd, Counter())
        command, prefix = (message[0], message[1:]) if message else (None, b"")
        if command == UNSUBSCRIBE and prefixes[prefix] > 0:
            prefixes[prefix] -= 1
        if command != SUBSCRIBE:
            return True
        new_prefix = prefix not in self._distinct()
        if len(prefix) > max_prefix:
            reason = REFUSED_SUBSCRIPTION_TOO_LONG
        elif (
            sum(prefixes.values()) + 1 > per_connection
            or self.total + 1 > total
            or (new_prefix and self.distinct_bytes + len(prefix) > max_distinct)
        ):
            reason = REFUSED_TOO_MANY_SUBSCRIPTIONS
        else:
            prefixes[prefix] += 1
            return True
        self.refused[reason] += 1
        del self.held[fd]  # closed: libzmq drops every subscription the connection held
        return False


@fuzz(400)
@given(
    events=st.lists(
        # None: the connection ended (the monitor's DISCONNECTED), as the service forgets it.
        st.tuples(st.one_of(SUBSCRIPTION_MESSAGES, st.none()), st.sampled_from(FAKE_FDS)),
        min_size=10,
        max_size=80,
    ),
    per_connection=st.integers(1, 6),
    # Small totals weigh most: reaching the total bound takes that many subscribes that pass.
    total=st.one_of(st.integers(1, 4), st.integers(1, 12)),
    max_prefix_bytes=st.sampled_from([3, 8, MAX_SUBSCRIPTION_PREFIX_BYTES]),
    max_distinct_bytes=st.one_of(st.integers(0, 30), st.just(1 << 20)),
)
def test_subscriptions_stay_within_every_bound_and_each_excess_subscribe_is_refused(
    events: list[tuple[bytes | None, int]],
    per_connection: int,
    total: int,
    max_prefix_bytes: int,
    max_distinct_bytes: int,
) -> None:
    """However connections subscribe and unsubscribe, the limiter's total is the sum over its
    connections and within the total bound, no connection holds more than its bound, the
    distinct prefixes stay within their bytes, and the refusals count exactly the subscribes
    that went beyond a bound, by reason (their connection is then dropped)."""
    limiter = SubscriptionLimiter(per_connection, total, max_prefix_bytes, max_distinct_bytes)
    model = SubscriptionModel(per_connection, total, max_prefix_bytes, max_distinct_bytes)
    for message, fd in events:
        if message is None:
            limiter.forget(fd)
            model.held.pop(fd, None)
            continue
        assert limiter.observe(message, fd) is model.observe(message, fd)
        assert limiter.total == sum(limiter.count_by_fd.values()) == model.total
        assert limiter.total <= total
        assert all(count <= per_connection for count in limiter.count_by_fd.values())
        assert limiter.distinct_bytes == model.distinct_bytes <= max_distinct_bytes
        assert +Counter(limiter.refused_by_reason) == model.refused
        if limiter.total == total:
            event("subscriptions: total bound reached")
        if any(count == per_connection for count in limiter.count_by_fd.values()):
            event("subscriptions: a connection's bound reached")
    for reason in model.refused:
        event(f"subscriptions: refused {reason}")
