"""The pure parts of `feedsvc replay`: the sequence audit, ISO-8601 times, decoding, writers."""

from __future__ import annotations

import calendar
import csv
import io
import itertools
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feedsvc.replay.audit import AuditVerifier
from feedsvc.replay.output import CSV_FIELDS, CsvWriter, JsonLinesWriter
from feedsvc.replay.ticks import TickFilter, decode_tick, malformed_reason
from feedsvc.replay.times import format_ns, parse_iso8601_ns

EPOCH = 1_795_427_742_012_345_678


def tick(seq: int, sym: str = "AAA", epoch: int = EPOCH, **extra: Any) -> dict[str, Any]:
    return {
        "sym": sym,
        "seq": seq,
        "epoch": epoch,
        "ts": epoch + seq * 1_000,
        "bid": 1.5,
        "ask": 1.75,
        "bid_size": 100,
        "ask_size": 200,
        **extra,
    }


def audit(seqs: list[int], window_start_ns: int | None = None, **tick_fields: Any) -> Any:
    verifier = AuditVerifier(window_start_ns)
    for seq in seqs:
        verifier.observe(tick(seq, **tick_fields))
    return verifier.report()


# --- AuditVerifier --------------------------------------------------------------------------


def test_contiguous_sequence_has_no_gaps_or_duplicates() -> None:
    report = audit(list(range(1, 101)))
    assert report.ok
    assert report.summary() == {
        "ok": True,
        "ticks": 100,
        "gaps": 0,
        "missing": 0,
        "duplicates": 0,
        "malformed": 0,
        "symbols": 1,
        "epochs": 1,
    }
    (sequence,) = report.sequences
    assert (sequence.first_seq, sequence.last_seq, sequence.count) == (1, 100, 100)
    assert "no gaps" in sequence.line()


def test_gaps_are_named_as_missing_ranges() -> None:
    seqs = [seq for seq in range(1, 16) if seq not in {5, 6, 7, 12}]
    report = audit(seqs)
    (sequence,) = report.sequences
    assert sequence.missing_ranges == ((5, 7), (12, 12))
    assert (report.gaps, report.missing, report.duplicates) == (2, 4, 0)
    assert "gaps 5-7, 12 (4 missing)" in sequence.line()
    assert not report.ok


def test_a_seq_seen_again_is_a_duplicate() -> None:
    report = audit([1, 2, 3, 3, 4, 2])
    assert (report.duplicates, report.gaps, report.ticks) == (2, 0, 6)
    assert not report.ok


def test_a_new_epoch_restarting_at_one_is_not_a_gap() -> None:
    verifier = AuditVerifier()
    for seq in range(1, 11):
        verifier.observe(tick(seq, epoch=EPOCH))
    for seq in range(1, 6):
        verifier.observe(tick(seq, epoch=EPOCH + 10**12))
    report = verifier.report()
    assert report.ok
    assert (report.epochs, report.symbols, report.ticks, report.gaps) == (2, 1, 15, 0)


def test_symbols_are_audited_separately() -> None:
    verifier = AuditVerifier()
    for seq in range(1, 6):
        verifier.observe(tick(seq, sym="AAA"))
        verifier.observe(tick(seq * 2, sym="BBB"))
    report = verifier.report()
    assert [(s.symbol, s.missing) for s in report.sequences] == [("AAA", 0), ("BBB", 5)]
    assert report.symbols == 2


def test_out_of_order_seqs_fill_their_holes() -> None:
    report = audit([1, 4, 3, 6, 2, 5])
    assert report.ok
    (sequence,) = report.sequences
    assert (sequence.first_seq, sequence.last_seq) == (1, 6)


def test_without_a_window_missing_first_ticks_are_a_gap() -> None:
    report = audit([4, 5, 6])
    assert report.sequences[0].missing_ranges == ((1, 3),)
    assert (report.gaps, report.missing) == (1, 3)


def test_a_window_may_start_mid_sequence_of_an_epoch_that_began_before_it() -> None:
    window_start = EPOCH + 1
    report = audit([40, 41, 43], window_start_ns=window_start, epoch=EPOCH)
    # 1..39 are before the window; 42 is inside it and missing.
    assert report.sequences[0].missing_ranges == ((42, 42),)
    assert "began before the window" in report.sequences[0].line()


def test_an_epoch_that_began_inside_the_window_must_start_at_one() -> None:
    report = audit([3, 4], window_start_ns=EPOCH, epoch=EPOCH)
    assert report.sequences[0].missing_ranges == ((1, 2),)
    assert not report.ok


