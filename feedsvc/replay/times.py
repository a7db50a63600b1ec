"""ISO-8601 date-times for ``--since`` and ``--until``, as integer ns since the Unix epoch like
a tick's ``ts``, and back."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Final

NS_PER_SECOND: Final = 1_000_000_000
NS_PER_MS: Final = 1_000_000
_UNIX_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

# The extended ISO-8601 forms people type: a date, optionally a time (T or a space) to the minute
# or second with up to 9 fractional digits (ns, like ts), optionally Z or an offset.
_ISO_8601: Final = re.compile(
    r"(?P<year>\d{4})-(?P<month>\d{2})-(?P<day>\d{2})"
    r"(?:[T ](?P<hour>\d{2}):(?P<minute>\d{2})"
    r"(?::(?P<second>\d{2})(?:[.,](?P<fraction>\d{1,9}))?)?"
    r"(?P<zone>[Zz]|(?P<sign>[+-])(?P<offset_hours>\d{2})(?::?(?P<offset_minutes>\d{2}))?)?)?",
)


def parse_iso8601_ns(text: str) -> int:
    """Parse an ISO-8601 date-time into integer ns since the Unix epoch, exactly.

    Accepted: ``2026-11-23``, ``2026-11-23T09:30``, ``2026-11-23T09:30:00``, with up to 9
    fractional digits (``09:30:00.123456789``), ``T`` or a space between date and time, and a
    ``Z`` or ``+HH:MM``/``+HHMM``/``+HH`` offset. Without an offset the time is UTC.

    Raises
    ------
    ValueError
        The text is not such a date-time, or a field is out of range; the message says why.
    """
    match = _ISO_8601.fullmatch(text.strip())
    if match is None:
        raise ValueError(
            f"not an ISO-8601 date-time: {text!r} "
            "(expected e.g. 2026-11-23T09:30:00Z or 2026-11-23T10:30:00+01:00)"
        )
    parts = match.groupdict()
    offset = timedelta(0)
    if parts["sign"] is not None:
        offset = timedelta(
            hours=int(parts["offset_hours"]), minutes=int(parts["offset_minutes"] or 0)
        )
        if parts["sign"] == "-":
            offset = -offset
    try:
        moment = datetime(
            int(parts["year"]),
            int(parts["month"]),
            int(parts["day"]),
            int(parts["hour"] or 0),
            int(parts["minute"] or 0),
            int(parts["second"] or 0),
            tzinfo=timezone(offset),
        )
    except ValueError as error:
        raise ValueError(f"not a valid date-time: {text!r} ({error})") from None
    # Integer arithmetic throughout: a float timestamp would lose the nanoseconds.
    since_unix_epoch = moment - _UNIX_EPOCH
    whole_seconds = since_unix_epoch.days * 86_400 + since_unix_epoch.seconds
    fraction_ns = int((parts["fraction"] or "0").ljust(9, "0"))
    return whole_seconds * NS_PER_SECOND + fraction_ns


def format_ns(ns: int) -> str:
    """ns since the Unix epoch as an ISO-8601 UTC date-time with all 9 fractional digits."""
    whole_seconds, fraction_ns = divmod(ns, NS_PER_SECOND)
    moment = _UNIX_EPOCH + timedelta(seconds=whole_seconds)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{fraction_ns:09d}Z"
