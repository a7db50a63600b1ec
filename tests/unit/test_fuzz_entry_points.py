"""Fuzzing the three entry points that take outside input: the ingest decoder (feed handlers),
the sync request handler (trading clients) and the config loader (operators).

Each gets arbitrary bytes and arbitrary JSON/YAML structures, including ones a field away from
valid. The properties: no exception escapes, every rejection is counted once under a documented
reason, and no state grows with the input beyond its configured bound.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_type_hints

import orjson
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from feedsvc.config import Config, ConfigError, load_config, parse_override
from feedsvc.protocol.sync import ERRORS, MARKER_TOPIC_PREFIX
from feedsvc.protocol.ticks import (
    PUBLISHER_FIELDS,
    REJECT_NOT_JSON,
    REJECT_REASONS,
    REJECT_TOO_LARGE,
    REQUIRED_FIELDS,
    SYMBOL_PATTERN,
    decode_frame,
    symbol_problem,
    tick_problem,
)
from feedsvc.server.ingest import IngestDecoder
from feedsvc.server.publisher import Publisher
from feedsvc.server.sync import SyncHandler
from tests.conftest import fuzz_examples

FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _stdlib_json(value: object) -> bytes:
    # The stdlib writes NaN/Infinity literals, which are not JSON: a realistic malformed frame.
    return json.dumps(value).encode()


ENCODERS: tuple[Callable[[object], bytes], ...] = (orjson.dumps, _stdlib_json)

JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    # orjson writes integers of at most 64 bits.
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(),
    st.text(max_size=20),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=6), st.dictionaries(st.text(max_size=10), children, max_size=6)
    ),
    max_leaves=15,
)


def _mostly(valid: st.SearchStrategy[Any], other: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`valid` nine times out of ten, else `other`: inputs one field away from valid."""
    return st.integers(0, 9).flatmap(lambda draw: valid if draw else other)


def _encoded(documents: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    return st.builds(
        lambda encode, document: encode(document), st.sampled_from(ENCODERS), documents
    )


def _with_truncations(frames: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """The frames and any of their prefixes (a frame cut short by a broken feed handler)."""
    truncated = frames.flatmap(lambda frame: st.integers(0, len(frame)).map(lambda n: frame[:n]))
    return st.one_of(frames, truncated)


VALID_SYMBOLS = st.one_of(
    st.sampled_from(["AAPL", "MSFT", "BRK.B", "ES=F"]),
    st.from_regex(SYMBOL_PATTERN, fullmatch=True),
)
PRICES = st.one_of(
    st.floats(min_value=-1e9, max_value=1e9, allow_nan=False), st.integers(-(10**9), 10**9)
)
SIZES = st.one_of(st.floats(min_value=0, max_value=1e9), st.integers(0, 10**12))
VALID_TICK_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "sym": VALID_SYMBOLS,
    "bid": PRICES,
    "ask": PRICES,
    "bid_size": SIZES,
    "ask_size": SIZES,
    "last": PRICES,
    "last_size": SIZES,
    "venue": st.text(max_size=8),
    "ts_src": st.integers(0, 2**63 - 1),
    **dict.fromkeys(PUBLISHER_FIELDS, JSON_SCALARS),
}
OPTIONAL_TICK_FIELDS = [name for name in VALID_TICK_FIELDS if name not in REQUIRED_FIELDS]

# Dicts near a valid tick: a valid one (with some optional fields) and up to three fields
# dropped or replaced by any JSON value, plus unknown extra fields.
_DROP = object()
VALID_TICKS_WITH_OPTIONALS = st.fixed_dictionaries(
    {name: VALID_TICK_FIELDS[name] for name in REQUIRED_FIELDS},
    optional={name: VALID_TICK_FIELDS[name] for name in OPTIONAL_TICK_FIELDS},
)
TICK_MUTATIONS = st.lists(
    st.tuples(st.sampled_from(list(VALID_TICK_FIELDS)), st.one_of(st.just(_DROP), JSON_VALUES)),
    max_size=3,
)


def _near_tick(
    extra: dict[str, object], tick: dict[str, object], mutations: list[tuple[str, object]]
) -> dict[str, object]:
    near = {**extra, **tick}
    for name, value in mutations:
        if value is _DROP:
            near.pop(name, None)
        else:
            near[name] = value
    return near


NEAR_TICKS = st.builds(
    _near_tick,
    st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=2),
    VALID_TICKS_WITH_OPTIONALS,
    TICK_MUTATIONS,
)
INGEST_DOCUMENTS = st.one_of(
    JSON_VALUES, NEAR_TICKS, st.lists(st.one_of(NEAR_TICKS, JSON_VALUES), max_size=8)
)
# Whole documents weigh most: random bytes and cut-off frames mostly stop at not_json.
INGEST_FRAMES = st.one_of(
    _encoded(INGEST_DOCUMENTS),
    st.binary(max_size=600),
    _encoded(INGEST_DOCUMENTS),
    _with_truncations(_encoded(INGEST_DOCUMENTS)),
)


