"""`feedsvc replay`: read the Kafka mirror of the tick stream back out, to a file or an audit.

The mirror (feedsvc/mirror.py) produces every published tick to one topic: key = the symbol,
value = the tick's JSON payload exactly as broadcast, Kafka timestamp = CreateTime set when the
mirror produced it, so never earlier than the tick's ``ts`` (later if the mirror lagged).

What replay does, in order:

1. One metadata request with a timeout: an unreachable broker or an unknown topic is a clear error
   (exit 2) within seconds, not a hang.
2. The high watermark of every partition is captured once; reading stops there, so a replay of a
   live topic terminates.
3. ``--since`` and ``--until`` are located with Kafka's ``offsets_for_times`` on every partition
   (no scan from the beginning): a partition's read starts at its first message stamped at or
   after since - START_SLACK_MS and ends before its first message stamped at or after
   until + END_SLACK_MS (or at the captured high watermark). The exact window is then applied to
   each tick's own ``ts``: since inclusive, until exclusive. The constants' comments say why the
   Kafka timestamps can bound the read.
4. Partitions are read one after the other with ``assign()`` (no consumer group, no commits),
   each in offset order. One symbol's ticks all live in one partition (partitioning is by key), so
   each symbol's ticks come out in publish order; across symbols the output follows the
   partitions: partition 0's ticks, then partition 1's, and so on. This makes two replays of the
   same data byte-identical; sort by ``ts`` for one time-ordered stream.

A message that is not a tick (not JSON, or without sym/seq/epoch/ts) is skipped and counted as
``malformed``, never fatal. ``--verify`` audits the sequence numbers per (symbol, epoch) with
`AuditVerifier`, a pure class that knows nothing of Kafka. A JSON summary line always ends stderr.

Exit status: 0 done; 1 ``--verify`` found gaps, duplicates or malformed messages; 2 the broker
does not answer, the topic does not exist, or the arguments or --out are unusable.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import csv
import io
import os
import re
import signal
import stat
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from types import FrameType
from typing import Any, BinaryIO, Final, Literal, Protocol, TextIO

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from feedsvc.config import ConfigError, load_kafka_config
from feedsvc.protocol.ticks import symbol_problem
from feedsvc.secret_refs import SecretError, resolve_secrets

DEFAULT_BOOTSTRAP: Final = "127.0.0.1:9092"
DEFAULT_TOPIC: Final = "ticks"

# Every metadata, watermark and offsets_for_times request waits at most this long; an unreachable
# broker fails the first of them, so replay gives up within this time (well under 30 s).
KAFKA_REQUEST_TIMEOUT_S: Final = 10.0
# A partition that delivers nothing for this long before its captured end is an error (the broker
# went away mid-replay), never a hang.
READ_IDLE_TIMEOUT_S: Final = 30.0
CONSUME_WAIT_S: Final = 0.5
CONSUME_BATCH_MESSAGES: Final = 2_000

# The start of --since is looked up at (since - START_SLACK_MS). Zero would be enough: CreateTime
# >= ts, so a tick with ts >= since has CreateTime >= since. One second more covers clock skew
# between the publisher's clock and the mirror producer's (another process, maybe another host);
# it costs reading at most one extra second of ticks, which the exact ts filter then drops.
START_SLACK_MS: Final = 1_000
# The end of a partition for --until is the first message whose Kafka timestamp is at or past
# (until + END_SLACK_MS). A tick with ts < until was produced before until + the mirror's lag, so
# this is exact as long as the mirror lags less than END_SLACK_MS; ticks read past until are
# dropped by the exact ts filter.
END_SLACK_MS: Final = 60_000

EXIT_OK: Final = 0
EXIT_AUDIT_FAILED: Final = 1
EXIT_ERROR: Final = 2
EXIT_INTERRUPTED: Final = 130  # 128 + SIGINT, as a shell reports it
EXIT_TERMINATED: Final = 143  # 128 + SIGTERM

STANDARD_CSV_FIELDS: Final = ("sym", "seq", "epoch", "ts", "bid", "ask", "bid_size", "ask_size")
OPTIONAL_CSV_FIELDS: Final = ("last", "last_size", "venue", "ts_src")
CSV_FIELDS: Final = STANDARD_CSV_FIELDS + OPTIONAL_CSV_FIELDS

# Only the first few malformed messages are described one by one; the rest are counted.
MALFORMED_DETAIL_LIMIT: Final = 10
# One audit line lists at most this many missing ranges; the totals always count all of them.
GAP_RANGES_SHOWN: Final = 20

OutputFormat = Literal["jsonl", "csv"]
FORMATS: Final[tuple[OutputFormat, ...]] = ("jsonl", "csv")

NS_PER_SECOND: Final = 1_000_000_000
NS_PER_MS: Final = 1_000_000
_UNIX_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


class ReplayError(Exception):
    """A problem the user can fix (broker, topic, output path); str() says what and what to do."""


class KafkaProblem(ReplayError):
    """A ReplayError on the Kafka side: reported with the bootstrap address and librdkafka's
    last error."""


# --- ISO-8601 times ---------------------------------------------------------------------------

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


def _iso8601_argument(text: str) -> int:
    try:
        return parse_iso8601_ns(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _symbol_argument(text: str) -> str:
    problem = symbol_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"symbol {text!r} {problem}")
    return text


# --- The audit --------------------------------------------------------------------------------


class _SeenSequence:
    """The seqs seen for one (symbol, epoch) as sorted disjoint ranges [starts[i], ends[i]].

    In-order data is one range however long, so memory does not grow with the tick count; out of
    order and repeated seqs are still placed exactly.
    """

    __slots__ = ("count", "duplicates", "ends", "starts")

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.count = 0
        self.duplicates = 0

    def add(self, seq: int) -> None:
        self.count += 1
        starts, ends = self.starts, self.ends
        # The common case: the next seq after the highest so far.
        if ends and seq == ends[-1] + 1:
            ends[-1] = seq
            return
        index = bisect.bisect_right(starts, seq)
        if index > 0 and seq <= ends[index - 1]:
            self.duplicates += 1
            return
        joins_lower = index > 0 and ends[index - 1] == seq - 1
        joins_upper = index < len(starts) and starts[index] == seq + 1
        if joins_lower and joins_upper:
            ends[index - 1] = ends[index]
            del starts[index], ends[index]
        elif joins_lower:
            ends[index - 1] = seq
        elif joins_upper:
            starts[index] = seq
        else:
            starts.insert(index, seq)
            ends.insert(index, seq)

    def missing_ranges(self, count_leading: bool) -> list[tuple[int, int]]:
        """Missing seqs as inclusive (first, last) ranges; from seq 1 on if `count_leading`."""
        ranges = [
            (self.ends[index] + 1, self.starts[index + 1] - 1)
            for index in range(len(self.starts) - 1)
        ]
        if count_leading and self.starts and self.starts[0] > 1:
            ranges.insert(0, (1, self.starts[0] - 1))
        return ranges


@dataclass(frozen=True)
class SequenceAudit:
    """The audit of one (symbol, epoch)."""

    symbol: str
    epoch: int
    count: int
    """Ticks seen, duplicates included."""
    first_seq: int
    """Lowest seq seen."""
    last_seq: int
    """Highest seq seen."""
    missing_ranges: tuple[tuple[int, int], ...]
    duplicates: int
    leading_checked: bool
    """Whether seqs before first_seq were checked (see `AuditVerifier`)."""

    @property
    def missing(self) -> int:
        return sum(last - first + 1 for first, last in self.missing_ranges)

    def line(self) -> str:
        """One human-readable report line."""
        if self.missing_ranges:
            shown = ", ".join(
                _format_range(first, last) for first, last in self.missing_ranges[:GAP_RANGES_SHOWN]
            )
            hidden = len(self.missing_ranges) - GAP_RANGES_SHOWN
            more = f", ... {hidden} more ranges" if hidden > 0 else ""
            gaps = f"gaps {shown}{more} ({self.missing} missing)"
        else:
            gaps = "no gaps"
        unchecked = (
            " (began before the window)" if not self.leading_checked and self.first_seq > 1 else ""
        )
        return (
            f"{self.symbol} epoch {self.epoch}: {self.count} ticks, "
            f"seq {self.first_seq}-{self.last_seq}{unchecked}, {gaps}, "
            f"{self.duplicates} duplicates"
        )


def _format_range(first: int, last: int) -> str:
    return str(first) if first == last else f"{first}-{last}"


@dataclass(frozen=True)
class AuditReport:
    """What `AuditVerifier.report` returns: per (symbol, epoch) audits and the totals."""

    sequences: tuple[SequenceAudit, ...]
    malformed: int = 0

    @property
    def ticks(self) -> int:
        return sum(audit.count for audit in self.sequences)

    @property
    def gaps(self) -> int:
        """Missing ranges, e.g. "5-7, 12" is 2 gaps."""
        return sum(len(audit.missing_ranges) for audit in self.sequences)

    @property
    def missing(self) -> int:
        return sum(audit.missing for audit in self.sequences)

    @property
    def duplicates(self) -> int:
        return sum(audit.duplicates for audit in self.sequences)

    @property
    def symbols(self) -> int:
        return len({audit.symbol for audit in self.sequences})

    @property
    def epochs(self) -> int:
        return len({audit.epoch for audit in self.sequences})

    @property
    def ok(self) -> bool:
        """No gap, no duplicate, no malformed message."""
        return self.gaps == 0 and self.duplicates == 0 and self.malformed == 0

    def lines(self) -> list[str]:
        return [audit.line() for audit in self.sequences]

    def summary(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "ticks": self.ticks,
            "gaps": self.gaps,
            "missing": self.missing,
            "duplicates": self.duplicates,
            "malformed": self.malformed,
            "symbols": self.symbols,
            "epochs": self.epochs,
        }


class AuditVerifier:
    """Checks that the ticks of each (symbol, epoch) carry seq 1, 2, 3 ... once each.

    A new epoch is a publisher restart and starts its own sequence at 1: never a gap. A seq seen
    again is a duplicate. Seqs missing between the lowest and the highest seen are gaps.

    Seqs before the lowest one seen (1 .. first-1) count as a gap only where the window must hold
    the epoch's first tick:

    - without `window_start_ns` (replay from the beginning of the topic), always;
    - with it (``--since``), only for epochs that began inside the window: an epoch is its start
      time in ns and seq 1 is published after it, so ``epoch >= since`` puts seq 1 in the window.
      An epoch that began earlier legitimately enters the window mid-sequence, so only its
      internal gaps count.

    The end of a window cannot be checked: ticks after the last one seen may simply not exist yet.
    """

    def __init__(self, window_start_ns: int | None = None) -> None:
        self.window_start_ns = window_start_ns
        self.malformed = 0
        self._sequences: dict[tuple[str, int], _SeenSequence] = {}

    def observe(self, tick: Mapping[str, Any]) -> None:
        """Account for one tick (a decoded payload with at least sym, epoch and seq)."""
        key = (tick["sym"], tick["epoch"])
        sequence = self._sequences.get(key)
        if sequence is None:
            sequence = self._sequences[key] = _SeenSequence()
        sequence.add(tick["seq"])

    def observe_malformed(self) -> None:
        """Account for a message that is not a tick: it fails the audit."""
        self.malformed += 1

    def _leading_checked(self, epoch: int) -> bool:
        return self.window_start_ns is None or epoch >= self.window_start_ns

    def report(self) -> AuditReport:
        audits = []
        for (symbol, epoch), sequence in sorted(self._sequences.items()):
            leading_checked = self._leading_checked(epoch)
            audits.append(
                SequenceAudit(
                    symbol=symbol,
                    epoch=epoch,
                    count=sequence.count,
                    first_seq=sequence.starts[0],
                    last_seq=sequence.ends[-1],
                    missing_ranges=tuple(sequence.missing_ranges(leading_checked)),
                    duplicates=sequence.duplicates,
                    leading_checked=leading_checked,
                )
            )
        return AuditReport(tuple(audits), malformed=self.malformed)


# --- Decoding ---------------------------------------------------------------------------------


def decode_tick(payload: bytes | None) -> dict[str, Any] | None:
    """Decode one message value into a tick, or None if it is not one (`malformed_reason` says
    why).

    A tick needs what replay and the audit rely on: a string sym, an integer seq >= 1, integer
    epoch and ts. Other fields pass through unchecked.
    """
    if payload is None:
        return None
    try:
        tick = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    # `type(...) is`, not isinstance: bool is an int subclass, and this runs for every message.
    if (
        type(tick) is dict
        and type(tick.get("sym")) is str
        and type(seq := tick.get("seq")) is int
        and seq >= 1
        and type(tick.get("epoch")) is int
        and type(tick.get("ts")) is int
    ):
        return tick
    return None


def malformed_reason(payload: bytes | None) -> str:
    """Why `decode_tick` returns None for `payload`."""
    if payload is None:
        return "no value (tombstone)"
    try:
        tick = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return "not JSON"
    if type(tick) is not dict:
        return "not a JSON object"
    if type(tick.get("sym")) is not str:
        return "no string sym"
    for name in ("seq", "epoch", "ts"):
        if type(tick.get(name)) is not int:
            return f"no integer {name}"
    if tick["seq"] < 1:
        return "seq below 1"
    return "a valid tick"


# --- Writers ----------------------------------------------------------------------------------


class TickWriter(Protocol):
    """Collects ticks in memory; `flush` writes what was collected (called once per batch)."""

    def write(self, payload: bytes, tick: Mapping[str, Any]) -> None: ...

    def flush(self) -> None: ...


class JsonLinesWriter:
    """One payload per line, the bytes exactly as stored in Kafka."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._payloads: list[bytes] = []

    def write(self, payload: bytes, tick: Mapping[str, Any]) -> None:
        self._payloads.append(payload)

    def flush(self) -> None:
        payloads = self._payloads
        if payloads:
            lines = b"\n".join(payloads) + b"\n"
            # orjson never emits a raw line break, but a payload written by something else might
            # hold one and split its line: only then is each checked, and such a payload
            # re-encoded compactly.
            if lines.count(b"\n") != len(payloads) or b"\r" in lines:
                lines = b"".join(_single_line(payload) + b"\n" for payload in payloads)
            self._out.write(lines)
            payloads.clear()
        self._out.flush()


