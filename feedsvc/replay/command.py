"""`feedsvc replay`: read the Kafka mirror of the tick stream back out, to a file or an audit.

This module holds the arguments (`add_replay_arguments`, `run_from_args`) and `run_replay`, which
wires the parts of the package together.

The mirror of `feedsvc serve` produces every published tick to one topic: key = the symbol,
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
   each tick's own ``ts``: since inclusive, until exclusive. The constants' comments in
   `feedsvc.replay.plan` say why the Kafka timestamps can bound the read.
4. Partitions are read one after the other with ``assign()`` (no consumer group, no commits),
   each in offset order. One symbol's ticks all live in one partition (partitioning is by key), so
   each symbol's ticks come out in publish order; across symbols the output follows the
   partitions: partition 0's ticks, then partition 1's, and so on. This makes two replays of the
   same data byte-identical; sort by ``ts`` for one time-ordered stream.

A message that is not a tick (not JSON, or without sym/seq/epoch/ts) is skipped and counted as
``malformed``, never fatal. ``--verify`` audits the sequence numbers per (symbol, epoch) with
`AuditVerifier`, a pure class that knows nothing of Kafka. A JSON summary line always ends stderr.

``--verify`` first reads the whole checkpoint topic (``--checkpoint-topic``, default
``<topic>.checkpoints``; absent is not an error), before the tick topic's watermarks are
captured: each checkpoint is committed in the same transaction as the ticks it names, so the
ticks of every checkpoint read are below those watermarks (once the broker has written the
transaction's commit markers to every partition). The audit then also finds ticks a
checkpoint says were published that are missing (the tail of a symbol, or all of it) and reports
each epoch closed or open. The summary line gains ``checkpoints`` (records read, null without the
topic), ``missing_tail``, ``open_epochs`` and ``closed_epochs`` (lists of {epoch, instance,
last_checkpoint_ts, last_checkpoint_time, complete_through_checkpoint, missing, dropped,
ticks_written}), ``malformed_checkpoints``, ``dropped_unlocated`` and
``epochs_without_checkpoints``.

Exit status: 0 done; 1 ``--verify`` found gaps (tails a checkpoint claims included), duplicates,
malformed messages or checkpoints, or ticks the service dropped; an open epoch alone is not a
failure (the live one is open). 2 the broker does not answer, the topic does not exist, or the
arguments or --out are unusable.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Final, TextIO

import orjson

from feedsvc.config import ConfigError, load_kafka_config
from feedsvc.protocol.checkpoints import checkpoint_topic_for, decode_checkpoint
from feedsvc.protocol.ticks import symbol_problem
from feedsvc.replay.audit import AuditVerifier
from feedsvc.replay.errors import KafkaProblem, ReplayError
from feedsvc.replay.output import CSV_FIELDS, FORMATS, OutputFormat, make_writer, open_output
from feedsvc.replay.plan import plan_ranges
from feedsvc.replay.progress import NoProgress, ProgressBar
from feedsvc.replay.reader import (
    LastKafkaError,
    PartitionRange,
    checkpoint_ranges,
    make_consumer,
    read_partition,
    topic_partitions,
)
from feedsvc.replay.ticks import TickFilter, decode_tick, malformed_reason
from feedsvc.replay.times import format_ns, parse_iso8601_ns

if TYPE_CHECKING:
    from confluent_kafka import Consumer, Message

DEFAULT_BOOTSTRAP: Final = "127.0.0.1:9092"
DEFAULT_TOPIC: Final = "ticks"

EXIT_OK: Final = 0
EXIT_AUDIT_FAILED: Final = 1
EXIT_ERROR: Final = 2
EXIT_INTERRUPTED: Final = 130  # 128 + SIGINT, as a shell reports it
EXIT_TERMINATED: Final = 143  # 128 + SIGTERM

# Only the first few malformed messages are described one by one; the rest are counted.
MALFORMED_DETAIL_LIMIT: Final = 10


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


@dataclass
class ReplayCounts:
    """What a replay read, for the JSON summary line."""

    messages: int = 0
    """Kafka messages read."""
    ticks: int = 0
    """Ticks that passed the filters and went to the output."""
    malformed: int = 0


@dataclass
class ReplayOptions:
    """One replay: the topic, the selection, the output; `options_from_args` makes it."""

    bootstrap: str = DEFAULT_BOOTSTRAP
    topic: str = DEFAULT_TOPIC
    symbols: Sequence[str] = ()
    since_ns: int | None = None
    until_ns: int | None = None
    out: Path | None = None
    output_format: OutputFormat = "jsonl"
    verify: bool = False
    checkpoint_topic: str = ""
    """The mirror's checkpoint topic for --verify; "" = derived from `topic`."""
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

    @property
    def checkpoint_topic_name(self) -> str:
        return checkpoint_topic_for(self.topic, self.checkpoint_topic)


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
        "malformed messages. The mirror's checkpoint records (--checkpoint-topic) also find "
        "lost last ticks of a symbol, or all of its ticks, and say per epoch whether it was "
        "closed by a clean shutdown or is open (complete through its last checkpoint or not). "
        "With --since, an epoch that began before the window may start mid-sequence: only its "
        "internal gaps count. Combine with --out /dev/null to only audit",
    )
    parser.add_argument(
        "--checkpoint-topic",
        metavar="NAME",
        help="the mirror's checkpoint topic for --verify (default: kafka.checkpoint_topic from "
        "--config, else <topic>.checkpoints); a topic that does not exist is reported, not an "
        "error",
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
    checkpoint_topic = ""
    if args.config is not None:
        kafka = load_kafka_config(args.config)
        bootstrap, topic, kafka_settings = kafka.bootstrap, kafka.topic, kafka.connection_settings()
        # Only if the configured topic is used: --topic names another mirror.
        if not args.topic:
            checkpoint_topic = getattr(kafka, "checkpoint_topic", "")
    return ReplayOptions(
        bootstrap=args.bootstrap or bootstrap,
        topic=args.topic or topic,
        checkpoint_topic=args.checkpoint_topic or checkpoint_topic,
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
    errors = LastKafkaError()
    try:
        consumer = make_consumer(options.bootstrap, errors, options.kafka_settings)
    except ReplayError as error:
        say(str(error))
        return EXIT_ERROR
    verifier = (
        AuditVerifier(options.since_ns, options.until_ns, options.symbols or None)
        if options.verify
        else None
    )
    counts = ReplayCounts()
    try:
        with _stop_on_sigterm():
            if verifier is not None:
                topic_partitions(consumer, options.topic)  # an unknown --topic fails first
                # Before the tick watermarks are captured (see the module docstring).
                _read_checkpoints(consumer, options.checkpoint_topic_name, verifier, say)
            ranges = plan_ranges(consumer, options.topic, options.since_ns, options.until_ns)
            _replay_ranges(consumer, options, ranges, counts, verifier, say)
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
        for line in [*report.lines(), *report.checkpoint_lines()]:
            print(line, file=stderr)
        summary.update(report.summary())
        summary["checkpoint_topic"] = options.checkpoint_topic_name
        summary.update(report.checkpoint_summary())
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


def _read_checkpoints(
    consumer: Consumer, topic: str, verifier: AuditVerifier, say: Callable[[str], None]
) -> None:
    """Feed the whole checkpoint topic to `verifier`; say so if there is none."""
    ranges = checkpoint_ranges(consumer, topic)
    if ranges is None:
        say(f"no checkpoint topic {topic!r}: the last ticks of a symbol cannot be checked")
        return
    verifier.expect_checkpoints()
    malformed = 0
    for span in ranges:
        for batch in read_partition(consumer, topic, span, NoProgress()):
            for message in batch:
                try:
                    record = decode_checkpoint(message.value() or b"")
                except ValueError as error:
                    verifier.observe_malformed_checkpoint()
                    malformed += 1
                    if malformed <= MALFORMED_DETAIL_LIMIT:
                        say(
                            f"skipping malformed checkpoint at {topic} partition "
                            f"{message.partition()} offset {message.offset()}: {error}"
                        )
                    continue
                verifier.observe_checkpoint(record)


def _replay_ranges(
    consumer: Consumer,
    options: ReplayOptions,
    ranges: Sequence[PartitionRange],
    counts: ReplayCounts,
    verifier: AuditVerifier | None,
    say: Callable[[str], None],
) -> None:
    """Read `ranges` in order; write, count and audit the selected ticks."""
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
            ProgressBar(sum(span.size for span in ranges))
            if show_progress
            else contextlib.nullcontext(NoProgress())
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