def _expected_rejections(frame: bytes, max_message_bytes: int) -> tuple[list[object], Counter[str]]:
    """What the ingest contract (README, schemas/ingest.schema.json) says a frame yields: the
    acceptable ticks in order, and the rejections by reason."""
    if len(frame) > max_message_bytes:
        return [], Counter({REJECT_TOO_LARGE: 1})
    try:
        decoded = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return [], Counter({REJECT_NOT_JSON: 1})
    candidates = decoded if isinstance(decoded, list) else [decoded]
    problems = [tick_problem(candidate) for candidate in candidates]
    accepted = [tick for tick, problem in zip(candidates, problems, strict=True) if not problem]
    return accepted, Counter(problem for problem in problems if problem)


def _nonzero(counts: dict[str, int]) -> Counter[str]:
    return Counter({reason: count for reason, count in counts.items() if count})


@settings(FUZZ, max_examples=fuzz_examples(200))
@given(frame=INGEST_FRAMES, max_message_bytes=st.sampled_from([64, 512, 1 << 20]))
@example(frame=b"\xff\xfe", max_message_bytes=64)
@example(frame=b"[" * 2000 + b"]" * 2000, max_message_bytes=1 << 20)
@example(frame=b'{"sym":"A","bid":1e400,"ask":1,"bid_size":1,"ask_size":1}', max_message_bytes=512)
@example(frame=orjson.dumps([{"sym": "A"}, 5, []]), max_message_bytes=64)
def test_every_ingest_tick_is_accepted_or_counted_once_under_its_reason(
    frame: bytes, max_message_bytes: int
) -> None:
    """A feed handler sending anything at all cannot stop the decoder, and every tick it sent is
    either published or counted once in feedsvc_ticks_rejected_total under a documented reason
    (a frame that is too large or not JSON counts once)."""
    decoder = IngestDecoder(max_message_bytes)
    accepted = decoder.decode(frame)
    expected_accepted, expected_rejections = _expected_rejections(frame, max_message_bytes)
    assert list(decoder.rejected_by_reason) == list(REJECT_REASONS)
    assert _nonzero(decoder.rejected_by_reason) == expected_rejections
    assert decoder.rejected_total == sum(expected_rejections.values())
    assert accepted == expected_accepted
    assert all(tick_problem(tick) is None for tick in accepted)


@settings(FUZZ, max_examples=fuzz_examples(50))
@given(frames=st.lists(INGEST_FRAMES, min_size=1, max_size=20))
def test_decoder_keeps_no_state_that_grows_with_its_input(frames: list[bytes]) -> None:
    """However much garbage arrives, the decoder holds only its limit and one counter per
    documented reason: memory does not grow with what feed handlers send."""
    decoder = IngestDecoder(512)
    attributes = {name: type(value) for name, value in vars(decoder).items()}
    expected_total = 0
    for frame in frames:
        _, rejections = _expected_rejections(frame, 512)
        expected_total += sum(rejections.values())
        decoder.decode(frame)
    assert {name: type(value) for name, value in vars(decoder).items()} == attributes
    assert list(decoder.rejected_by_reason) == list(REJECT_REASONS)
    assert decoder.rejected_total == expected_total


VALID_TICKS = st.fixed_dictionaries(
    {
        "sym": st.one_of(st.sampled_from([f"S{index}" for index in range(10)]), VALID_SYMBOLS),
        **{name: VALID_TICK_FIELDS[name] for name in REQUIRED_FIELDS if name != "sym"},
    }
)