def _single_line(payload: bytes) -> bytes:
    if b"\n" in payload or b"\r" in payload:
        return orjson.dumps(orjson.loads(payload))
    return payload


class CsvWriter:
    """A header, then one row per tick: the standard fields, then the optional ones (empty when
    absent). Other extra fields are not in the CSV; use JSONL to keep everything."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        # csv needs text and the output is binary: rows collect in memory and go out as UTF-8.
        self._buffer = io.StringIO()
        self._writerow = csv.writer(self._buffer, lineterminator="\n").writerow
        self._writerow(CSV_FIELDS)

    def write(self, payload: bytes, tick: Mapping[str, Any]) -> None:
        self._writerow(map(tick.get, CSV_FIELDS))

    def flush(self) -> None:
        self._out.write(self._buffer.getvalue().encode())
        self._buffer.seek(0)
        self._buffer.truncate()
        self._out.flush()


def make_writer(output_format: OutputFormat, out: BinaryIO) -> TickWriter:
    return CsvWriter(out) if output_format == "csv" else JsonLinesWriter(out)


@contextlib.contextmanager
def open_output(path: Path | None) -> Iterator[BinaryIO]:
    """stdout for None or "-"; otherwise the file, complete or not at all.

    A regular file is written to a temporary file beside it and renamed into place only after a
    complete replay, so a failed replay never leaves a truncated file that looks like a result.
    Anything else (/dev/null, a fifo) is written directly: renaming over it would replace it.

    Raises
    ------
    ReplayError
        The file cannot be created.
    """
    if path is None or str(path) == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    try:
        existing = path.stat() if path.exists() else None
        if existing is not None and not stat.S_ISREG(existing.st_mode):
            special = path.open("wb")
        else:
            special = None
            descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
            # mkstemp makes the file private (0600); the result gets the mode a plain open()
            # would give it, or keeps the mode of the file it replaces.
            os.fchmod(
                descriptor,
                stat.S_IMODE(existing.st_mode) if existing is not None else 0o666 & ~_umask(),
            )
    except OSError as error:
        raise ReplayError(f"cannot write --out {path}: {error.strerror or error}") from None
    if special is not None:
        with special:
            yield special
        return
    try:
        with os.fdopen(descriptor, "wb") as out:
            yield out
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _umask() -> int:
    # The only way to read the umask is to set it; set it straight back.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# --- Kafka ------------------------------------------------------------------------------------


_LOGIN_ERRORS: Final = frozenset(
    {KafkaError._AUTHENTICATION, KafkaError._SSL, KafkaError.SASL_AUTHENTICATION_FAILED}
)


class _KafkaErrors:
    """The last error librdkafka reported through error_cb: the cause named in our messages."""

    def __init__(self) -> None:
        self.last: KafkaError | None = None

    def record(self, error: KafkaError) -> None:
        self.last = error

    def cause(self) -> str:
        return "" if self.last is None else f" (last error: {self.last.str()})"

    def login_refused(self) -> bool:
        """The broker answered but refused the SASL login or the TLS handshake."""
        return self.last is not None and self.last.code() in _LOGIN_ERRORS


# Settings replay decides itself (with bootstrap.servers, group.id and error_cb): -X cannot
# change them, because the read plan depends on them.
REPLAY_CONSUMER_SETTINGS: Final[Mapping[str, Any]] = {
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    # The end of a partition ends its read even when its last offsets hold no message
    # (transaction markers, compaction).
    "enable.partition.eof": True,
    # Only if data was deleted by retention after the offsets were looked up.
    "auto.offset.reset": "earliest",
    # A fetch long-polls the broker this long when a partition has no newer data, which
    # is the case at the end of every partition read; the next partition's first fetch
    # waits behind it (500 ms per partition with the default).
    "fetch.wait.max.ms": 10,
    # Asking for an unknown topic must not create it (brokers may auto-create).
    "allow.auto.create.topics": False,
    # Connection failures reach error_cb and our error messages, not librdkafka's stderr.
    "log_level": 2,
}
_SET_BY_REPLAY: Final = frozenset(
    {*REPLAY_CONSUMER_SETTINGS, "bootstrap.servers", "group.id", "error_cb"}
)


def make_consumer(
    bootstrap: str,
    errors: _KafkaErrors | None = None,
    settings: Mapping[str, Any] | None = None,
) -> Consumer:
    """A consumer for assign()-only reading: nothing is ever committed for its throwaway group.

    `settings` are extra librdkafka settings for reaching the cluster (security, SASL, SSL);
    a value "${env:NAME}" or "${file:PATH}" is read from there now.

    Raises
    ------
    ReplayError
        A setting replay sets itself, a secret that cannot be read, or one librdkafka refuses;
        the message never holds a secret.
    """
    errors = errors or _KafkaErrors()
    settings = settings or {}
    taken = sorted(_SET_BY_REPLAY.intersection(settings))
    if taken:
        raise ReplayError(f"Kafka setting {taken[0]} is set by replay itself and cannot be changed")
    try:
        resolved = resolve_secrets(settings)
    except SecretError as error:
        raise ReplayError(f"Kafka setting {error}") from None
    try:
        return Consumer(
            {
                **resolved,
                **REPLAY_CONSUMER_SETTINGS,
                "bootstrap.servers": bootstrap,
                # Required by the client; unique so it can never share state with a real group.
                "group.id": f"feedsvc-replay-{uuid.uuid4().hex}",
                "error_cb": errors.record,
            }
        )
    except KafkaException as error:
        message = error.args[0].str()
        for name, value in resolved.items():
            if value != settings[name] and str(value):
                message = message.replace(str(value), f"<{name}>")
        raise ReplayError(f"librdkafka refused the Kafka settings: {message}") from None


def topic_partitions(consumer: Consumer, topic: str) -> list[int]:
    """The partition ids of `topic` (one metadata request with a timeout).

    Raises
    ------
    ReplayError
        The broker does not answer in time, or the topic does not exist.
    """
    try:
        metadata = consumer.list_topics(topic, timeout=KAFKA_REQUEST_TIMEOUT_S)
    except KafkaException as error:
        raise KafkaProblem(
            f"Kafka does not answer: {error.args[0].str()}; is a broker running at that "
            "address (--bootstrap)?"
        ) from None
    topic_metadata = metadata.topics.get(topic)
    if topic_metadata is None or topic_metadata.error is not None:
        if (
            topic_metadata is None
            or topic_metadata.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART
        ):
            raise KafkaProblem(f"topic {topic!r} does not exist (check --topic)")
        raise KafkaProblem(f"topic {topic!r} is not readable: {topic_metadata.error.str()}")
    if not topic_metadata.partitions:
        raise KafkaProblem(f"topic {topic!r} has no partitions")
    return sorted(topic_metadata.partitions)


def watermarks(
    consumer: Consumer, topic: str, partitions: Iterable[int]
) -> dict[int, tuple[int, int]]:
    """(low, high) offsets per partition, asked from the broker now."""
    result = {}
    for partition in partitions:
        try:
            offsets = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=KAFKA_REQUEST_TIMEOUT_S, cached=False
            )
        except KafkaException as error:
            raise KafkaProblem(
                f"cannot read the offsets of {topic} partition {partition}: {error.args[0].str()}"
            ) from None
        if offsets is None:
            raise KafkaProblem(
                f"no answer for the offsets of {topic} partition {partition} within "
                f"{KAFKA_REQUEST_TIMEOUT_S:g} s"
            )
        result[partition] = offsets
    return result


def offsets_at_time(
    consumer: Consumer, topic: str, partitions: Iterable[int], timestamp_ms: int
) -> dict[int, int | None]:
    """Per partition, the first offset whose Kafka timestamp is >= `timestamp_ms` (Kafka's
    offsets_for_times), or None where every message is older."""
    # Negative timestamps are Kafka's "latest"/"earliest" markers, not times.
    timestamp_ms = max(timestamp_ms, 0)
    queries = [TopicPartition(topic, partition, timestamp_ms) for partition in partitions]
    try:
        answers = consumer.offsets_for_times(queries, timeout=KAFKA_REQUEST_TIMEOUT_S)
    except KafkaException as error:
        raise KafkaProblem(
            f"cannot look up offsets by time in {topic}: {error.args[0].str()}"
        ) from None
    result: dict[int, int | None] = {}
    for answer in answers:
        if answer.error is not None:
            raise KafkaProblem(
                f"cannot look up offsets by time in {topic} partition {answer.partition}: "
                f"{answer.error.str()}"
            )
        result[answer.partition] = answer.offset if answer.offset >= 0 else None
    return result


def start_offsets(
    consumer: Consumer, topic: str, since_ns: int, partitions: Iterable[int] | None = None
) -> dict[int, int | None]:
    """Per partition, where reading for ``--since since_ns`` starts (None: nothing that recent).

    Uses offsets_for_times at ``since - START_SLACK_MS`` (floored to Kafka's milliseconds, which
    keeps a tick whose ts is in the same millisecond as since).
    """
    if partitions is None:
        partitions = topic_partitions(consumer, topic)
    return offsets_at_time(consumer, topic, partitions, since_ns // NS_PER_MS - START_SLACK_MS)


def end_offsets_for_until(
    consumer: Consumer, topic: str, until_ns: int, partitions: Iterable[int]
) -> dict[int, int | None]:
    """Per partition, the first offset past ``--until until_ns`` + END_SLACK_MS (None: none yet)."""
    until_ms_ceiling = -(-until_ns // NS_PER_MS)
    return offsets_at_time(consumer, topic, partitions, until_ms_ceiling + END_SLACK_MS)


@dataclass(frozen=True)
class PartitionRange:
    """Offsets [start, end) of one partition to read."""

    partition: int
    start: int
    end: int

    @property
    def size(self) -> int:
        return max(self.end - self.start, 0)


def plan_ranges(
    consumer: Consumer, topic: str, since_ns: int | None, until_ns: int | None
) -> list[PartitionRange]:
    """What to read: per partition, from --since (or the low watermark) to the high watermark
    captured now (or the --until end if earlier)."""
    partitions = topic_partitions(consumer, topic)
    # Captured before the time lookups, and everything is clamped to it: a live topic keeps
    # growing, and the replay ends at what was there when it started.
    bounds = watermarks(consumer, topic, partitions)
    starts: Mapping[int, int | None] = (
        {} if since_ns is None else start_offsets(consumer, topic, since_ns, partitions)
    )
    ends: Mapping[int, int | None] = (
        {} if until_ns is None else end_offsets_for_until(consumer, topic, until_ns, partitions)
    )
    ranges = []
    for partition in partitions:
        low, high = bounds[partition]
        start = low
        if since_ns is not None:
            found = starts.get(partition)
            start = high if found is None else min(max(found, low), high)
        end = high
        found_end = ends.get(partition)
        if found_end is not None:
            end = max(min(found_end, high), start)
        ranges.append(PartitionRange(partition, start, end))
    return ranges


# --- Reading ----------------------------------------------------------------------------------


# Errors after which a partition cannot be read on; others are transient and retried.
_UNREADABLE_PARTITION: Final = frozenset(
    {
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_TOPIC,
        KafkaError._UNKNOWN_PARTITION,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
    }
)


class _Progress(Protocol):
    def advance(self, messages: int) -> None: ...


class _NoProgress:
    def advance(self, messages: int) -> None:
        pass


class _RichProgress:
    """A rich progress bar on stderr: messages read of those between the planned offsets."""

    def __init__(self, total: int) -> None:
        self._progress = Progress(
            TextColumn("replay"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(file=sys.stderr),
            transient=True,
        )
        self._task = self._progress.add_task("replay", total=total)

    def __enter__(self) -> _RichProgress:
        self._progress.start()
        return self

    def __exit__(self, *_exc_info: object) -> None:
        self._progress.stop()

    def advance(self, messages: int) -> None:
        self._progress.advance(self._task, messages)


@dataclass
class ReplayCounts:
    messages: int = 0
    """Kafka messages read."""
    ticks: int = 0
    """Ticks that passed the filters and went to the output."""
    malformed: int = 0


@dataclass
class TickFilter:
    """--symbol and the exact --since/--until window on ts."""

    symbols: frozenset[str] | None = None
    since_ns: int | None = None
    until_ns: int | None = None

    def accepts(self, tick: Mapping[str, Any]) -> bool:
        if self.symbols is not None and tick["sym"] not in self.symbols:
            return False
        ts = tick["ts"]
        if self.since_ns is not None and ts < self.since_ns:
            return False
        return self.until_ns is None or ts < self.until_ns


def read_partition(
    consumer: Consumer,
    topic: str,
    span: PartitionRange,
    progress: _Progress,
) -> Iterator[list[Message]]:
    """The messages of `span` in offset order, a batch at a time; ends at the span's end offset
    or the partition's end, whichever comes first.

    Raises
    ------
    ReplayError
        The partition cannot be read (deleted topic, no authorization), or delivers nothing for
        READ_IDLE_TIMEOUT_S before its end.
    """
    if span.size == 0:
        return
    consumer.assign([TopicPartition(topic, span.partition, span.start)])
    next_offset = span.start
    last_activity = time.monotonic()
    try:
        while next_offset < span.end:
            # consume() waits for the whole batch or the timeout: never ask for more than the
            # offsets left, or every partition's last batch would cost the full wait.
            wanted = min(CONSUME_BATCH_MESSAGES, span.end - next_offset)
            messages = consumer.consume(wanted, CONSUME_WAIT_S)
            if not messages:
                if time.monotonic() - last_activity > READ_IDLE_TIMEOUT_S:
                    raise KafkaProblem(
                        f"{topic} partition {span.partition} delivered nothing for "
                        f"{READ_IDLE_TIMEOUT_S:g} s at offset {next_offset} of {span.end}"
                    )
                continue
            last_activity = time.monotonic()
            before = next_offset
            batch = []
            for message in messages:
                if message.partition() != span.partition:
                    continue  # a late event of the previous assignment
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        next_offset = span.end
                        break
                    if error.fatal() or error.code() in _UNREADABLE_PARTITION:
                        raise KafkaProblem(
                            f"reading {topic} partition {span.partition} failed: {error.str()}"
                        )
                    # Transient (a reconnect): librdkafka retries by itself.
                    continue
                offset = message.offset()
                if offset >= span.end:
                    next_offset = span.end
                    break
                batch.append(message)
                next_offset = offset + 1
            if batch:
                yield batch
            progress.advance(min(next_offset, span.end) - before)
    finally:
        consumer.unassign()


# --- The command ------------------------------------------------------------------------------


@dataclass
class ReplayOptions:
    bootstrap: str = DEFAULT_BOOTSTRAP
    topic: str = DEFAULT_TOPIC
    symbols: Sequence[str] = ()
    since_ns: int | None = None
    until_ns: int | None = None
    out: Path | None = None
    output_format: OutputFormat = "jsonl"
    verify: bool = False
    show_progress: bool | None = None
    """None: a progress bar exactly when stderr is a terminal."""
    kafka_settings: Mapping[str, Any] = field(default_factory=dict)
    """librdkafka settings for reaching the cluster (security, SASL, SSL); a value
    "${env:NAME}" or "${file:PATH}" is read from there when the consumer is made."""
    tick_filter: TickFilter = field(init=False)

    def __post_init__(self) -> None:
        self.tick_filter = TickFilter(
            frozenset(self.symbols) if self.symbols else None, self.since_ns, self.until_ns
        )


def add_replay_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `replay` command's arguments to `parser`."""
    parser.description = (
        "Read ticks back from the Kafka mirror into a JSONL or CSV file, and/or audit their "
        "sequence numbers (--verify). Partitions are read one after the other in offset order: "
        "each symbol's ticks are in publish order; across symbols the output follows the "
        "partitions. Reading stops at the end each partition had when replay started. "
        "Exit status: 0 done, 1 --verify found gaps, duplicates or malformed messages, "
        "2 error (broker unreachable, unknown topic, bad arguments)."
    )
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="the service's config file: take kafka.bootstrap, kafka.topic and kafka.producer's "
        "security.*, sasl.* and ssl.* settings from it (only its kafka section is read)",
    )
    parser.add_argument(
        "--bootstrap",
        metavar="HOST:PORT",
        help=f"Kafka bootstrap servers (default: from --config, else {DEFAULT_BOOTSTRAP})",
    )
    parser.add_argument(
        "--topic",
        metavar="NAME",
        help=f"topic of the mirror (default: from --config, else {DEFAULT_TOPIC})",
    )
    parser.add_argument(
        "-X",
        action="append",
        dest="kafka_settings",
        default=[],
        type=_kafka_setting_argument,
        metavar="NAME=VALUE",
        help="a librdkafka consumer setting, repeatable, e.g. -X security.protocol=SASL_SSL "
        "-X 'sasl.password=${env:KAFKA_PASSWORD}'; VALUE may be ${env:NAME} or ${file:PATH} "
        "so the secret stays off the command line; overrides --config",
    )
    parser.add_argument(
        "--symbol",
        action="append",
        dest="symbols",
        default=[],
        type=_symbol_argument,
        metavar="SYM",
        help="only this symbol, repeatable (default: all)",
    )
    parser.add_argument(
        "--since",
        type=_iso8601_argument,
        metavar="TIME",
        help="only ticks with ts at or after TIME, ISO-8601 such as 2026-11-23T09:30:00Z or "
        "2026-11-23T10:30:00+01:00, up to 9 fractional digits; without an offset TIME is UTC",
    )
    parser.add_argument(
        "--until",
        type=_iso8601_argument,
        metavar="TIME",
        help="only ticks with ts before TIME (exclusive), same format as --since",
    )
    parser.add_argument(
        "--out",
        type=Path,
        metavar="FILE",
        help="write the ticks to FILE, replaced only when the replay completes (default: stdout)",
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="jsonl",
        dest="output_format",
        help="jsonl: each payload exactly as stored, one per line; csv: a header and the fields "
        f"{','.join(CSV_FIELDS)} (default: jsonl)",
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="audit seq per (symbol, epoch) and report on stderr; exit 1 on gaps, duplicates or "
        "malformed messages. With --since, an epoch that began before the window may start "
        "mid-sequence: only its internal gaps count. Combine with --out /dev/null to only audit",
    )