def test_malformed_messages_fail_the_audit() -> None:
    verifier = AuditVerifier()
    verifier.observe(tick(1))
    verifier.observe_malformed()
    report = verifier.report()
    assert report.malformed == 1
    assert (report.gaps, report.duplicates) == (0, 0)
    assert not report.ok


def test_many_gap_ranges_are_counted_but_only_some_shown() -> None:
    report = audit(list(range(1, 200, 2)))  # every even seq is missing
    (sequence,) = report.sequences
    assert report.gaps == 99
    assert "... 79 more ranges" in sequence.line()


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(min_value=1, max_value=120), min_size=1, max_size=300),
    st.booleans(),
)
def test_audit_agrees_with_a_set_based_count(seqs: list[int], window_applies: bool) -> None:
    # A window that starts after the epoch began: the leading missing seqs are not gaps.
    report = audit(seqs, window_start_ns=EPOCH + 1 if window_applies else None)
    seen = set(seqs)
    low = min(seen) if window_applies else 1
    expected_missing = set(range(low, max(seen) + 1)) - seen
    (sequence,) = report.sequences
    listed = [seq for first, last in sequence.missing_ranges for seq in range(first, last + 1)]
    assert listed == sorted(expected_missing)  # ranges sorted, disjoint, exact
    assert all(
        previous[1] + 1 < following[0]
        for previous, following in itertools.pairwise(sequence.missing_ranges)
    )
    assert report.duplicates == len(seqs) - len(seen)
    assert report.ticks == len(seqs)
    assert (sequence.first_seq, sequence.last_seq) == (min(seen), max(seen))


# --- ISO-8601 ---------------------------------------------------------------------------------

NINE_THIRTY_UTC_NS = calendar.timegm((2026, 11, 23, 9, 30, 0)) * 10**9


@pytest.mark.parametrize(
    ("text", "expected_ns"),
    [
        ("2026-11-23T09:30:00Z", NINE_THIRTY_UTC_NS),
        ("2026-11-23T09:30:00", NINE_THIRTY_UTC_NS),  # naive = UTC
        ("2026-11-23 09:30:00z", NINE_THIRTY_UTC_NS),
        ("2026-11-23T09:30Z", NINE_THIRTY_UTC_NS),
        ("2026-11-23T10:30:00+01:00", NINE_THIRTY_UTC_NS),
        ("2026-11-23T04:00:00-0530", NINE_THIRTY_UTC_NS),
        ("2026-11-23T11:30:00+02", NINE_THIRTY_UTC_NS),
        ("2026-11-23T09:30:00.5Z", NINE_THIRTY_UTC_NS + 500_000_000),
        ("2026-11-23T09:30:00,000000001Z", NINE_THIRTY_UTC_NS + 1),
        ("2026-11-23T09:30:00.123456789+00:00", NINE_THIRTY_UTC_NS + 123_456_789),
        ("2026-11-23", NINE_THIRTY_UTC_NS - (9 * 3600 + 30 * 60) * 10**9),
        ("1970-01-01T00:00:00Z", 0),
    ],
)
def test_iso8601_examples(text: str, expected_ns: int) -> None:
    assert parse_iso8601_ns(text) == expected_ns


@pytest.mark.parametrize(
    "text",
    [
        "",
        "yesterday",
        "1795427742",
        "2026-13-01T00:00:00Z",
        "2026-02-30",
        "2026-11-23T24:00:00Z",
        "2026-11-23T09:30:00.1234567891Z",  # finer than ns
        "2026-11-23T09:30.5Z",  # a fraction of a minute
        "2026-11-23T09:30:00+25:00",
        "2026-11-23T09:30:00 UTC",
    ],
)
def test_iso8601_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="date-time"):
        parse_iso8601_ns(text)


@settings(max_examples=300, deadline=None)
@given(
    moment=st.datetimes(
        min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
    ),
    offset_minutes=st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59),
    fraction_ns=st.integers(min_value=0, max_value=10**9 - 1),
    digits=st.integers(min_value=1, max_value=9),
    separator=st.sampled_from(["T", " "]),
)
def test_iso8601_is_exact_to_the_nanosecond_in_any_offset(
    moment: datetime, offset_minutes: int, fraction_ns: int, digits: int, separator: str
) -> None:
    moment = moment.replace(microsecond=0)
    # Keep only `digits` fractional digits, as the text will.
    fraction_ns -= fraction_ns % 10 ** (9 - digits)
    local = moment.astimezone(timezone(timedelta(minutes=offset_minutes)))
    sign = "-" if offset_minutes < 0 else "+"
    hours, minutes = divmod(abs(offset_minutes), 60)
    text = (
        f"{local:%Y-%m-%d}{separator}{local:%H:%M:%S}."
        f"{fraction_ns // 10 ** (9 - digits):0{digits}d}{sign}{hours:02d}:{minutes:02d}"
    )
    expected = calendar.timegm(moment.utctimetuple()) * 10**9 + fraction_ns
    assert parse_iso8601_ns(text) == expected