@settings(FUZZ, max_examples=fuzz_examples(60))
@given(
    frames=st.lists(
        st.one_of(st.lists(VALID_TICKS, max_size=10).map(orjson.dumps), INGEST_FRAMES),
        max_size=12,
    ),
    max_symbols=st.integers(1, 6),
)
def test_publisher_symbol_state_stays_within_max_symbols_and_refusals_are_counted(
    frames: list[bytes], max_symbols: int
) -> None:
    """Feed handlers inventing symbols cannot grow the publisher's per-symbol state past
    publisher.max_symbols: ticks of further new symbols are refused and counted, and the admitted
    symbols still get contiguous seqs from 1."""
    decoder = IngestDecoder(1 << 20)
    sent: list[bytes] = []
    publisher = Publisher(sent.append, epoch=7, max_symbols=max_symbols, clock_ns=lambda: 1)
    accepted_symbols: list[str] = []
    for frame in frames:
        ticks = decoder.decode(frame)
        accepted_symbols.extend(tick["sym"] for tick in ticks)
        publisher.publish(ticks)
    admitted = list(dict.fromkeys(accepted_symbols))[:max_symbols]
    assert publisher.symbol_count == len(admitted) <= max_symbols
    assert len(publisher.last_values(None)) == publisher.symbol_count
    assert publisher.published + publisher.refused_new_symbols == len(accepted_symbols)
    assert publisher.refused_new_symbols == sum(sym not in admitted for sym in accepted_symbols)
    assert len(sent) == publisher.published
    seqs: dict[str, list[int]] = {}
    for frame in sent:
        topic, tick = decode_frame(frame)
        assert topic == tick["sym"] and tick["epoch"] == 7
        seqs.setdefault(topic, []).append(tick["seq"])
    assert set(seqs) <= set(admitted)
    assert all(seq == list(range(1, len(seq) + 1)) for seq in seqs.values())


# Depth 300 is within orjson.loads' limit (1024) but beyond orjson.dumps' (254).
DEEP_EXTRA_FIELD_FRAME = (
    b'{"sym":"A","bid":1,"ask":1,"bid_size":1,"ask_size":1,"x":' + b"[" * 300 + b"]" * 300 + b"}"
)


@settings(FUZZ, max_examples=fuzz_examples(100))
@given(frame=INGEST_FRAMES)
@example(frame=DEEP_EXTRA_FIELD_FRAME)
def test_every_tick_the_decoder_accepts_can_be_published(frame: bytes) -> None:
    """A tick that passed validation is published: no accepted input can make the hot path raise
    (an exception there stops the service for every subscriber)."""
    ticks = IngestDecoder(1 << 20).decode(frame)
    sent: list[bytes] = []
    publisher = Publisher(sent.append, epoch=7, max_symbols=1_000)
    assert publisher.publish(ticks) == len(ticks) == len(sent)


MAX_SYMBOLS_PER_REQUEST = 4
MAX_REQUEST_BYTES = 512
KNOWN_SYMBOLS = ("A", "B")
# The id grammar of docs/sync-protocol.md, written out here rather than imported.
SYNC_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")
SYNC_IDS = st.from_regex(SYNC_ID, fullmatch=True)

BAD_SYMBOLS = st.one_of(JSON_VALUES, st.sampled_from(["_hb", "has space", "", "A" * 65]))
SYMBOL_LISTS = st.lists(
    _mostly(st.one_of(st.sampled_from([*KNOWN_SYMBOLS, "QUIET"]), VALID_SYMBOLS), BAD_SYMBOLS),
    max_size=MAX_SYMBOLS_PER_REQUEST + 2,
)
SYNC_REQUEST_DICTS = st.builds(
    lambda extra, request: {**extra, **request},
    # Sometimes padded past max_request_bytes.
    st.dictionaries(st.sampled_from(["pad", "x", "epoch"]), st.text(max_size=600), max_size=1),
    st.fixed_dictionaries(
        {
            "op": _mostly(st.sampled_from(["snapshot", "ready"]), JSON_VALUES),
            "client": _mostly(SYNC_IDS, st.one_of(JSON_VALUES, st.text(min_size=60, max_size=70))),
            "marker": _mostly(SYNC_IDS, st.one_of(JSON_VALUES, st.text(min_size=60, max_size=70))),
        },
        optional={
            "symbols": st.one_of(
                SYMBOL_LISTS,
                st.none(),
                st.lists(VALID_SYMBOLS, min_size=MAX_SYMBOLS_PER_REQUEST, max_size=7),
                st.lists(st.one_of(VALID_SYMBOLS, BAD_SYMBOLS), min_size=1, max_size=4),
                JSON_VALUES,
            )
        },
    ),
)
SYNC_REQUESTS = st.one_of(
    _encoded(SYNC_REQUEST_DICTS),
    st.binary(max_size=300),
    _encoded(SYNC_REQUEST_DICTS),
    _with_truncations(_encoded(st.one_of(SYNC_REQUEST_DICTS, JSON_VALUES))),
)