def _kafka_setting_argument(text: str) -> tuple[str, str]:
    name, equals, value = text.partition("=")
    if not equals or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text.partition('=')[0]!r}")
    return name.strip(), value


def options_from_args(args: argparse.Namespace) -> ReplayOptions:
    """ReplayOptions from parsed arguments: --bootstrap and --topic win over --config, -X over
    the connection settings --config holds.

    Raises
    ------
    ConfigError
        --config cannot be read or its kafka section is wrong (naming the key).
    """
    bootstrap, topic, kafka_settings = DEFAULT_BOOTSTRAP, DEFAULT_TOPIC, {}
    if args.config is not None:
        kafka = load_kafka_config(args.config)
        bootstrap, topic, kafka_settings = kafka.bootstrap, kafka.topic, kafka.connection_settings()
    return ReplayOptions(
        bootstrap=args.bootstrap or bootstrap,
        topic=args.topic or topic,
        kafka_settings={**kafka_settings, **dict(args.kafka_settings)},
        symbols=args.symbols,
        since_ns=args.since,
        until_ns=args.until,
        out=args.out,
        output_format=args.output_format,
        verify=args.verify,
    )


def run_from_args(args: argparse.Namespace) -> int:
    """Run `feedsvc replay` with parsed arguments; returns the exit code."""
    try:
        options = options_from_args(args)
    except ConfigError as error:
        print(f"feedsvc replay: config error: {error}", file=sys.stderr)
        return EXIT_ERROR
    return run_replay(options)


