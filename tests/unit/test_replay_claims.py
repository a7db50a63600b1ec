"""The checkpoint side of `AuditVerifier`: tails and whole symbols a checkpoint claims, closed and
open epochs, windows; the checkpoint record's decoding; how replay finds the checkpoint topic."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from feedsvc.protocol.checkpoints import (
    TYPE_CHECKPOINT,
    TYPE_CLOSE,
    Checkpoint,
    checkpoint_topic_for,
    decode_checkpoint,
)
from feedsvc.replay.audit import AuditReport, AuditVerifier
from feedsvc.replay.command import add_replay_arguments, options_from_args
from feedsvc.replay.errors import ReplayError
from feedsvc.replay.reader import make_consumer
from feedsvc.replay.times import format_ns

EPOCH = 1_795_427_742_012_345_678
SECOND_NS = 10**9
INSTANCE = "feedsvc-host-ticks"


def tick(seq: int, sym: str = "AAA", epoch: int = EPOCH) -> dict[str, Any]:
    # One tick a second: the window tests place --since/--until between them.
    return {"sym": sym, "seq": seq, "epoch": epoch, "ts": epoch + seq * SECOND_NS}


def record(
    last_seq: dict[str, int],
    at_s: float,
    record_type: str = TYPE_CHECKPOINT,
    epoch: int = EPOCH,
    ticks: int = 0,
    dropped: int = 0,
) -> Checkpoint:
    return Checkpoint(
        type=record_type,
        instance=INSTANCE,
        epoch=epoch,
        ts=epoch + int(at_s * SECOND_NS),
        batch=1,
        ticks=ticks,
        dropped=dropped,
        last_seq=last_seq,
    )


def audit(
    ticks: dict[str, list[int]],
    records: list[Checkpoint],
    since_ns: int | None = None,
    until_ns: int | None = None,
) -> AuditReport:
    verifier = AuditVerifier(since_ns, until_ns)
    verifier.expect_checkpoints()
    for checkpoint in records:
        verifier.observe_checkpoint(checkpoint)
    for sym, seqs in ticks.items():
        for seq in seqs:
            verifier.observe(tick(seq, sym))
    return verifier.report()


def sequence(report: AuditReport, sym: str) -> Any:
    (found,) = [audit for audit in report.sequences if audit.symbol == sym]
    return found


def test_a_missing_tail_is_a_gap_named_after_the_last_tick_seen() -> None:
    report = audit({"AAA": list(range(1, 9))}, [record({"AAA": 10}, at_s=11)])

    aaa = sequence(report, "AAA")
    assert aaa.missing_ranges == ((9, 10),)
    assert (report.gaps, report.missing, report.missing_tail) == (1, 2, 2)
    assert not report.ok
    assert "gaps 9-10 (2 missing, 2 of them after the last tick seen" in aaa.line()
    assert "seq 10 was published" in aaa.line()
    (epoch,) = report.checkpoint_summary()["open_epochs"]
    assert (epoch["missing"], epoch["complete_through_checkpoint"]) == (2, False)


def test_a_symbol_with_no_tick_at_all_is_missing_whole() -> None:
    report = audit({"AAA": [1, 2, 3]}, [record({"AAA": 3, "BBB": 5}, at_s=6)])

    bbb = sequence(report, "BBB")
    assert (bbb.count, bbb.missing_ranges) == (0, ((1, 5),))
    assert (report.missing, report.missing_tail, report.symbols, report.ticks) == (5, 5, 1, 3)
    assert "BBB epoch" in bbb.line() and "no ticks" in bbb.line() and "1-5" in bbb.line()
    assert not report.ok


def test_claims_met_leave_an_open_epoch_complete_through_its_last_checkpoint() -> None:
    records = [record({"AAA": 4, "BBB": 2}, at_s=5, ticks=6), record({"AAA": 6}, at_s=7, ticks=8)]
    report = audit({"AAA": list(range(1, 8)), "BBB": [1, 2]}, records)

    assert report.ok
    summary = report.checkpoint_summary()
    assert summary["closed_epochs"] == []
    (epoch,) = summary["open_epochs"]
    assert epoch == {
        "epoch": EPOCH,
        "instance": INSTANCE,
        "last_checkpoint_ts": EPOCH + 7 * SECOND_NS,
        "last_checkpoint_time": format_ns(EPOCH + 7 * SECOND_NS),
        "complete_through_checkpoint": True,
        "missing": 0,
        "dropped": 0,
        "ticks_written": 8,
    }
    (line,) = [line for line in report.checkpoint_lines() if line.startswith("epoch")]
    assert "open" in line
    assert f"complete through checkpoint at {format_ns(EPOCH + 7 * SECOND_NS)}" in line


def test_a_close_record_closes_the_epoch() -> None:
    records = [
        record({"AAA": 3}, at_s=4),
        record({"AAA": 5, "BBB": 1}, at_s=6, record_type=TYPE_CLOSE, ticks=6),
    ]
    closed = audit({"AAA": list(range(1, 6)), "BBB": [1]}, records)
    short = audit({"AAA": list(range(1, 5))}, records)

    assert closed.ok
    assert closed.checkpoint_summary()["open_epochs"] == []
    (epoch,) = closed.checkpoint_summary()["closed_epochs"]
    assert epoch["complete_through_checkpoint"] is True
    assert any("closed at" in line and "complete" in line for line in closed.checkpoint_lines())
    assert not short.ok
    assert (short.missing_tail, short.gaps) == (2, 2)  # AAA 5 and all of BBB
    (epoch,) = short.checkpoint_summary()["closed_epochs"]
    assert (epoch["complete_through_checkpoint"], epoch["missing"]) == (False, 2)
    assert any("INCOMPLETE" in line for line in short.checkpoint_lines())


def test_deltas_merge_by_maximum_in_any_order() -> None:
    records = [record({"AAA": 9}, at_s=10), record({"AAA": 4, "BBB": 2}, at_s=5)]
    report = audit({"AAA": list(range(1, 8)), "BBB": [1, 2]}, records)

    assert sequence(report, "AAA").claimed_last_seq == 9
    assert report.missing_tail == 2
    (epoch,) = report.checkpoint_summary()["open_epochs"]
    assert epoch["last_checkpoint_ts"] == EPOCH + 10 * SECOND_NS


def test_a_gap_below_a_claim_makes_the_epoch_incomplete_without_a_tail() -> None:
    report = audit({"AAA": [1, 2, 4, 5]}, [record({"AAA": 5}, at_s=6)])

    assert (report.missing, report.missing_tail) == (1, 0)
    assert report.checkpoint_summary()["open_epochs"][0]["complete_through_checkpoint"] is False


def test_ticks_after_the_last_checkpoint_of_an_open_epoch_are_fine() -> None:
    report = audit({"AAA": list(range(1, 21))}, [record({"AAA": 10}, at_s=11)])

    assert report.ok
    assert report.checkpoint_summary()["open_epochs"][0]["complete_through_checkpoint"] is True


def test_drops_the_seqs_cannot_place_fail_only_an_audit_of_everything() -> None:
    # The service dropped 2 ticks the checkpoints name no seq for (tails never handed over).
    records = [record({"AAA": 5}, at_s=6, dropped=2)]
    everything = audit({"AAA": list(range(1, 6))}, records)
    windowed = audit({"AAA": list(range(1, 6))}, records, until_ns=EPOCH + 100 * SECOND_NS)

    assert (everything.dropped_unlocated, everything.ok) == (2, False)
    assert everything.checkpoint_summary()["open_epochs"][0]["dropped"] == 2
    assert (windowed.dropped_unlocated, windowed.ok) == (0, True)
    assert windowed.checkpoint_summary()["open_epochs"][0]["complete_through_checkpoint"] is False


def test_drops_located_as_gaps_are_not_counted_twice() -> None:
    records = [record({"AAA": 6}, at_s=7, record_type=TYPE_CLOSE, dropped=2)]
    report = audit({"AAA": [1, 2, 5, 6]}, records)

    assert (report.missing, report.dropped_unlocated) == (2, 0)


def test_a_window_uses_only_checkpoints_written_inside_it() -> None:
    since, until = EPOCH - 100 * SECOND_NS, EPOCH + 20 * SECOND_NS
    records = [record({"AAA": 15}, at_s=16), record({"AAA": 30}, at_s=31)]
    report = audit({"AAA": list(range(1, 13))}, records, since, until)

    assert sequence(report, "AAA").missing_ranges == ((13, 15),)
    (epoch,) = report.checkpoint_summary()["open_epochs"]
    assert epoch["last_checkpoint_ts"] == EPOCH + 16 * SECOND_NS
    assert any("--since/--until" in line for line in report.checkpoint_lines())


def test_an_epoch_that_began_before_the_window_gets_only_tails_of_symbols_seen() -> None:
    since = EPOCH + 50 * SECOND_NS
    # BBB has no tick in the window: whether it was expected there is unknown.
    records = [record({"AAA": 80, "BBB": 70}, at_s=90)]
    verifier = AuditVerifier(since)
    for checkpoint in records:
        verifier.observe_checkpoint(checkpoint)
    for seq in range(60, 78):
        verifier.observe(tick(seq))
    report = verifier.report()

    assert [audit.symbol for audit in report.sequences] == ["AAA"]
    assert sequence(report, "AAA").missing_ranges == ((78, 80),)
    (epoch,) = report.checkpoint_summary()["open_epochs"]
    assert (epoch["missing"], epoch["complete_through_checkpoint"]) == (3, False)


def test_an_epoch_that_began_inside_the_window_is_checked_whole() -> None:
    since = EPOCH - SECOND_NS
    report = audit({"AAA": [1, 2, 3]}, [record({"AAA": 3, "BBB": 2}, at_s=4)], since)

    assert (sequence(report, "BBB").missing_ranges, report.missing_tail) == (((1, 2),), 2)


def test_checkpoints_before_the_window_do_not_count_its_drops() -> None:
    since = EPOCH + 50 * SECOND_NS
    records = [record({"AAA": 40}, at_s=41, dropped=7), record({"AAA": 60}, at_s=61, dropped=7)]
    verifier = AuditVerifier(since)
    for checkpoint in records:
        verifier.observe_checkpoint(checkpoint)
    for seq in range(50, 61):
        verifier.observe(tick(seq))
    (epoch,) = verifier.report().checkpoint_summary()["open_epochs"]

    assert (epoch["dropped"], epoch["complete_through_checkpoint"]) == (0, True)


def test_a_malformed_checkpoint_is_counted_and_fails_but_the_rest_is_used() -> None:
    verifier = AuditVerifier()
    verifier.observe_malformed_checkpoint()
    verifier.observe_checkpoint(record({"AAA": 4}, at_s=5))
    for seq in range(1, 3):
        verifier.observe(tick(seq))
    report = verifier.report()
    summary = report.checkpoint_summary()

    assert (summary["checkpoints"], summary["malformed_checkpoints"]) == (2, 1)
    assert report.missing_tail == 2
    assert not report.ok
    assert any("1 of them malformed" in line for line in report.checkpoint_lines())


def test_without_a_checkpoint_topic_the_audit_is_as_before_and_says_so() -> None:
    verifier = AuditVerifier()
    for seq in range(1, 6):
        verifier.observe(tick(seq))
    report = verifier.report()

    assert report.ok
    assert report.checkpoint_summary() == {
        "checkpoints": None,
        "malformed_checkpoints": 0,
        "missing_tail": 0,
        "dropped_unlocated": 0,
        "open_epochs": [],
        "closed_epochs": [],
        "epochs_without_checkpoints": [],
    }
    (line,) = report.checkpoint_lines()
    assert "no checkpoint topic" in line


def test_an_epoch_without_checkpoints_is_listed() -> None:
    other = EPOCH + 3_600 * SECOND_NS
    verifier = AuditVerifier()
    verifier.observe_checkpoint(record({"AAA": 2}, at_s=3))
    for epoch in (EPOCH, other):
        verifier.observe(tick(1, epoch=epoch))
        verifier.observe(tick(2, epoch=epoch))
    report = verifier.report()

    assert report.ok
    assert report.checkpoint_summary()["epochs_without_checkpoints"] == [other]


@given(
    seen=st.sets(st.integers(1, 60), min_size=1),
    claims=st.lists(st.integers(1, 80), min_size=1, max_size=5),
)
def test_missing_agrees_with_a_set_based_count(seen: set[int], claims: list[int]) -> None:
    records = [record({"AAA": claim}, at_s=100 + index) for index, claim in enumerate(claims)]
    report = audit({"AAA": sorted(seen)}, records)

    expected_last = max(max(seen), max(claims))
    assert report.missing == len(set(range(1, expected_last + 1)) - seen)
    assert report.missing_tail == max(max(claims) - max(seen), 0)
    complete = not set(range(1, max(claims) + 1)) - seen
    assert report.checkpoint_summary()["open_epochs"][0]["complete_through_checkpoint"] is complete


def test_checkpoint_records_round_trip_and_name_what_is_wrong() -> None:
    checkpoint = record({"AAA": 3}, at_s=4, record_type=TYPE_CLOSE, ticks=3, dropped=1)
    assert decode_checkpoint(checkpoint.encode()) == checkpoint
    assert checkpoint_topic_for("ticks") == "ticks.checkpoints"
    assert checkpoint_topic_for("ticks", "audit.cp") == "audit.cp"
    fields = orjson.loads(checkpoint.encode())
    for broken, reason in [
        ({**fields, "type": "other"}, "type"),
        ({**fields, "epoch": -1}, "epoch"),
        ({**fields, "last_seq": {"AAA": 0}}, "last_seq"),
        ({**fields, "instance": ""}, "instance"),
    ]:
        with pytest.raises(ValueError, match=reason):
            decode_checkpoint(orjson.dumps(broken))
    with pytest.raises(ValueError, match="not JSON"):
        decode_checkpoint(b"\xff")


def _options(*argv: str, config_text: str | None = None, tmp_path: Path | None = None) -> Any:
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_replay_arguments(parser)
    if config_text is not None and tmp_path is not None:
        config = tmp_path / "config.yaml"
        config.write_text(config_text)
        argv = ("--config", str(config), *argv)
    return options_from_args(parser.parse_args(argv))


def test_the_checkpoint_topic_is_derived_configured_or_given(tmp_path: Path) -> None:
    configured = "kafka:\n  topic: audit\n  checkpoint_topic: audit-proofs\n"
    assert _options().checkpoint_topic_name == "ticks.checkpoints"
    assert _options("--topic", "t2").checkpoint_topic_name == "t2.checkpoints"
    assert _options("--checkpoint-topic", "cp").checkpoint_topic_name == "cp"
    from_config = _options(config_text=configured, tmp_path=tmp_path)
    assert from_config.checkpoint_topic_name == "audit-proofs"
    # --topic names another mirror than the config's: its own companion topic.
    other = _options("--topic", "t3", config_text=configured, tmp_path=tmp_path)
    assert other.checkpoint_topic_name == "t3.checkpoints"


def test_replay_reads_committed_transactions_only() -> None:
    with pytest.raises(ReplayError, match=r"isolation\.level is set by replay"):
        make_consumer("127.0.0.1:1", settings={"isolation.level": "read_uncommitted"})