def _sync_handler() -> SyncHandler:
    publisher = Publisher(lambda frame: None, epoch=9, max_symbols=100)
    publisher.publish(
        [
            {"sym": sym, "bid": 1.0, "ask": 1.1, "bid_size": 1, "ask_size": 1}
            for sym in KNOWN_SYMBOLS
        ]
    )
    return SyncHandler(publisher.last_values, 9, MAX_SYMBOLS_PER_REQUEST, MAX_REQUEST_BYTES)


def _request_bytes(**fields: object) -> bytes:
    return orjson.dumps({"op": "snapshot", "client": "c", "marker": "m", **fields})


def _sync_problems(request: bytes) -> set[str]:
    """Every error docs/sync-protocol.md allows for this request (empty: it must be served)."""
    if len(request) > MAX_REQUEST_BYTES:
        return {"too_large"}
    try:
        fields = orjson.loads(request)
    except orjson.JSONDecodeError:
        return {"not_json"}
    if not isinstance(fields, dict) or fields.get("op") not in ("snapshot", "ready"):
        return {"bad_request"}
    problems = set()
    for name in ("client", "marker"):
        if not isinstance(fields.get(name), str) or not SYNC_ID.fullmatch(fields[name]):
            problems.add("bad_request")
    symbols = fields.get("symbols")
    if fields["op"] == "snapshot" and symbols is not None:
        if not isinstance(symbols, list):
            problems.add("bad_request")
        elif len(symbols) > MAX_SYMBOLS_PER_REQUEST:
            problems.add("too_many_symbols")
        elif any(symbol_problem(symbol) for symbol in symbols):
            problems.add("bad_symbol")
    if fields["op"] == "ready" and not problems:
        # The handler here is new: it served no snapshot that a ready could confirm.
        problems.add("unknown_marker")
    return problems


@settings(FUZZ, max_examples=fuzz_examples(300))
@given(request=SYNC_REQUESTS)
@example(request=orjson.dumps({"op": "snapshot", "client": "c", "marker": "m", "symbols": None}))
@example(request=orjson.dumps({"op": "snapshot", "client": "c", "marker": "m", "symbols": [[]]}))
@example(request=orjson.dumps({"op": "ready", "client": "c", "marker": "m", "symbols": 5}))
@example(request=_request_bytes(symbols=["A", "_hb"]))
@example(request=_request_bytes(symbols=["A", "B", "C", "D", "E"]))
@example(request=orjson.dumps({"op": "snapshot", "client": "c", "marker": "m" * 65}))
def test_any_sync_request_gets_the_reply_the_protocol_allows_and_is_counted(
    request: bytes,
) -> None:
    """A client sending anything gets exactly one JSON object back: a served snapshot or ready
    (never a false rejection), or ok:false with a documented error that is counted once under
    that reason. A snapshot never holds more symbols than the request may ask for."""
    handler = _sync_handler()
    reply = handler.handle(request)
    decoded = orjson.loads(reply.reply)
    assert isinstance(decoded, dict)
    problems = _sync_problems(request)
    rejected = _nonzero(handler.rejected_by_reason)
    assert list(handler.rejected_by_reason) == list(ERRORS)
    if decoded["ok"] is not True:
        assert decoded["ok"] is False and isinstance(decoded["detail"], str)
        assert decoded["error"] in problems
        assert rejected == Counter({decoded["error"]: 1})
        assert reply.marker_frame is None
        assert handler.snapshots_served == handler.completed_handshakes == 0
        return
    assert problems == set() and rejected == Counter()
    fields = orjson.loads(request)
    assert fields["op"] == "snapshot"
    assert handler.snapshots_served == 1 and handler.completed_handshakes == 0
    assert decoded["epoch"] == 9 and decoded["marker"] == MARKER_TOPIC_PREFIX + fields["marker"]
    assert reply.marker_frame is not None
    assert decode_frame(reply.marker_frame) == (
        decoded["marker"],
        {"epoch": 9, "marker": fields["marker"]},
    )
    symbols = fields.get("symbols")
    snapshot = decoded["snapshot"]
    if symbols is None:
        assert set(snapshot) == set(KNOWN_SYMBOLS)
    else:
        assert set(snapshot) == set(symbols)
        assert len(snapshot) <= MAX_SYMBOLS_PER_REQUEST
    for symbol, entry in snapshot.items():
        assert entry["seq"] == (1 if symbol in KNOWN_SYMBOLS else 0)
        assert (entry["tick"] is None) == (symbol not in KNOWN_SYMBOLS)


