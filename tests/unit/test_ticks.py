"""The wire frame codec and the ingest validation rules, checked against the JSON schemas."""

from __future__ import annotations

import functools
import json
import re

import jsonschema
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feedsvc.protocol.ticks import (
    HEARTBEAT_TOPIC,
    REJECT_BAD_OPTIONAL_FIELD,
    REJECT_BAD_PRICE,
    REJECT_BAD_SIZE,
    REJECT_BAD_SYMBOL,
    REJECT_MISSING_FIELD,
    REJECT_NOT_OBJECT,
    decode_frame,
    encode_frame,
    split_frame,
    symbol_problem,
    tick_problem,
    topic_prefix,
)
from tests.conftest import SCHEMAS

GOOD_TICK = {"sym": "AAPL", "bid": 189.5, "ask": 189.52, "bid_size": 300, "ask_size": 200}


@functools.cache
def _ingest_tick_validator() -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / "ingest.schema.json").read_text())
    return jsonschema.Draft202012Validator({**schema["$defs"]["tick"], "$defs": schema["$defs"]})


def test_frame_is_topic_space_orjson_payload() -> None:
    frame = encode_frame("AAPL", {"sym": "AAPL", "seq": 1})
    assert frame == b"AAPL " + orjson.dumps({"sym": "AAPL", "seq": 1})
    assert decode_frame(frame) == ("AAPL", {"sym": "AAPL", "seq": 1})
    assert split_frame(frame) == ("AAPL", orjson.dumps({"sym": "AAPL", "seq": 1}))


def test_exact_symbol_subscription_is_not_a_prefix_of_a_longer_symbol() -> None:
    # A SUB subscription is a byte prefix of the frame: "AAPL " must not match "AAPLX ...".
    assert not encode_frame("AAPLX", {}).startswith(topic_prefix("AAPL"))
    assert encode_frame("AAPL", {}).startswith(topic_prefix("AAPL"))


@pytest.mark.parametrize(
    "symbol", ["AAPL", "BRK.B", "ES=F", "EUR/USD", "X", "A" * 64, "A_B", "~weird!"]
)
def test_valid_symbols(symbol: str) -> None:
    assert symbol_problem(symbol) is None


@pytest.mark.parametrize(
    "symbol", ["", "_hb", "_sync", "AA PL", "A" * 65, "AAPL\n", "ÄPFEL", 42, None]
)
def test_invalid_symbols(symbol: object) -> None:
    assert symbol_problem(symbol) is not None


@settings(max_examples=2_000, deadline=None)
@given(
    st.text(
        # Biased to the edges: printable ASCII, space, "_", DEL, control and non-ASCII chars.
        alphabet=st.one_of(st.characters(min_codepoint=0x20, max_codepoint=0x7F), st.characters()),
        max_size=70,
    )
)
def test_the_fast_symbol_check_agrees_with_the_schema_pattern(symbol: str) -> None:
    """symbol_problem checks with str methods for speed; the schema's regex is the contract."""
    pattern = json.loads((SCHEMAS / "ingest.schema.json").read_text())["$defs"]["tick"]
    pattern = pattern["properties"]["sym"]["pattern"]
    assert (symbol_problem(symbol) is None) == (re.fullmatch(pattern, symbol) is not None)


def test_heartbeat_topic_is_reserved() -> None:
    assert HEARTBEAT_TOPIC.startswith("_")
    assert symbol_problem(HEARTBEAT_TOPIC) is not None


@pytest.mark.parametrize(
    ("candidate", "reason"),
    [
        ([GOOD_TICK], REJECT_NOT_OBJECT),
        ("AAPL", REJECT_NOT_OBJECT),
        ({k: v for k, v in GOOD_TICK.items() if k != "ask"}, REJECT_MISSING_FIELD),
        ({**GOOD_TICK, "sym": "_hb"}, REJECT_BAD_SYMBOL),
        ({**GOOD_TICK, "sym": "A B"}, REJECT_BAD_SYMBOL),
        ({**GOOD_TICK, "bid": "189.5"}, REJECT_BAD_PRICE),
        ({**GOOD_TICK, "ask": True}, REJECT_BAD_PRICE),
        ({**GOOD_TICK, "ask": None}, REJECT_BAD_PRICE),
        ({**GOOD_TICK, "bid_size": -1}, REJECT_BAD_SIZE),
        ({**GOOD_TICK, "venue": 7}, REJECT_BAD_OPTIONAL_FIELD),
        ({**GOOD_TICK, "ts_src": 1.5}, REJECT_BAD_OPTIONAL_FIELD),
    ],
)
def test_tick_problem_names_the_reason(candidate: object, reason: str) -> None:
    assert tick_problem(candidate) == reason


def test_extra_fields_pass_through() -> None:
    tick = {**GOOD_TICK, "last": 189.51, "last_size": 100, "venue": "XNAS", "ts_src": 1, "x": [1]}
    assert tick_problem(tick) is None


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=6,
)
field_values = st.one_of(
    json_values,
    st.sampled_from(["AAPL", "_hb", "A B", "AAPL\n", "", "BRK.B", "Z" * 64, "Z" * 65]),
    st.floats(min_value=-1e6, max_value=1e6),
    st.integers(min_value=-5, max_value=10**6),
)
candidates = st.one_of(
    json_values,
    st.dictionaries(
        st.sampled_from(
            ["sym", "bid", "ask", "bid_size", "ask_size", "last", "last_size", "venue", "ts_src"]
        ),
        field_values,
        max_size=9,
    ),
    # A valid tick with some fields replaced: finds disagreements one rule at a time.
    st.builds(
        lambda overrides: {**GOOD_TICK, **overrides},
        st.dictionaries(
            st.sampled_from(["sym", "bid_size", "last", "last_size", "venue", "ts_src"]),
            field_values,
            max_size=2,
        ),
    ),
)


@settings(max_examples=400, deadline=None)
@given(candidates)
def test_tick_problem_agrees_with_ingest_schema(candidate: object) -> None:
    # The schema is the published contract; the hand-written check is what runs per tick.
    schema_accepts = _ingest_tick_validator().is_valid(candidate)
    assert (tick_problem(candidate) is None) == schema_accepts
