"""`feedsvc replay` against a real Kafka broker: real topics, real `feedsvc replay` processes.

Each test creates its own topic (3 partitions) and produces ticks exactly as the mirror does:
key = the symbol, value = the orjson payload, and an explicit Kafka timestamp (CreateTime) in ms,
so time windows are under the test's control. Ticks are a few hours in the past: the broker
rejects timestamps more than an hour in the future and deletes data older than its retention.
"""

from __future__ import annotations

import csv
import io
import os
import pty
import select
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import KafkaError, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from feedsvc.replay.output import CSV_FIELDS
from feedsvc.replay.plan import END_SLACK_MS, START_SLACK_MS, plan_ranges, start_offsets
from feedsvc.replay.progress import NoProgress
from feedsvc.replay.reader import make_consumer, read_partition
from feedsvc.replay.times import format_ns
from tests.conftest import PROJECT_ROOT, KafkaBroker, free_tcp_port

PARTITIONS = 3
HOUR_NS = 3_600 * 10**9
MINUTE_NS = 60 * 10**9
# Upper bound for one replay process; generous because the broker shares two cores with tests.
REPLAY_TIMEOUT_S = 60.0
# The bound for giving up on a broker that does not answer.
UNREACHABLE_LIMIT_S = 30.0


@dataclass(frozen=True)
class Produced:
    """One message as produced: what replay must give back."""

    sym: str
    seq: int
    epoch: int
    ts: int
    payload: bytes
    timestamp_ms: int