@settings(FUZZ, max_examples=fuzz_examples(150))
@given(clients=st.lists(SYNC_IDS, max_size=30), bound=st.integers(0, 8))
def test_ready_clients_never_exceed_max_ready_clients(clients: list[str], bound: int) -> None:
    """A stream of made-up client ids cannot grow the handshake set past max_ready_clients: the
    first distinct ids up to the bound are kept, every ready after its snapshot still gets ok."""
    handler = _sync_handler()
    handler.max_ready_clients = bound
    for client in clients:
        handler.handle(orjson.dumps({"op": "snapshot", "client": client, "marker": "m"}))
        reply = handler.handle(orjson.dumps({"op": "ready", "client": client, "marker": "m"}))
        assert orjson.loads(reply.reply) == {"ok": True}
        assert len(handler.ready_clients) <= bound
    assert handler.ready_clients == set(list(dict.fromkeys(clients))[:bound])


@settings(FUZZ, max_examples=fuzz_examples(60))
@given(
    requests=st.lists(
        st.one_of(
            SYNC_REQUESTS,
            SYNC_IDS.map(
                lambda client: orjson.dumps({"op": "ready", "client": client, "marker": "m"})
            ),
        ),
        min_size=1,
        max_size=40,
    )
)
def test_sync_handler_state_is_bounded_and_every_request_accounted_for(
    requests: list[bytes],
) -> None:
    """Over a long mixed stream the handler holds fixed counters plus at most max_ready_clients
    ids, and served + rejected adds up to the requests received."""
    handler = _sync_handler()
    handler.max_ready_clients = 3
    attributes = {name: type(value) for name, value in vars(handler).items()}
    ready_replies = 0
    for request in requests:
        reply = orjson.loads(handler.handle(request).reply)
        ready_replies += reply == {"ok": True}
        assert len(handler.ready_clients) <= 3
    assert {name: type(value) for name, value in vars(handler).items()} == attributes
    assert list(handler.rejected_by_reason) == list(ERRORS)
    assert sum(
        handler.rejected_by_reason.values()
    ) + handler.snapshots_served + ready_replies == len(requests)


SECTION_TYPES: dict[str, type] = get_type_hints(Config)
KEY_FIELDS: dict[str, dict[str, dataclasses.Field[Any]]] = {
    section: {item.name: item for item in dataclasses.fields(section_type)}
    for section, section_type in SECTION_TYPES.items()
}
KEY_TYPES: dict[str, dict[str, Any]] = {
    section: get_type_hints(section_type) for section, section_type in SECTION_TYPES.items()
}
# Line breaks as str.splitlines() sees them: a key holding one would split the error message.
LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
# BMP only: json.dumps escapes it as one \\uXXXX, which YAML reads back as the same character.
CONFIG_TEXT = st.text(st.characters(max_codepoint=0xFFFF, exclude_categories=("Cs",)), max_size=12)
# Keys without line breaks: keys with them are the one-line bug reproduced further down.
CONFIG_KEYS = st.text(
    st.characters(max_codepoint=0xFFFF, exclude_categories=("Cs", "Cc", "Zl", "Zp")),
    max_size=12,
)
RANDOM_KEYS = CONFIG_KEYS.filter(bool)
CONFIG_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**64), 2**64),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([math.nan, math.inf, -math.inf]),
    CONFIG_TEXT,
)
CONFIG_VALUES = st.recursive(
    CONFIG_SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(CONFIG_KEYS, children, max_size=4)
    ),
    max_leaves=10,
)


def _default(item: dataclasses.Field[Any]) -> Any:
    if item.default_factory is not dataclasses.MISSING:
        return item.default_factory()
    return item.default


