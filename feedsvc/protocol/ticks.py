"""The tick and its wire frame.

Wire contract (see README and schemas/tick.schema.json): one ZeroMQ frame per message, made of the
topic, one space (0x20) and a UTF-8 JSON object encoded with orjson. The topic of a tick is its
symbol; topics that begin with "_" are reserved for control messages.

Both the server and the client import this module; it has no socket code.
"""

from __future__ import annotations

import math
import re
from typing import Any, Final

import orjson

TOPIC_DELIMITER: Final = b" "
CONTROL_PREFIX: Final = "_"
_TOPIC_DELIMITER_TEXT: Final = TOPIC_DELIMITER.decode()
_isfinite: Final = math.isfinite
HEARTBEAT_TOPIC: Final = "_hb"
# A publisher's shard name (publisher.shard), in its heartbeats and sync replies: the stable name
# a client follows one publisher's epochs by when several publish behind one relay. "" = unnamed
# (one publisher).
SHARD_PATTERN: Final = re.compile(r"[0-9A-Za-z_.-]{0,64}")

REQUIRED_FIELDS: Final = ("sym", "bid", "ask", "bid_size", "ask_size")
# Stamped by the publisher; values sent by a feed handler are overwritten.
PUBLISHER_FIELDS: Final = ("seq", "epoch", "ts")
MAX_SYMBOL_LENGTH: Final = 64

# Rejection reasons, also the label values of the rejection counter.
REJECT_TOO_LARGE: Final = "too_large"
REJECT_NOT_JSON: Final = "not_json"
REJECT_NOT_OBJECT: Final = "not_object"
REJECT_MISSING_FIELD: Final = "missing_field"
REJECT_BAD_SYMBOL: Final = "bad_symbol"
REJECT_BAD_PRICE: Final = "bad_price"
REJECT_BAD_SIZE: Final = "bad_size"
REJECT_BAD_OPTIONAL_FIELD: Final = "bad_optional_field"
# Refused by the publisher: a new symbol beyond publisher.max_symbols, a frame beyond
# ingest.max_tick_bytes, no room left in publisher.max_cache_bytes.
REJECT_TOO_MANY_SYMBOLS: Final = "too_many_symbols"
REJECT_CACHE_FULL: Final = "cache_full"
# Handling the tick or its frame raised: a bug, contained (feedsvc_internal_errors_total says
# where); the input is refused and the loop goes on.
REJECT_INTERNAL_ERROR: Final = "internal_error"
REJECT_REASONS: Final = (
    REJECT_TOO_LARGE,
    REJECT_NOT_JSON,
    REJECT_NOT_OBJECT,
    REJECT_MISSING_FIELD,
    REJECT_BAD_SYMBOL,
    REJECT_BAD_PRICE,
    REJECT_BAD_SIZE,
    REJECT_BAD_OPTIONAL_FIELD,
    REJECT_TOO_MANY_SYMBOLS,
    REJECT_CACHE_FULL,
    REJECT_INTERNAL_ERROR,
)

Tick = dict[str, Any]


# Printable ASCII without the space, which delimits the topic; "_" may not lead (control topics).
SYMBOL_PATTERN: Final = re.compile(rf"[!-^`-~][!-~]{{0,{MAX_SYMBOL_LENGTH - 1}}}")


def symbol_problem(symbol: object) -> str | None:
    """Say why `symbol` cannot be a tick's symbol (and so a topic), or None if it can."""
    # The rule of SYMBOL_PATTERN in str methods, about 5x faster than the regex: it runs for
    # every ingested tick. The slow path below says what is wrong.
    if (
        type(symbol) is str
        and 0 < len(symbol) <= MAX_SYMBOL_LENGTH
        and symbol.isascii()
        and symbol.isprintable()
        and _TOPIC_DELIMITER_TEXT not in symbol
        and not symbol.startswith(CONTROL_PREFIX)
    ):
        return None
    if not isinstance(symbol, str) or not symbol:
        return "must be a non-empty string"
    if symbol.startswith(CONTROL_PREFIX):
        return 'must not begin with "_" (reserved for control topics)'
    if SYMBOL_PATTERN.fullmatch(symbol) is None:
        return f"must be 1 to {MAX_SYMBOL_LENGTH} printable ASCII characters without spaces"
    return None


def topic_prefix(symbol: str) -> bytes:
    """The bytes a frame for `symbol` begins with, and the exact-match SUB subscription."""
    return symbol.encode() + TOPIC_DELIMITER


def encode_frame(topic: str, message: dict[str, Any]) -> bytes:
    """One wire frame: topic, a space, the orjson-encoded message."""
    return topic_prefix(topic) + orjson.dumps(message)


def split_frame(frame: bytes) -> tuple[str, bytes]:
    """Split a wire frame into its topic and its JSON payload (not decoded)."""
    topic, _, payload = frame.partition(TOPIC_DELIMITER)
    return topic.decode(), payload


def decode_frame(frame: bytes) -> tuple[str, dict[str, Any]]:
    """Split a wire frame and decode its JSON payload."""
    topic, payload = split_frame(frame)
    return topic, orjson.loads(payload)


def _is_number(value: object) -> bool:
    # Exact types first: they are all orjson makes, and the check runs 4 times per ingested tick.
    kind = type(value)
    if kind is float:
        return _isfinite(value)  # type: ignore[arg-type]
    if kind is int:
        return True
    # bool is an int subclass in Python but not a price.
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_size(value: object) -> bool:
    kind = type(value)
    if kind is float:
        return value >= 0 and _isfinite(value)  # type: ignore[operator, arg-type]
    if kind is int:
        return value >= 0  # type: ignore[operator]
    return _is_number(value) and value >= 0  # type: ignore[operator]


def _is_integer(value: object) -> bool:
    # JSON Schema counts 1.0 as an integer; so do we, to agree with the schema.
    if isinstance(value, float):
        return value.is_integer()
    return isinstance(value, int) and not isinstance(value, bool)


def _is_string(value: object) -> bool:
    return isinstance(value, str)


# Optional pass-through fields with a documented type; other extra fields pass unchecked.
_OPTIONAL_FIELD_CHECKS: Final = (
    ("last", _is_number),
    ("last_size", _is_size),
    ("venue", _is_string),
    ("ts_src", _is_integer),
)


def tick_problem(candidate: object) -> str | None:
    """Validate one ingest tick. Returns the rejection reason, or None if it is acceptable.

    Mirrors schemas/ingest.schema.json; a property test keeps the two in agreement.
    """
    if not isinstance(candidate, dict):
        return REJECT_NOT_OBJECT
    # One lookup per required field (REQUIRED_FIELDS) does for presence and value: this runs
    # for every ingested tick.
    try:
        symbol, bid, ask = candidate["sym"], candidate["bid"], candidate["ask"]
        bid_size, ask_size = candidate["bid_size"], candidate["ask_size"]
    except KeyError:
        return REJECT_MISSING_FIELD
    if symbol_problem(symbol) is not None:
        return REJECT_BAD_SYMBOL
    if not (_is_number(bid) and _is_number(ask)):
        return REJECT_BAD_PRICE
    if not (_is_size(bid_size) and _is_size(ask_size)):
        return REJECT_BAD_SIZE
    if len(candidate) > len(REQUIRED_FIELDS):  # else no optional field can be there
        for field, is_valid in _OPTIONAL_FIELD_CHECKS:
            if field in candidate and not is_valid(candidate[field]):
                return REJECT_BAD_OPTIONAL_FIELD
    return None