def make_tick(sym: str, seq: int, epoch: int, ts: int, **extra: Any) -> Produced:
    fields = {
        "sym": sym,
        "bid": 100.0 + seq / 100,
        "ask": 100.02 + seq / 100,
        "bid_size": 100 * seq,
        "ask_size": 200,
        **extra,
        "seq": seq,
        "epoch": epoch,
        "ts": ts,
    }
    # CreateTime = ts (in ms), the mirror without lag.
    return Produced(sym, seq, epoch, ts, orjson.dumps(fields), ts // 1_000_000)


def hours_ago_ns(hours: int) -> int:
    """A whole hour some hours back: recent enough for retention, never in the future."""
    now_ns = time.time_ns()
    return (now_ns // HOUR_NS - hours) * HOUR_NS


@pytest.fixture(scope="module")
def admin(kafka_broker: KafkaBroker) -> AdminClient:
    return AdminClient({"bootstrap.servers": kafka_broker.bootstrap})


@pytest.fixture
def topic(admin: AdminClient) -> Iterator[str]:
    """A fresh topic for one test, deleted after it."""
    name = f"replay-test-{uuid.uuid4().hex[:12]}"
    admin.create_topics([NewTopic(name, num_partitions=PARTITIONS, replication_factor=1)])[
        name
    ].result(timeout=30)
    yield name
    admin.delete_topics([name])[name].result(timeout=30)


def produce(
    bootstrap: str, topic: str, messages: Sequence[Produced | tuple[bytes, bytes, int]]
) -> None:
    """Produce in order, keyed by symbol, with the given timestamps; fail on any delivery error."""
    failures: list[KafkaError] = []

    def on_delivery(error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            failures.append(error)

    producer = Producer(
        {"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5}
    )
    for message in messages:
        if isinstance(message, Produced):
            key, value, timestamp_ms = message.sym.encode(), message.payload, message.timestamp_ms
        else:
            key, value, timestamp_ms = message
        producer.produce(topic, value, key, timestamp=timestamp_ms, on_delivery=on_delivery)
    assert producer.flush(30) == 0, "messages still undelivered after 30 s"
    assert failures == []


def run_replay(
    bootstrap: str, *args: str, timeout_s: float = REPLAY_TIMEOUT_S
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "feedsvc.cli", "replay", "--bootstrap", bootstrap, *args],
        capture_output=True,
        timeout=timeout_s,
        cwd=PROJECT_ROOT,
        check=False,
    )


def summary_of(result: subprocess.CompletedProcess[bytes]) -> dict[str, Any]:
    """The JSON summary: the last line on stderr."""
    lines = result.stderr.decode().strip().splitlines()
    assert lines, f"no summary on stderr (exit {result.returncode})"
    return orjson.loads(lines[-1])


def describe(result: subprocess.CompletedProcess[bytes]) -> str:
    return f"exit {result.returncode}, stderr:\n{result.stderr.decode()}"


def several_symbols(epoch: int, count: int = 40) -> list[Produced]:
    """Five symbols, `count` ticks each a minute apart, interleaved like a live feed; some ticks
    carry the optional fields and an unknown extra."""
    ticks = []
    for seq in range(1, count + 1):
        for number, sym in enumerate(("AAA", "BBB", "CCC", "DDD", "EEE.X")):
            extra: dict[str, Any] = {}
            if seq % 3 == 0:
                extra = {"last": 100.01, "last_size": 5, "venue": "XNAS", "ts_src": epoch + seq}
            if seq % 7 == 0:
                extra["cond"] = "@"
            ts = epoch + seq * MINUTE_NS + number * 1_000
            ticks.append(make_tick(sym, seq, epoch, ts, **extra))
    return ticks


def lines_of(data: bytes) -> list[bytes]:
    assert data == b"" or data.endswith(b"\n")
    return data.splitlines()


# --- Output ---------------------------------------------------------------------------------


def test_jsonl_is_the_produced_payloads_byte_for_byte(
    kafka_broker: KafkaBroker, topic: str, tmp_path: Path
) -> None:
    ticks = several_symbols(hours_ago_ns(6))
    produce(kafka_broker.bootstrap, topic, ticks)
    out = tmp_path / "ticks.jsonl"

    result = run_replay(kafka_broker.bootstrap, "--topic", topic, "--out", str(out))

    assert result.returncode == 0, describe(result)
    written = lines_of(out.read_bytes())
    assert Counter(written) == Counter(tick.payload for tick in ticks)
    # Per symbol, in seq order (each symbol is in one partition, read in offset order).
    by_symbol: dict[str, list[bytes]] = defaultdict(list)
    for line in written:
        by_symbol[orjson.loads(line)["sym"]].append(line)
    for sym, lines in by_symbol.items():
        assert lines == [tick.payload for tick in ticks if tick.sym == sym]
    summary = summary_of(result)
    assert (summary["messages"], summary["ticks"], summary["malformed"]) == (200, 200, 0)
    assert summary["partitions"] == PARTITIONS


def test_stdout_is_the_default_output_and_two_replays_are_identical(
    kafka_broker: KafkaBroker, topic: str
) -> None:
    ticks = several_symbols(hours_ago_ns(6), count=10)
    produce(kafka_broker.bootstrap, topic, ticks)

    first = run_replay(kafka_broker.bootstrap, "--topic", topic)
    second = run_replay(kafka_broker.bootstrap, "--topic", topic)

    assert first.returncode == 0, describe(first)
    assert Counter(lines_of(first.stdout)) == Counter(tick.payload for tick in ticks)
    assert second.stdout == first.stdout
    # Not a terminal: no progress bar, only the summary line on stderr.
    assert len(first.stderr.decode().strip().splitlines()) == 1


def test_symbol_filter_gives_exactly_those_symbols(kafka_broker: KafkaBroker, topic: str) -> None:
    ticks = several_symbols(hours_ago_ns(6), count=20)
    produce(kafka_broker.bootstrap, topic, ticks)

    result = run_replay(
        kafka_broker.bootstrap, "--topic", topic, "--symbol", "BBB", "--symbol", "EEE.X"
    )

    assert result.returncode == 0, describe(result)
    expected = [tick.payload for tick in ticks if tick.sym in {"BBB", "EEE.X"}]
    assert Counter(lines_of(result.stdout)) == Counter(expected)
    assert summary_of(result)["ticks"] == 40


def test_since_until_select_exactly_the_window_located_by_time(
    kafka_broker: KafkaBroker, topic: str
) -> None:
    epoch = hours_ago_ns(10)
    # Per symbol a tick every 10 minutes over 9 hours, plus ticks on and around the bounds.
    since, until = epoch + 3 * HOUR_NS, epoch + 6 * HOUR_NS
    ticks: list[Produced] = []
    for sym in ("AAA", "BBB", "CCC", "DDD"):
        stamps = [epoch + step * 10 * MINUTE_NS for step in range(1, 55)]
        stamps += [since - 1, since, until - 1, until]
        stamps.sort()
        ticks += [make_tick(sym, seq, epoch, ts) for seq, ts in enumerate(stamps, start=1)]
    ticks.sort(key=lambda tick: tick.ts)
    produce(kafka_broker.bootstrap, topic, ticks)
    # One bound with an offset, one naive (UTC): the same instants.
    since_text = datetime.fromtimestamp(since // 10**9, timezone(timedelta(hours=2))).isoformat()
    until_text = datetime.fromtimestamp(until // 10**9, UTC).strftime("%Y-%m-%dT%H:%M:%S")

    result = run_replay(
        kafka_broker.bootstrap, "--topic", topic, "--since", since_text, "--until", until_text
    )

    assert result.returncode == 0, describe(result)
    expected = [tick.payload for tick in ticks if since <= tick.ts < until]
    assert Counter(lines_of(result.stdout)) == Counter(expected)
    written_ts = {orjson.loads(line)["ts"] for line in lines_of(result.stdout)}
    assert since in written_ts and until - 1 in written_ts
    assert since - 1 not in written_ts and until not in written_ts
    # Only the messages from the time lookups' offsets were read, not the whole topic.
    start_ms = since // 1_000_000 - START_SLACK_MS
    end_ms = until // 1_000_000 + END_SLACK_MS
    read_expected = sum(start_ms <= tick.timestamp_ms < end_ms for tick in ticks)
    assert summary_of(result)["messages"] == read_expected < len(ticks)


def test_start_offsets_come_from_offsets_for_times(kafka_broker: KafkaBroker, topic: str) -> None:
    epoch = hours_ago_ns(8)
    # One symbol, so one partition holds everything: 60 ticks, one every 5 minutes.
    ticks = [make_tick("AAA", seq, epoch, epoch + seq * 5 * MINUTE_NS) for seq in range(1, 61)]
    produce(kafka_broker.bootstrap, topic, ticks)
    since = epoch + 2 * HOUR_NS  # seq 24 and later

    consumer = make_consumer(kafka_broker.bootstrap)
    try:
        offsets = start_offsets(consumer, topic, since)
        ranges = plan_ranges(consumer, topic, since, None)
    finally:
        consumer.close()

    data_partition = next(span.partition for span in ranges if span.end > 0)
    # Offsets are 0-based in produce order: seq 24 is at offset 23.
    assert offsets[data_partition] == 23
    assert all(offsets[p] is None for p in offsets if p != data_partition)
    assert [(span.start, span.end) for span in ranges if span.partition == data_partition] == [
        (23, 60)
    ]


def test_csv_has_the_header_and_one_row_per_tick(kafka_broker: KafkaBroker, topic: str) -> None:
    ticks = several_symbols(hours_ago_ns(6), count=12)
    produce(kafka_broker.bootstrap, topic, ticks)

    result = run_replay(kafka_broker.bootstrap, "--topic", topic, "--format", "csv")

    assert result.returncode == 0, describe(result)
    text = result.stdout.decode()
    assert text.splitlines()[0] == (
        "sym,seq,epoch,ts,bid,ask,bid_size,ask_size,last,last_size,venue,ts_src"
    )
    rows = list(csv.DictReader(io.StringIO(text)))
    expected_rows = []
    for tick in ticks:
        fields = orjson.loads(tick.payload)
        expected_rows.append(
            tuple("" if fields.get(name) is None else str(fields[name]) for name in CSV_FIELDS)
        )
    assert Counter(tuple(row[name] for name in CSV_FIELDS) for row in rows) == Counter(
        expected_rows
    )
    assert all(None not in row for row in rows)  # no extra columns (the unknown "cond")


# --- --verify ---------------------------------------------------------------------------------


def test_verify_contiguous_data_passes(kafka_broker: KafkaBroker, topic: str) -> None:
    ticks = several_symbols(hours_ago_ns(6), count=30)
    produce(kafka_broker.bootstrap, topic, ticks)

    result = run_replay(kafka_broker.bootstrap, "--topic", topic, "--verify", "--out", os.devnull)

    assert result.returncode == 0, describe(result)
    summary = summary_of(result)
    assert summary["ok"] is True
    assert (summary["ticks"], summary["gaps"], summary["duplicates"]) == (150, 0, 0)
    assert (summary["missing"], summary["symbols"], summary["epochs"]) == (0, 5, 1)
    assert result.stderr.decode().count("no gaps") == 5
    assert Path(os.devnull).is_char_device()  # written to, never replaced


def test_verify_names_the_missing_ranges(kafka_broker: KafkaBroker, topic: str) -> None:
    ticks = [
        tick
        for tick in several_symbols(hours_ago_ns(6), count=30)
        if not (tick.sym == "CCC" and tick.seq in {5, 6, 7, 12})
    ]
    produce(kafka_broker.bootstrap, topic, ticks)

    result = run_replay(kafka_broker.bootstrap, "--topic", topic, "--verify", "--out", os.devnull)

    assert result.returncode == 1, describe(result)
    summary = summary_of(result)
    assert (summary["gaps"], summary["missing"], summary["duplicates"]) == (2, 4, 0)
    (ccc_line,) = [line for line in result.stderr.decode().splitlines() if line.startswith("CCC")]
    assert "gaps 5-7, 12 (4 missing)" in ccc_line


def test_verify_counts_a_duplicated_message(kafka_broker: KafkaBroker, topic: str) -> None:
    ticks = several_symbols(hours_ago_ns(6), count=30)
    repeated = next(tick for tick in ticks if tick.sym == "AAA" and tick.seq == 10)
    produce(kafka_broker.bootstrap, topic, [*ticks, repeated])

    result = run_replay(kafka_broker.bootstrap, "--topic", topic, "--verify", "--out", os.devnull)

    assert result.returncode == 1, describe(result)
    summary = summary_of(result)
    assert (summary["duplicates"], summary["gaps"], summary["ticks"]) == (1, 0, 151)


def test_verify_an_epoch_change_is_not_a_gap(kafka_broker: KafkaBroker, topic: str) -> None:
    first_epoch = hours_ago_ns(6)
    second_epoch = first_epoch + HOUR_NS
    ticks = [make_tick("AAA", seq, first_epoch, first_epoch + seq * 10**9) for seq in range(1, 26)]
    ticks += [
        make_tick("AAA", seq, second_epoch, second_epoch + seq * 10**9) for seq in range(1, 11)
    ]
    produce(kafka_broker.bootstrap, topic, ticks)

    result = run_replay(kafka_broker.bootstrap, "--topic", topic, "--verify", "--out", os.devnull)

    assert result.returncode == 0, describe(result)
    summary = summary_of(result)
    assert (summary["epochs"], summary["gaps"], summary["ticks"]) == (2, 0, 35)


def test_verify_with_since_counts_a_mid_sequence_start_only_when_the_epoch_began_earlier(
    kafka_broker: KafkaBroker, topic: str
) -> None:
    old_epoch = hours_ago_ns(8)
    new_epoch = old_epoch + 4 * HOUR_NS
    since = old_epoch + 2 * HOUR_NS
    # The old epoch runs across `since`; the new one begins inside the window but its seq 1-2
    # never reached Kafka: that is a gap even though the window starts mid-sequence elsewhere.
    ticks = [make_tick("AAA", seq, old_epoch, old_epoch + seq * MINUTE_NS) for seq in range(1, 200)]
    ticks += [make_tick("AAA", seq, new_epoch, new_epoch + seq * MINUTE_NS) for seq in range(3, 9)]
    produce(kafka_broker.bootstrap, topic, ticks)

    result = run_replay(
        kafka_broker.bootstrap,
        "--topic",
        topic,
        "--verify",
        "--out",
        os.devnull,
        "--since",
        format_ns(since),
    )

    assert result.returncode == 1, describe(result)
    summary = summary_of(result)
    assert (summary["gaps"], summary["missing"], summary["epochs"]) == (1, 2, 2)
    stderr = result.stderr.decode()
    assert f"AAA epoch {new_epoch}: 6 ticks, seq 3-8, gaps 1-2 (2 missing)" in stderr
    assert f"AAA epoch {old_epoch}: 80 ticks, seq 120-199 (began before the window), no gaps" in (
        stderr
    )


def test_malformed_messages_are_counted_never_fatal(
    kafka_broker: KafkaBroker, topic: str, tmp_path: Path
) -> None:
    epoch = hours_ago_ns(6)
    ticks = [make_tick("AAA", seq, epoch, epoch + seq * 10**9) for seq in range(1, 11)]
    stamp = ticks[0].timestamp_ms
    junk = [
        (b"AAA", b"not json", stamp),
        (b"AAA", b'{"sym": "AAA"}', stamp),
        (b"BBB", b"\xff\x00", stamp),
    ]
    produce(kafka_broker.bootstrap, topic, [*ticks[:5], *junk, *ticks[5:]])
    out = tmp_path / "ticks.jsonl"

    plain = run_replay(kafka_broker.bootstrap, "--topic", topic, "--out", str(out))
    audited = run_replay(kafka_broker.bootstrap, "--topic", topic, "--verify", "--out", os.devnull)

    assert plain.returncode == 0, describe(plain)
    assert lines_of(out.read_bytes()) == [tick.payload for tick in ticks]
    assert (summary_of(plain)["malformed"], summary_of(plain)["messages"]) == (3, 13)
    assert "not JSON" in plain.stderr.decode()
    assert audited.returncode == 1, describe(audited)
    assert (summary_of(audited)["malformed"], summary_of(audited)["gaps"]) == (3, 0)


def test_replay_of_a_live_topic_ends_at_the_watermarks_captured_at_start(
    kafka_broker: KafkaBroker, topic: str
) -> None:
    epoch = hours_ago_ns(2)
    initial = [make_tick("AAA", seq, epoch, epoch + seq * 10**6) for seq in range(1, 2_001)]
    produce(kafka_broker.bootstrap, topic, initial)
    stop = threading.Event()

    def keep_producing() -> None:
        producer = Producer({"bootstrap.servers": kafka_broker.bootstrap, "linger.ms": 5})
        seq = len(initial)
        while not stop.is_set():
            seq += 1
            late = make_tick("AAA", seq, epoch, epoch + seq * 10**6)
            producer.produce(topic, late.payload, b"AAA", timestamp=late.timestamp_ms)
            producer.poll(0.001 if seq % 100 else 0.05)
        producer.flush(10)

    feeder = threading.Thread(target=keep_producing, daemon=True)
    feeder.start()
    try:
        time.sleep(0.5)
        result = run_replay(kafka_broker.bootstrap, "--topic", topic, "--verify")
    finally:
        stop.set()
        feeder.join(15)

    assert result.returncode == 0, describe(result)
    seqs = [orjson.loads(line)["seq"] for line in lines_of(result.stdout)]
    assert len(seqs) > len(initial)  # some of the live ticks, in order, then it stopped
    assert seqs == list(range(1, len(seqs) + 1))


def test_reading_stops_at_the_watermarks_of_the_plan(kafka_broker: KafkaBroker, topic: str) -> None:
    epoch = hours_ago_ns(2)
    ticks = [make_tick("AAA", seq, epoch, epoch + seq * 10**6) for seq in range(1, 301)]
    produce(kafka_broker.bootstrap, topic, ticks[:200])
    consumer = make_consumer(kafka_broker.bootstrap)
    try:
        ranges = plan_ranges(consumer, topic, None, None)
        # Ticks that arrive after the plan was made are not part of this replay.
        produce(kafka_broker.bootstrap, topic, ticks[200:])
        read = [
            message.value()
            for span in ranges
            for batch in read_partition(consumer, topic, span, NoProgress())
            for message in batch
        ]
    finally:
        consumer.close()
    assert read == [tick.payload for tick in ticks[:200]]


# --- Errors -----------------------------------------------------------------------------------


def test_unknown_topic_is_exit_2_naming_it_and_not_created(
    kafka_broker: KafkaBroker, admin: AdminClient, tmp_path: Path
) -> None:
    missing = f"replay-missing-{uuid.uuid4().hex[:12]}"
    out = tmp_path / "never.jsonl"

    result = run_replay(kafka_broker.bootstrap, "--topic", missing, "--out", str(out))

    assert result.returncode == 2, describe(result)
    assert f"topic '{missing}' does not exist" in result.stderr.decode()
    assert missing not in admin.list_topics(timeout=10).topics
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_unreachable_bootstrap_is_exit_2_within_the_bound() -> None:
    closed_port = free_tcp_port()  # nothing listens there
    started = time.monotonic()

    result = run_replay(f"127.0.0.1:{closed_port}", timeout_s=UNREACHABLE_LIMIT_S + 15)

    elapsed_s = time.monotonic() - started
    assert result.returncode == 2, describe(result)
    assert elapsed_s < UNREACHABLE_LIMIT_S
    stderr = result.stderr.decode()
    assert "Kafka does not answer" in stderr and f"127.0.0.1:{closed_port}" in stderr
    assert "Traceback" not in stderr


def test_since_not_before_until_is_a_usage_error() -> None:
    result = run_replay(
        "127.0.0.1:1", "--since", "2026-11-23T10:00:00Z", "--until", "2026-11-23T09:00:00Z"
    )
    assert result.returncode == 2, describe(result)
    assert "--since" in result.stderr.decode() and "must be before" in result.stderr.decode()


def test_bad_time_is_a_usage_error() -> None:
    result = run_replay("127.0.0.1:1", "--since", "last tuesday")
    assert result.returncode == 2
    assert "not an ISO-8601 date-time" in result.stderr.decode()


# --- Progress -------------------------------------------------------------------------------


def test_progress_bar_on_a_terminal_only(kafka_broker: KafkaBroker, topic: str) -> None:
    ticks = several_symbols(hours_ago_ns(6), count=20)
    produce(kafka_broker.bootstrap, topic, ticks)
    # stderr is a pseudo-terminal here; stdout stays a pipe.
    controller, terminal = pty.openpty()
    try:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "feedsvc.cli",
                "replay",
                "--bootstrap",
                kafka_broker.bootstrap,
                "--topic",
                topic,
            ],
            stdout=subprocess.PIPE,
            stderr=terminal,
            cwd=PROJECT_ROOT,
            env={**os.environ, "COLUMNS": "120", "TERM": "xterm"},
        )
        os.close(terminal)
        shown = b""
        deadline = time.monotonic() + REPLAY_TIMEOUT_S
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(controller, 65536)
                except OSError:  # the terminal closed: the process has exited
                    break
                if not chunk:
                    break
                shown += chunk
            elif process.poll() is not None:
                break
        stdout = process.stdout.read() if process.stdout else b""
        assert process.wait(REPLAY_TIMEOUT_S) == 0, shown.decode(errors="replace")
    finally:
        os.close(controller)
    assert Counter(lines_of(stdout)) == Counter(tick.payload for tick in ticks)
    assert b"100/100" in shown, shown.decode(errors="replace")