def _typed_values(expected: Any) -> st.SearchStrategy[Any]:
    """Values of the key's own type, in and out of its range."""
    if expected is bool:
        return st.booleans()
    if expected is int:
        return st.integers(-10, 3_000_000)
    if expected is float:
        return st.one_of(st.floats(-10, 1e7), st.integers(-10, 100_000))
    if expected is str:
        return st.one_of(
            CONFIG_TEXT, st.sampled_from(["tcp://127.0.0.1:1", "ipc://x", "tcp://", "INFO", "json"])
        )
    if expected == list[str]:
        return st.lists(
            st.one_of(
                st.sampled_from(["tcp://127.0.0.1:1", "ipc:///tmp/x", "udp://x"]), CONFIG_TEXT
            ),
            max_size=3,
        )
    return st.dictionaries(CONFIG_TEXT, CONFIG_SCALARS, max_size=3)


# Values one type away from most keys: YAML and JSON blur these (1 vs true vs 1.0 vs "1").
NEAR_TYPE_VALUES: list[object] = [0, 1, 1.0, 0.5, True, False, "1", "true", "", None, [], {}]
NEAR_TYPES = st.sampled_from(NEAR_TYPE_VALUES)


def _key_values(section: str, key: str) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.just(_default(KEY_FIELDS[section][key])),
        _typed_values(KEY_TYPES[section][key]),
        NEAR_TYPES,
        CONFIG_VALUES,
    )


def _sections(section: str) -> st.SearchStrategy[Any]:
    real_keys = st.fixed_dictionaries(
        {}, optional={key: _key_values(section, key) for key in KEY_FIELDS[section]}
    )
    unknown_keys = st.dictionaries(
        st.one_of(RANDOM_KEYS, st.integers(0, 9)), CONFIG_VALUES, max_size=1
    )
    return st.one_of(
        real_keys,
        st.builds(lambda unknown, real: {**unknown, **real}, unknown_keys, real_keys),
        CONFIG_VALUES,
    )


CONFIG_DOCUMENTS = st.one_of(
    st.fixed_dictionaries({}, optional={section: _sections(section) for section in SECTION_TYPES}),
    st.builds(
        lambda unknown, known: {**unknown, **known},
        st.dictionaries(RANDOM_KEYS, CONFIG_VALUES, min_size=1, max_size=2),
        st.fixed_dictionaries(
            {}, optional={section: _sections(section) for section in SECTION_TYPES}
        ),
    ),
    CONFIG_VALUES,
)
# Fragments of YAML syntax, so random text reaches anchors, tags, flow and block collections.
YAML_TOKENS = st.lists(
    st.one_of(
        st.sampled_from(
            [
                *(f"{section}:" for section in SECTION_TYPES),
                *(f"  {key}:" for keys in KEY_FIELDS.values() for key in keys),
                "\n",
                " ",
                "- ",
                "? ",
                ": ",
                "[",
                "]",
                "{",
                "}",
                ",",
                "&a ",
                "*a",
                "<<: *a",
                "!!set ",
                "!!binary ",
                "!!str ",
                "!!python/object:os.system ",
                "~",
                ".nan",
                "1e400",
                "0x1F",
                "0o17",
                "2001-01-01",
                "|\n",
                "'",
                '"',
                "#",
                "%YAML 1.1\n",
                "---\n",
                "\t",
                "\x00",
                "\ufeff",
            ]
        ),
        CONFIG_TEXT,
    ),
    max_size=30,
).map("".join)


def _load_file(content: bytes) -> Config:
    # @given and function-scoped fixtures (tmp_path) do not mix: one folder per example.
    with tempfile.TemporaryDirectory(prefix="fuzz-config-") as folder:
        path = Path(folder) / "config.yaml"
        path.write_bytes(content)
        return load_config(path)


def _check_config_error(error: ConfigError, one_line: bool = True) -> None:
    message = str(error)
    assert message.startswith(f"{error.key}: ")
    if one_line:
        assert len(message.splitlines()) == 1, message


@settings(FUZZ, max_examples=fuzz_examples(100))
@given(content=st.binary(max_size=300))
@example(content=b"\xff")
def test_config_file_of_arbitrary_bytes_gives_config_or_config_error(content: bytes) -> None:
    """Whatever file an operator points --config at, serve exits with one ConfigError line
    (exit code 2), never a traceback."""
    try:
        _load_file(content)
    except ConfigError as error:
        _check_config_error(error, one_line=False)


