"""Sequence tracking and conflation of the client library, without sockets."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from feedsvc.client import (
    Conflator,
    Duplicate,
    Gap,
    Restart,
    SequenceTracker,
    SubscriberStats,
)
from feedsvc.protocol.ticks import Tick

EPOCH = 1_700_000_000_000_000_000


def make_tick(symbol: str, seq: int, epoch: int = EPOCH, **extra: Any) -> Tick:
    return {"sym": symbol, "seq": seq, "epoch": epoch, "bid": 1.0, "ask": 1.01, **extra}


def observe_all(tracker: SequenceTracker, ticks: list[Tick]) -> list[object]:
    return [tracker.observe(tick) for tick in ticks]


def test_contiguous_sequence_reports_nothing() -> None:
    tracker = SequenceTracker()
    events = observe_all(tracker, [make_tick("AAPL", seq) for seq in range(1, 101)])
    assert events == [None] * 100
    assert tracker.last_seq("AAPL") == 100


def test_skipped_seqs_are_one_gap_with_the_exact_missed_count() -> None:
    tracker = SequenceTracker()
    events = observe_all(tracker, [make_tick("AAPL", seq) for seq in (1, 2, 6, 7, 9)])
    assert events == [
        None,
        None,
        Gap("AAPL", EPOCH, expected_seq=3, received_seq=6, missed=3),
        None,
        Gap("AAPL", EPOCH, expected_seq=8, received_seq=9, missed=1),
    ]


def test_first_tick_of_each_symbol_sets_its_baseline() -> None:
    tracker = SequenceTracker()
    ticks = [make_tick("AAPL", 500), make_tick("MSFT", 42), make_tick("AAPL", 501)]
    assert observe_all(tracker, ticks) == [None, None, None]
    assert tracker.epoch == EPOCH
    assert tracker.observe(make_tick("MSFT", 44)) == Gap("MSFT", EPOCH, 43, 44, 1)


def test_symbols_are_tracked_independently() -> None:
    tracker = SequenceTracker()
    ticks = [make_tick("AAPL", 1), make_tick("MSFT", 1), make_tick("MSFT", 2), make_tick("AAPL", 2)]
    assert observe_all(tracker, ticks) == [None] * 4


def test_epoch_change_is_a_restart_and_resets_every_baseline() -> None:
    tracker = SequenceTracker()
    observe_all(tracker, [make_tick("AAPL", seq) for seq in (1, 2, 3)] + [make_tick("MSFT", 9)])
    new_epoch = EPOCH + 1
    assert tracker.observe(make_tick("AAPL", 1, new_epoch)) == Restart(EPOCH, new_epoch)
    assert tracker.epoch == new_epoch
    # MSFT's old seq 9 is forgotten; a new epoch starts every seq at 1, so a first tick of seq
    # 5 means ticks 1 to 4 of the new epoch were missed.
    assert tracker.last_seq("MSFT") is None
    assert tracker.observe(make_tick("MSFT", 5, new_epoch)) == Gap("MSFT", new_epoch, 1, 5, 4)
    assert tracker.observe(make_tick("AAPL", 2, new_epoch)) is None
    assert tracker.observe(make_tick("IBM", 1, new_epoch)) is None  # a symbol new in this epoch


def test_the_tick_that_shows_a_restart_carries_the_ticks_missed_before_it() -> None:
    tracker = SequenceTracker()
    tracker.observe(make_tick("AAPL", 40))
    restart = tracker.observe(make_tick("AAPL", 12, EPOCH + 1))
    assert restart == Restart(EPOCH, EPOCH + 1, Gap("AAPL", EPOCH + 1, 1, 12, 11))
    assert tracker.observe(make_tick("AAPL", 13, EPOCH + 1)) is None


def test_only_the_first_epoch_joined_mid_stream_takes_its_first_seqs_as_baselines() -> None:
    tracker = SequenceTracker()
    assert tracker.observe(make_tick("AAPL", 500)) is None  # joined a running feed
    assert tracker.observe(make_tick("MSFT", 77)) is None
    assert tracker.observe_epoch(EPOCH + 1) == Restart(EPOCH, EPOCH + 1)  # a heartbeat first
    assert tracker.observe(make_tick("MSFT", 3, EPOCH + 1)) == Gap("MSFT", EPOCH + 1, 1, 3, 2)


def test_an_epoch_going_backwards_is_followed_too() -> None:
    tracker = SequenceTracker()
    tracker.observe(make_tick("AAPL", 10))
    assert tracker.observe(make_tick("AAPL", 1, EPOCH - 5)) == Restart(EPOCH, EPOCH - 5)
    assert tracker.observe(make_tick("AAPL", 2, EPOCH - 5)) is None


def test_heartbeat_epoch_reports_a_restart_before_any_tick_of_it() -> None:
    tracker = SequenceTracker()
    assert tracker.observe_epoch(EPOCH) is None
    tracker.observe(make_tick("AAPL", 7))
    assert tracker.observe_epoch(EPOCH) is None
    assert tracker.observe_epoch(EPOCH + 1) == Restart(EPOCH, EPOCH + 1)
    assert tracker.observe(make_tick("AAPL", 1, EPOCH + 1)) is None


def test_duplicates_and_out_of_order_ticks_are_reported_and_do_not_move_the_sequence() -> None:
    tracker = SequenceTracker()
    observe_all(tracker, [make_tick("AAPL", seq) for seq in (1, 2, 3)])
    assert tracker.observe(make_tick("AAPL", 3)) == Duplicate("AAPL", EPOCH, 3, 3)
    assert tracker.observe(make_tick("AAPL", 1)) == Duplicate("AAPL", EPOCH, 3, 1)
    assert tracker.last_seq("AAPL") == 3
    assert tracker.observe(make_tick("AAPL", 4)) is None


def test_set_baseline_gives_the_next_expected_seq() -> None:
    tracker = SequenceTracker()
    assert tracker.set_baseline("AAPL", EPOCH, 100) is None
    assert tracker.observe(make_tick("AAPL", 101)) is None
    assert tracker.observe(make_tick("AAPL", 104)) == Gap("AAPL", EPOCH, 102, 104, 2)
    # A snapshot behind the stream moves the baseline back: what follows is then a duplicate.
    tracker.set_baseline("AAPL", EPOCH, 104)
    assert tracker.observe(make_tick("AAPL", 104)) == Duplicate("AAPL", EPOCH, 104, 104)


def test_set_baseline_in_a_new_epoch_is_a_restart() -> None:
    tracker = SequenceTracker()
    tracker.observe(make_tick("AAPL", 5))
    tracker.observe(make_tick("MSFT", 5))
    assert tracker.set_baseline("AAPL", EPOCH + 1, 20) == Restart(EPOCH, EPOCH + 1)
    assert tracker.last_seq("MSFT") is None
    assert tracker.observe(make_tick("AAPL", 22, EPOCH + 1)) == Gap("AAPL", EPOCH + 1, 21, 22, 1)


@pytest.mark.parametrize(
    "bad_tick",
    [
        {"sym": "AAPL", "epoch": EPOCH},
        {"sym": "AAPL", "seq": 1},
        {"seq": 1, "epoch": EPOCH},
        {"sym": "AAPL", "seq": "1", "epoch": EPOCH},
        {"sym": "AAPL", "seq": True, "epoch": EPOCH},
        {"sym": "AAPL", "seq": 1, "epoch": "e"},
        {"sym": 5, "seq": 1, "epoch": EPOCH},
    ],
)
def test_malformed_ticks_raise_and_leave_the_state_unchanged(bad_tick: Tick) -> None:
    tracker = SequenceTracker()
    tracker.observe(make_tick("AAPL", 1))
    with pytest.raises((KeyError, TypeError)):
        tracker.observe(bad_tick)
    assert tracker.epoch == EPOCH
    assert tracker.observe(make_tick("AAPL", 2)) is None


@given(st.sets(st.integers(min_value=1, max_value=300), min_size=1))
def test_missed_total_counts_every_seq_skipped_after_the_first(delivered: set[int]) -> None:
    # Ticks 1..N were published; a subscriber saw only `delivered`, in order.
    tracker = SequenceTracker()
    events = observe_all(tracker, [make_tick("AAPL", seq) for seq in sorted(delivered)])
    gaps = [event for event in events if event is not None]
    assert all(isinstance(gap, Gap) for gap in gaps)
    first, last = min(delivered), max(delivered)
    # Ticks before the first one seen are not missed: the first sets the baseline.
    assert sum(gap.missed for gap in gaps) == last - first + 1 - len(delivered)
    assert len(gaps) == sum(1 for seq in delivered if seq != first and seq - 1 not in delivered)


@given(
    st.lists(
        st.tuples(st.sampled_from(["AAPL", "MSFT", "SYN0001"]), st.integers(1, 40)),
        min_size=1,
        max_size=200,
    )
)
def test_any_arrival_order_delivers_increasing_seqs_and_counts_the_holes(
    arrivals: list[tuple[str, int]],
) -> None:
    tracker = SequenceTracker()
    accepted_by_symbol: dict[str, list[int]] = {}
    missed_by_symbol: dict[str, int] = {}
    for symbol, seq in arrivals:
        event = tracker.observe(make_tick(symbol, seq))
        if isinstance(event, Duplicate):
            continue
        accepted_by_symbol.setdefault(symbol, []).append(seq)
        if isinstance(event, Gap):
            missed_by_symbol[symbol] = missed_by_symbol.get(symbol, 0) + event.missed
    for symbol, accepted in accepted_by_symbol.items():
        # Exactly the running maxima are accepted: strictly increasing, nothing newer dropped.
        seen = [seq for arrived_symbol, seq in arrivals if arrived_symbol == symbol]
        assert accepted == [seq for index, seq in enumerate(seen) if seq > max(seen[:index] or [0])]
        expected_missed = accepted[-1] - accepted[0] + 1 - len(accepted)
        assert missed_by_symbol.get(symbol, 0) == expected_missed


def test_conflator_keeps_the_newest_tick_per_symbol_in_order_of_first_arrival() -> None:
    conflator = Conflator()
    for symbol, seq in [("AAPL", 1), ("MSFT", 1), ("AAPL", 2), ("IBM", 1), ("MSFT", 2)]:
        conflator.offer(make_tick(symbol, seq))
    assert len(conflator) == 3
    assert conflator.conflated == 2
    taken = [conflator.take_entry() for _ in range(3)]
    assert [(tick["sym"], tick["seq"]) for tick, _ in taken] == [
        ("AAPL", 2),
        ("MSFT", 2),
        ("IBM", 1),
    ]
    assert conflator.take_entry() is None


def test_conflator_holds_raw_frames_and_counts_the_unchecked_ones_replaced() -> None:
    conflator = Conflator()
    for seq in (1, 2, 3):
        conflator.offer_frame(b"AAPL", b"AAPL " + orjson.dumps(make_tick("AAPL", seq)))
    conflator.offer_frame(b"MSFT", b"MSFT frame")
    assert (len(conflator), conflator.conflated) == (2, 2)
    frame, replaced = conflator.take_entry()
    assert orjson.loads(frame.split(b" ", 1)[1])["seq"] == 3
    assert replaced == 2
    assert conflator.take_entry() == (b"MSFT frame", 0)
    assert conflator.take_entry() is None


def test_conflator_does_not_count_a_checked_tick_as_an_unchecked_replacement() -> None:
    conflator = Conflator()
    conflator.offer(make_tick("AAPL", 5))
    conflator.offer_frame(b"AAPL", b"AAPL newer")
    assert conflator.take_entry() == (b"AAPL newer", 0)
    assert conflator.conflated == 1


def test_skipped_ticks_move_the_expected_seq_on_and_later_losses_still_count() -> None:
    tracker = SequenceTracker()
    tracker.observe(make_tick("AAPL", 1))
    tracker.skip("AAPL", 5)
    assert tracker.observe(make_tick("AAPL", 7)) is None
    tracker.skip("AAPL", 2)
    gap = tracker.observe(make_tick("AAPL", 12))
    assert isinstance(gap, Gap) and (gap.expected_seq, gap.missed) == (10, 2)
    tracker.skip("NEW", 3)  # no baseline yet: nothing to move
    assert tracker.observe(make_tick("NEW", 9)) is None


def test_conflator_queues_a_taken_symbol_behind_those_still_waiting() -> None:
    conflator = Conflator()
    conflator.offer(make_tick("AAPL", 1))
    conflator.offer(make_tick("MSFT", 1))
    assert conflator.take_entry()[0]["sym"] == "AAPL"
    conflator.offer(make_tick("AAPL", 2))
    assert [conflator.take_entry()[0]["sym"], conflator.take_entry()[0]["sym"]] == ["MSFT", "AAPL"]
    assert conflator.conflated == 0


def test_stats_summary_is_json_and_a_copy() -> None:
    stats = SubscriberStats(received=3, gaps=1, missed=2, missed_by_symbol={"AAPL": 2})
    summary = stats.summary()
    assert orjson.loads(orjson.dumps(summary)) == summary
    assert summary["received"] == 3
    assert summary["missed_by_symbol"] == {"AAPL": 2}
    assert {"delivered", "conflated", "restarts", "heartbeats", "heartbeat_misses"} <= set(summary)
    assert {"duplicates", "malformed"} <= set(summary)
    summary["missed_by_symbol"]["MSFT"] = 1
    assert stats.missed_by_symbol == {"AAPL": 2}


SHARD_A, SHARD_B = EPOCH, EPOCH + 500


def test_two_shards_are_followed_each_in_its_own_epoch_without_a_restart() -> None:
    tracker = SequenceTracker()
    # Ticks of both shards arrive before either heartbeat (a client joining behind a relay).
    ticks = [
        make_tick("A1", 40, SHARD_A),
        make_tick("B1", 7, SHARD_B),
        make_tick("A1", 41, SHARD_A),
    ]
    assert observe_all(tracker, ticks) == [None, None, None]
    assert tracker.observe_epoch(SHARD_A, "a") is None
    assert tracker.observe_epoch(SHARD_B, "b") is None
    assert observe_all(tracker, [make_tick("B1", 8, SHARD_B), make_tick("A1", 42, SHARD_A)]) == [
        None,
        None,
    ]
    assert tracker.observe(make_tick("B1", 10, SHARD_B)) == Gap("B1", SHARD_B, 9, 10, 1)
    assert tracker.epoch_by_shard == {"a": SHARD_A, "b": SHARD_B}


def test_one_shards_restart_restarts_its_symbols_only() -> None:
    tracker = SequenceTracker()
    tracker.observe_epoch(SHARD_A, "a")
    tracker.observe_epoch(SHARD_B, "b")
    observe_all(tracker, [make_tick("A1", 5, SHARD_A), make_tick("B1", 5, SHARD_B)])
    new_a = SHARD_A + 1
    assert tracker.observe_epoch(new_a, "a") == Restart(SHARD_A, new_a)
    assert not tracker.follows(SHARD_A) and tracker.follows(new_a) and tracker.follows(SHARD_B)
    assert tracker.last_seq("A1") is None and tracker.last_seq("B1") == 5
    # Shard b goes on where it was: no gap, no restart.
    assert tracker.observe(make_tick("B1", 6, SHARD_B)) is None
    # Shard a's symbols start again at 1; a symbol new in its epoch too.
    assert tracker.observe(make_tick("A1", 3, new_a)) == Gap("A1", new_a, 1, 3, 2)
    assert tracker.observe(make_tick("A2", 2, new_a)) == Gap("A2", new_a, 1, 2, 1)
    # Shard b's heartbeat does not move anything.
    assert tracker.observe_epoch(SHARD_B, "b") is None
    assert tracker.observe(make_tick("B1", 7, SHARD_B)) is None


def test_a_shards_restart_seen_first_in_a_tick_is_reported_once() -> None:
    tracker = SequenceTracker()
    tracker.observe_epoch(SHARD_A, "a")
    tracker.observe_epoch(SHARD_B, "b")
    observe_all(tracker, [make_tick("A1", 5, SHARD_A), make_tick("B1", 5, SHARD_B)])
    new_a = SHARD_A + 1
    assert tracker.observe(make_tick("A1", 1, new_a)) == Restart(SHARD_A, new_a)
    assert tracker.observe_epoch(new_a, "a") is None
    assert tracker.epoch_by_shard == {"a": new_a, "b": SHARD_B}
    # A new shard's epoch, first seen in a tick, is not a restart of anything.
    assert tracker.observe(make_tick("C1", 9, EPOCH + 900)) is None
    assert tracker.observe_epoch(EPOCH + 900, "c") is None