def run_replay(options: ReplayOptions, stderr: TextIO | None = None) -> int:
    """Replay per `options`; reports on `stderr` (default sys.stderr). Returns the exit code."""
    stderr = stderr or sys.stderr

    def say(text: str) -> None:
        print(f"feedsvc replay: {text}", file=stderr, flush=True)

    if (
        options.since_ns is not None
        and options.until_ns is not None
        and options.since_ns >= options.until_ns
    ):
        say(
            f"--since ({format_ns(options.since_ns)}) must be before "
            f"--until ({format_ns(options.until_ns)})"
        )
        return EXIT_ERROR
    started_at = time.monotonic()
    errors = _KafkaErrors()
    try:
        consumer = make_consumer(options.bootstrap, errors, options.kafka_settings)
    except ReplayError as error:
        say(str(error))
        return EXIT_ERROR
    verifier = AuditVerifier(options.since_ns) if options.verify else None
    counts = ReplayCounts()
    try:
        with _stop_on_sigterm():
            ranges = plan_ranges(consumer, options.topic, options.since_ns, options.until_ns)
            _read_all(consumer, options, ranges, counts, verifier, say)
    except KafkaProblem as error:
        # librdkafka's last complaint (e.g. "Connection refused") is often the actual cause;
        # error_cb runs only from poll(), so serve the pending ones first.
        consumer.poll(0)
        if errors.login_refused():
            # "Is a broker running?" would mislead: it is, and it said no.
            say(
                f"Kafka at {options.bootstrap} refused the connection: {errors.last.str()}; "
                "check the security settings (-X, or kafka.producer in --config)"
            )
        else:
            say(f"{error} [bootstrap {options.bootstrap}]{errors.cause()}")
        return EXIT_ERROR
    except ReplayError as error:
        say(str(error))
        return EXIT_ERROR
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): stop quietly; keep the exit-time flush quiet too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        if verifier is None:
            return EXIT_OK
        say("the output was closed before the replay finished: no audit")
        return EXIT_ERROR
    except OSError as error:
        say(f"cannot write the output: {error}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        say("interrupted")
        return EXIT_INTERRUPTED
    except _Terminated:
        say("terminated")
        return EXIT_TERMINATED
    finally:
        consumer.close()
    summary: dict[str, Any] = {
        "topic": options.topic,
        "partitions": len(ranges),
        "messages": counts.messages,
        "ticks": counts.ticks,
        "malformed": counts.malformed,
    }
    exit_code = EXIT_OK
    if verifier is not None:
        report = verifier.report()
        if options.since_ns is not None:
            say(
                f"--since {format_ns(options.since_ns)}: epochs that began earlier are checked "
                "from their first seq in the window"
            )
        for line in report.lines():
            print(line, file=stderr)
        summary.update(report.summary())
        exit_code = EXIT_OK if report.ok else EXIT_AUDIT_FAILED
    summary["duration_s"] = round(time.monotonic() - started_at, 3)
    print(orjson.dumps(summary).decode(), file=stderr, flush=True)
    return exit_code


class _Terminated(Exception):
    """Raised in the main thread by SIGTERM."""


@contextlib.contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    # SIGTERM stops a replay like Ctrl-C does, through the same clean-up: the consumer is closed
    # and a half-written --out file removed (the default action would leave it behind).
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(_signum: int, _frame: FrameType | None) -> None:
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _read_all(
    consumer: Consumer,
    options: ReplayOptions,
    ranges: Sequence[PartitionRange],
    counts: ReplayCounts,
    verifier: AuditVerifier | None,
    say: Callable[[str], None],
) -> None:
    accepts = options.tick_filter.accepts
    observe = None if verifier is None else verifier.observe
    with open_output(options.out) as out:
        writer = make_writer(options.output_format, out)
        write = writer.write

        def skip_malformed(message: Message) -> None:
            counts.malformed += 1
            if verifier is not None:
                verifier.observe_malformed()
            if counts.malformed <= MALFORMED_DETAIL_LIMIT:
                say(
                    f"skipping malformed message at {options.topic} partition "
                    f"{message.partition()} offset {message.offset()}: "
                    f"{malformed_reason(message.value())}"
                )

        show_progress = options.show_progress
        if show_progress is None:
            show_progress = sys.stderr.isatty()
        progress_view = (
            _RichProgress(sum(span.size for span in ranges))
            if show_progress
            else contextlib.nullcontext(_NoProgress())
        )
        with progress_view as progress:
            for span in ranges:
                for batch in read_partition(consumer, options.topic, span, progress):
                    counts.messages += len(batch)
                    # The per-message loop: locals only, one decode, no per-message callbacks.
                    for message in batch:
                        payload = message.value()
                        tick = decode_tick(payload)
                        if tick is None:
                            skip_malformed(message)
                        elif accepts(tick):
                            counts.ticks += 1
                            write(payload, tick)  # type: ignore[arg-type]  # a tick has a value
                            if observe is not None:
                                observe(tick)
                    writer.flush()
