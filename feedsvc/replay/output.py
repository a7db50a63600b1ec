"""Where the replayed ticks go: `open_output` (stdout, or a --out file that is complete or not
there at all) and the writers of each --format."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import stat
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO, Final, Literal, Protocol

import orjson

from feedsvc.replay.errors import ReplayError

OutputFormat = Literal["jsonl", "csv"]
FORMATS: Final[tuple[OutputFormat, ...]] = ("jsonl", "csv")

STANDARD_CSV_FIELDS: Final = ("sym", "seq", "epoch", "ts", "bid", "ask", "bid_size", "ask_size")
OPTIONAL_CSV_FIELDS: Final = ("last", "last_size", "venue", "ts_src")
CSV_FIELDS: Final = STANDARD_CSV_FIELDS + OPTIONAL_CSV_FIELDS


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
    """The writer of `output_format` on `out`."""
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