@settings(FUZZ, max_examples=fuzz_examples(200))
@given(text=st.one_of(st.text(max_size=200), YAML_TOKENS))
def test_config_file_of_arbitrary_text_gives_config_or_config_error(text: str) -> None:
    """Any UTF-8 text as config.yaml (broken YAML, tags, anchors, odd scalars) gives a Config or
    a ConfigError naming a key, never another exception."""
    try:
        config = _load_file(text.encode())
    except ConfigError as error:
        _check_config_error(error, one_line=False)
    else:
        assert isinstance(config, Config)


def _written(document: object, prefer_yaml: bool) -> tuple[bytes, bool]:
    """The document as a config file: JSON (a subset of YAML that reads back exactly) unless it
    holds NaN/infinity or YAML is preferred. Returns the bytes and whether they are JSON."""
    if not prefer_yaml:
        try:
            return json.dumps(document, allow_nan=False).encode(), True
        except ValueError:
            pass
    return yaml.safe_dump(document).encode(), False


def _check_value_taken(config: Config, section: str, key: str, value: object) -> None:
    """The key holds `value`, of the key's declared type and within its declared range."""
    taken = getattr(getattr(config, section), key)
    expected_type = KEY_TYPES[section][key]
    assert taken == (float(value) if expected_type is float else value)  # type: ignore[arg-type]
    if expected_type in (bool, int, float, str):
        assert type(taken) is expected_type
    metadata = KEY_FIELDS[section][key].metadata
    if metadata.get("minimum") is not None:
        assert taken >= metadata["minimum"]
    if metadata.get("maximum") is not None:
        assert taken <= metadata["maximum"]


def _check_values_taken(config: Config, document: dict[Any, Any]) -> None:
    """Every key of an accepted file is a real key and its value is the one written."""
    for section, keys in document.items():
        assert section in SECTION_TYPES
        if not keys:
            continue
        for key, value in keys.items():
            assert key in KEY_FIELDS[section]
            _check_value_taken(config, section, key, value)


@settings(FUZZ, max_examples=fuzz_examples(150))
@given(document=CONFIG_DOCUMENTS, prefer_yaml=st.booleans())
@example(document={"publisher": {"sndhwm": True}}, prefer_yaml=False)
@example(document={"synthetic": {"rate": 1e308, "burst_rate": 1.0}}, prefer_yaml=False)
@example(document={"kafka": {"producer": {"1": [1]}}}, prefer_yaml=True)
# A key YAML would read as a number (0.0) must be named as written.
@example(document={"0E0": 1}, prefer_yaml=True)
@example(document={"publisher": {"1e3": 1}}, prefer_yaml=True)
def test_config_structures_give_config_with_their_values_or_a_one_line_error(
    document: object, prefer_yaml: bool
) -> None:
    """Any structure in config.yaml, with real and made-up keys and values of any type, gives
    either a Config holding exactly the values written (nothing unknown silently accepted), or
    a ConfigError whose one line starts with the offending key."""
    content, is_json = _written(document, prefer_yaml)
    try:
        config = _load_file(content)
    except ConfigError as error:
        _check_config_error(error)
        top_keys = {str(key) for key in document} if isinstance(document, dict) else set()
        assert error.key == "--config" or any(
            error.key == key or error.key.startswith(f"{key}.") for key in top_keys
        )
        return
    assert isinstance(config, Config)
    if is_json and document is not None:
        assert isinstance(document, dict)
        _check_values_taken(config, document)


REAL_PATHS = st.one_of(
    st.sampled_from([f"{section}.{key}" for section, keys in KEY_FIELDS.items() for key in keys]),
    st.sampled_from(list(SECTION_TYPES)),
)
SET_PATHS = st.one_of(
    REAL_PATHS,
    REAL_PATHS.map(lambda path: f" {path}. "),
    st.lists(RANDOM_KEYS, min_size=1, max_size=3).map(".".join),
)
SET_VALUES = st.one_of(
    CONFIG_TEXT,
    YAML_TOKENS,
    CONFIG_VALUES.map(lambda value: json.dumps(value, allow_nan=True)),
)
REAL_KEY_PAIRS = [(section, key) for section, keys in KEY_FIELDS.items() for key in keys]
# A real key with a value of its own type (or its default, or anything), as JSON: flow YAML.
TYPED_ASSIGNMENTS = st.sampled_from(REAL_KEY_PAIRS).flatmap(
    lambda pair: _key_values(*pair).map(lambda value: f"{pair[0]}.{pair[1]}={json.dumps(value)}")
)
SET_ASSIGNMENTS = st.one_of(
    TYPED_ASSIGNMENTS,
    st.text(max_size=40),
    st.builds(lambda path, value: f"{path}={value}", SET_PATHS, SET_VALUES),
)