@given(st.integers(min_value=0, max_value=2**62))
def test_format_ns_round_trips(ns: int) -> None:
    assert parse_iso8601_ns(format_ns(ns)) == ns


# --- Decoding and filtering ------------------------------------------------------------------


def test_decode_tick_accepts_a_mirror_payload_with_extras() -> None:
    payload = orjson.dumps(tick(7, venue="XNAS", cond="@"))
    assert decode_tick(payload) == tick(7, venue="XNAS", cond="@")


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (None, "tombstone"),
        (b"not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (orjson.dumps({**tick(1), "sym": 5}), "sym"),
        (orjson.dumps({**tick(1), "seq": True}), "seq"),
        (orjson.dumps({**tick(1), "seq": 1.0}), "seq"),
        (orjson.dumps({**tick(1), "seq": 0}), "seq below 1"),
        (orjson.dumps({k: v for k, v in tick(1).items() if k != "epoch"}), "epoch"),
        (orjson.dumps({**tick(1), "ts": "2026-11-23"}), "ts"),
    ],
)
def test_decode_tick_rejects_what_replay_cannot_use(payload: bytes | None, reason: str) -> None:
    assert decode_tick(payload) is None
    assert reason in malformed_reason(payload)


@given(st.binary(max_size=200))
def test_decode_tick_never_raises(payload: bytes) -> None:
    decoded = decode_tick(payload)
    assert decoded is None or isinstance(decoded["seq"], int)


def test_tick_filter_window_is_since_inclusive_until_exclusive() -> None:
    window = TickFilter(frozenset({"AAA"}), since_ns=1_000, until_ns=2_000)
    assert window.accepts({"sym": "AAA", "ts": 1_000})
    assert window.accepts({"sym": "AAA", "ts": 1_999})
    assert not window.accepts({"sym": "AAA", "ts": 999})
    assert not window.accepts({"sym": "AAA", "ts": 2_000})
    assert not window.accepts({"sym": "BBB", "ts": 1_500})


# --- Writers ----------------------------------------------------------------------------------


def test_jsonl_writer_writes_payload_bytes_exactly() -> None:
    payloads = [orjson.dumps(tick(seq)) for seq in range(1, 4)]
    out = io.BytesIO()
    writer = JsonLinesWriter(out)
    for payload in payloads:
        writer.write(payload, orjson.loads(payload))
    writer.flush()
    assert out.getvalue() == b"".join(payload + b"\n" for payload in payloads)


def test_jsonl_writer_keeps_a_multiline_payload_on_one_line() -> None:
    pretty = b'{\n  "sym": "AAA",\n  "seq": 1\n}'
    out = io.BytesIO()
    writer = JsonLinesWriter(out)
    writer.write(b'{"seq":0}', {})
    writer.write(pretty, orjson.loads(pretty))
    writer.flush()
    lines = out.getvalue().splitlines()
    assert lines == [b'{"seq":0}', b'{"sym":"AAA","seq":1}']


def test_csv_writer_header_standard_then_optional_fields() -> None:
    out = io.BytesIO()
    writer = CsvWriter(out)
    writer.write(b"", tick(1))
    writer.write(b"", tick(2, last=1.625, last_size=300, venue="X,Y", ts_src=17, cond="@"))
    writer.flush()
    text = out.getvalue().decode()
    assert text.splitlines()[0] == (
        "sym,seq,epoch,ts,bid,ask,bid_size,ask_size,last,last_size,venue,ts_src"
    )
    rows = list(csv.DictReader(io.StringIO(text)))
    assert tuple(rows[0]) == CSV_FIELDS
    assert rows[0]["seq"] == "1" and rows[0]["last"] == "" and rows[0]["venue"] == ""
    assert rows[1]["venue"] == "X,Y"  # quoted by the csv module, read back intact
    assert (rows[1]["last"], rows[1]["ts_src"], rows[1]["bid"]) == ("1.625", "17", "1.5")
    assert Counter(len(row) for row in rows) == {len(CSV_FIELDS): 2}