@settings(FUZZ, max_examples=fuzz_examples(300))
@given(assignments=st.lists(SET_ASSIGNMENTS, min_size=1, max_size=3))
@example(assignments=["publisher.endpoints.x=1"])
@example(assignments=["synthetic=5", "synthetic.rate=1"])
@example(assignments=["=1"])
def test_any_set_override_gives_config_or_a_one_line_config_error(
    assignments: list[str],
) -> None:
    """Any `--set` an operator types gives a Config with that value applied, or a ConfigError
    whose line starts with the key, never a traceback."""
    for assignment in assignments:
        try:
            keys, _ = parse_override(assignment)
        except ConfigError as error:
            _check_config_error(error, one_line=not any(c in assignment for c in LINE_BREAKS))
        else:
            assert ".".join(keys) == assignment.partition("=")[0].strip()
    try:
        config = load_config(None, assignments)
    except ConfigError as error:
        _check_config_error(error, one_line=not any(c in "".join(assignments) for c in LINE_BREAKS))
        return
    assert isinstance(config, Config)
    # The last assignment to a key wins, unless its whole section was assigned after it.
    last_values: dict[tuple[str, str], object] = {}
    for assignment in assignments:
        keys, value = parse_override(assignment)
        if len(keys) == 1:
            last_values = {pair: v for pair, v in last_values.items() if pair[0] != keys[0]}
        elif len(keys) == 2:
            last_values[keys[0], keys[1]] = value
    for (section, key), value in last_values.items():
        _check_value_taken(config, section, key, value)


def test_every_key_takes_only_values_of_its_declared_type() -> None:
    """`--set key=1` on a boolean, `true` on a number, `1.0` on an integer...: each real key
    either holds a value of its declared type and range, or the error names that key's section."""
    for section, key in REAL_KEY_PAIRS:
        for value in NEAR_TYPE_VALUES:
            assignment = f"{section}.{key}={json.dumps(value)}"
            try:
                config = load_config(None, [assignment])
            except ConfigError as error:
                _check_config_error(error)
                assert error.key.startswith(f"{section}."), assignment
            else:
                _check_value_taken(config, section, key, value)


def _alias_bomb(depth: int) -> bytes:
    """A few hundred bytes of YAML whose value, written out, has 2**depth items."""
    anchors = ["&a0 [1, 1]", *(f"&a{n} [*a{n - 1}, *a{n - 1}]" for n in range(1, depth + 1))]
    return f"publisher:\n  sndhwm: [{', '.join(anchors)}]\n".encode()


def _load(source: tuple[str, str | bytes]) -> Config:
    kind, content = source
    if kind == "file":
        assert isinstance(content, bytes)
        return _load_file(content)
    assert isinstance(content, str)
    return load_config(None, [content])


@pytest.mark.parametrize(
    "source",
    [
        pytest.param(("set", "synthetic.rate=-1.5e300"), id="huge-negative-float"),
        pytest.param(("set", "publisher.sndhwm=[[[[1]]]]"), id="nested-list"),
        pytest.param(
            ("set", "synthetic.rate=1" + "0" * 400),
            id="int-beyond-float-range",
        ),
        pytest.param(
            ("file", b"synthetic:\n  enabled: 1" + b"0" * 4400 + b"\n"),
            id="decimal-int-over-4300-digits",
        ),
        pytest.param(
            ("set", "synthetic.enabled=0x" + "f" * 3700),
            id="hex-int-over-4300-digits",
        ),
        pytest.param(
            ("set", "publisher.sndhwm=" + "[" * 1000 + "]" * 1000),
            id="nested-1000-deep",
        ),
        pytest.param(
            ("set", "a\nb=1"),
            id="key-with-line-break",
        ),
        pytest.param(
            ("file", _alias_bomb(16)),
            id="alias-bomb",
        ),
    ],
)
def test_pathological_config_values_give_a_short_one_line_config_error(
    source: tuple[str, str | bytes],
) -> None:
    """Reproducers found by the properties above: each must end in a short, one-line
    ConfigError naming the key, like any other wrong value."""
    with pytest.raises(ConfigError) as caught:
        _load(source)
    _check_config_error(caught.value)
    assert len(str(caught.value)) <= 1_000
