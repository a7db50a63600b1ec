"""The client side of the sync handshake without sockets: `SyncHandshake`, `SyncSnapshot`, and the
`feedsvc subscribe --sync` arguments."""

from __future__ import annotations

import argparse
import re
from typing import Any, Final

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from feedsvc.cli import subscribe as console
from feedsvc.client import (
    SYNC_BAD_REPLY,
    SYNC_NO_MARKER,
    SYNC_NO_REPLY,
    Duplicate,
    Restart,
    SequenceTracker,
    SyncError,
    SyncHandshake,
    SyncSnapshot,
    new_sync_id,
)
from feedsvc.protocol.ticks import Tick, encode_frame

ENDPOINT: Final = "ipc:///tmp/feedsvc/sync"
EPOCH: Final = 1_795_427_063_832_853_867
# docs/sync-protocol.md: client and marker ids are 1 to 64 characters of [0-9A-Za-z_-].
ID_PATTERN: Final = re.compile(r"[0-9A-Za-z_-]{1,64}")


def make_tick(symbol: str, seq: int, epoch: int = EPOCH) -> Tick:
    return {"sym": symbol, "bid": 1.0, "ask": 1.01, "seq": seq, "epoch": epoch, "ts": 1}


def snapshot_reply(
    handshake: SyncHandshake, entries: dict[str, dict[str, Any]], epoch: int = EPOCH
) -> bytes:
    """A reply as the doc shows it (the marker as its topic)."""
    marker = f"_sync.{handshake.marker}"
    return orjson.dumps({"ok": True, "epoch": epoch, "marker": marker, "snapshot": entries})


def marker_frame(handshake: SyncHandshake, epoch: int = EPOCH) -> bytes:
    return encode_frame(f"_sync.{handshake.marker}", {"epoch": epoch, "marker": handshake.marker})


def new_handshake(
    symbols: list[str] | None = None, subscriptions: tuple[bytes, ...] = (b"",), attempts: int = 3
) -> SyncHandshake:
    return SyncHandshake(
        ENDPOINT, symbols, subscriptions=subscriptions, attempts=attempts, timeout_s=0.5
    )


def synced_handshake(entries: dict[str, dict[str, Any]]) -> SyncHandshake:
    handshake = new_handshake(list(entries))
    handshake.start_attempt()
    handshake.accept_reply(snapshot_reply(handshake, entries))
    assert handshake.see_frame(marker_frame(handshake))
    return handshake


def test_ids_match_the_protocol_pattern_and_markers_are_fresh_per_attempt() -> None:
    handshake = new_handshake(attempts=50)
    assert ID_PATTERN.fullmatch(handshake.client)
    markers = []
    for _ in range(50):
        request = orjson.loads(handshake.start_attempt())
        assert request["client"] == handshake.client  # stable for the subscriber's life
        assert ID_PATTERN.fullmatch(request["marker"])
        markers.append(request["marker"])
        if len(markers) < 50:
            handshake.attempt_failed()
    assert len(set(markers)) == 50
    assert len({new_sync_id() for _ in range(1000)}) == 1000


def test_snapshot_request_has_the_documented_shape() -> None:
    handshake = new_handshake(["AAPL", "MSFT"])
    request = handshake.start_attempt()
    assert orjson.loads(request) == {
        "op": "snapshot",
        "client": handshake.client,
        "marker": handshake.marker,
        "symbols": ["AAPL", "MSFT"],
    }
    assert handshake.marker_subscription == f"_sync.{handshake.marker} ".encode()
    everything = new_handshake(None)
    assert orjson.loads(everything.start_attempt())["symbols"] is None


def test_marker_is_recognised_only_for_the_current_attempt() -> None:
    handshake = new_handshake(["AAPL"])
    handshake.start_attempt()
    stale = marker_frame(handshake)
    handshake.attempt_failed()
    handshake.start_attempt()
    assert not handshake.see_frame(stale)
    assert not handshake.see_frame(encode_frame("AAPL", make_tick("AAPL", 1)))
    # A longer marker topic that merely begins with this one is someone else's.
    assert not handshake.see_frame(
        encode_frame(f"_sync.{handshake.marker}x", {"epoch": EPOCH, "marker": "x"})
    )
    assert handshake.see_frame(marker_frame(handshake))


@pytest.mark.parametrize("marker_first", [False, True])
def test_reply_then_marker_in_either_order_gives_the_snapshot(marker_first: bool) -> None:
    entries = {
        "AAPL": {"seq": 41, "tick": make_tick("AAPL", 41)},
        "QUIET": {"seq": 0, "tick": None},
    }
    handshake = new_handshake(["AAPL", "QUIET"])
    handshake.start_attempt()
    if marker_first:
        # REP and PUB are separate connections: the marker may overtake the reply.
        assert handshake.see_frame(marker_frame(handshake))
    assert handshake.snapshot is None
    handshake.accept_reply(snapshot_reply(handshake, entries))
    if not marker_first:
        assert handshake.state == SyncHandshake.AWAITING_MARKER and handshake.snapshot is None
        assert handshake.see_frame(marker_frame(handshake))
    assert handshake.synced
    # Each entry says its epoch (here the reply's: one publisher, unnamed).
    with_epochs = {symbol: {**entry, "epoch": EPOCH} for symbol, entry in entries.items()}
    assert handshake.snapshot == SyncSnapshot(EPOCH, with_epochs, {"": EPOCH})
    assert orjson.loads(handshake.ready_request()) == {
        "op": "ready",
        "client": handshake.client,
        "marker": handshake.marker,
    }


def test_a_reply_with_the_bare_marker_is_taken_too() -> None:
    handshake = new_handshake(["AAPL"])
    handshake.start_attempt()
    reply = {"ok": True, "epoch": EPOCH, "marker": handshake.marker}
    handshake.accept_reply(orjson.dumps({**reply, "snapshot": {"AAPL": {"seq": 0, "tick": None}}}))
    assert handshake.state == SyncHandshake.AWAITING_MARKER


@pytest.mark.parametrize(
    ("code", "detail"),
    [
        ("bad_request", "marker must be 1 to 64 characters of [0-9A-Za-z_-]"),
        ("bad_symbol", "'a b': must be 1 to 64 printable ASCII characters without spaces"),
        ("too_many_symbols", "at most 10000 symbols per request, got 20000"),
    ],
)
def test_error_reply_fails_with_the_service_code_and_detail(code: str, detail: str) -> None:
    handshake = new_handshake(["AAPL"])
    handshake.start_attempt()
    with pytest.raises(SyncError) as failure:
        handshake.accept_reply(orjson.dumps({"ok": False, "error": code, "detail": detail}))
    error = failure.value
    assert (error.code, error.detail, error.endpoint, error.attempts) == (code, detail, ENDPOINT, 1)
    assert code in str(error) and detail in str(error) and ENDPOINT in str(error)
    # Failed for good: no further attempt.
    assert handshake.state == SyncHandshake.FAILED
    with pytest.raises(RuntimeError):
        handshake.start_attempt()


GOOD_ENTRY: Final = {"seq": 3, "tick": make_tick("AAPL", 3)}


@pytest.mark.parametrize(
    ("reply", "why"),
    [
        (b"not json", "not JSON"),
        (b"", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"epoch": 1, "snapshot": {}}', '"ok"'),
        (orjson.dumps({"ok": True, "epoch": "1", "snapshot": {"AAPL": GOOD_ENTRY}}), "epoch"),
        (orjson.dumps({"ok": True, "epoch": True, "snapshot": {"AAPL": GOOD_ENTRY}}), "epoch"),
        (orjson.dumps({"ok": True, "epoch": EPOCH, "snapshot": []}), "snapshot must be"),
        (orjson.dumps({"ok": True, "epoch": EPOCH, "snapshot": {}}), "['AAPL']"),
        (orjson.dumps({"ok": True, "epoch": EPOCH, "snapshot": {"AAPL": 3}}), "not an object"),
        (
            orjson.dumps({"ok": True, "epoch": EPOCH, "snapshot": {"AAPL": {"seq": -1}}}),
            "integer >= 0",
        ),
        (
            orjson.dumps({"ok": True, "epoch": EPOCH, "snapshot": {"AAPL": {"seq": 2.0}}}),
            "integer >= 0",
        ),
        (
            orjson.dumps(
                {"ok": True, "epoch": EPOCH, "snapshot": {"AAPL": {**GOOD_ENTRY, "seq": 4}}}
            ),
            "not its seq 4",
        ),
        (
            orjson.dumps(
                {
                    "ok": True,
                    "epoch": EPOCH,
                    "snapshot": {"AAPL": {"seq": 3, "tick": make_tick("MSFT", 3)}},
                }
            ),
            "not its seq 3",
        ),
        (
            orjson.dumps(
                {
                    "ok": True,
                    "epoch": EPOCH,
                    "snapshot": {"AAPL": {"seq": 3, "tick": make_tick("AAPL", 3, EPOCH + 1)}},
                }
            ),
            "in epoch",
        ),
        (
            orjson.dumps(
                {"ok": True, "epoch": EPOCH, "marker": "_sync.other", "snapshot": {"AAPL": {}}}
            ),
            "answers marker",
        ),
    ],
)
def test_replies_that_are_not_a_valid_snapshot_fail_as_bad_replies(reply: bytes, why: str) -> None:
    handshake = new_handshake(["AAPL"])
    handshake.start_attempt()
    with pytest.raises(SyncError) as failure:
        handshake.accept_reply(reply)
    assert failure.value.code == SYNC_BAD_REPLY
    assert why in failure.value.detail and ENDPOINT in str(failure.value)
    assert handshake.state == SyncHandshake.FAILED


@given(
    st.one_of(
        st.binary(max_size=200),
        st.recursive(
            st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=5),
            lambda children: (
                st.lists(children, max_size=4)
                | st.dictionaries(
                    st.sampled_from(["ok", "epoch", "snapshot", "seq", "tick", "AAPL", "error"]),
                    children,
                    max_size=5,
                )
            ),
            max_leaves=20,
        ).map(orjson.dumps),
    )
)
def test_any_reply_gives_a_snapshot_or_a_sync_error(reply: bytes) -> None:
    handshake = new_handshake(None)
    handshake.start_attempt()
    try:
        handshake.accept_reply(reply)
    except SyncError as error:
        assert error.code and handshake.state == SyncHandshake.FAILED
    else:
        assert handshake.state == SyncHandshake.AWAITING_MARKER


def test_failed_attempts_back_off_then_fail_naming_endpoint_and_attempts() -> None:
    handshake = new_handshake(["AAPL"], attempts=6)
    backoffs = []
    for _ in range(5):
        handshake.start_attempt()
        backoffs.append(handshake.attempt_failed())
    assert backoffs == [0.1, 0.2, 0.4, 0.8, 1.0]
    handshake.start_attempt()
    handshake.accept_reply(snapshot_reply(handshake, {"AAPL": {"seq": 0, "tick": None}}))
    with pytest.raises(SyncError) as failure:
        handshake.attempt_failed()  # the reply came, the marker did not
    error = failure.value
    assert (error.code, error.attempts) == (SYNC_NO_MARKER, 6)
    message = str(error)
    assert ENDPOINT in message and "6 attempts" in message
    assert "5 without a reply and 1 without the marker" in message


def test_last_attempt_without_a_reply_fails_as_no_reply() -> None:
    handshake = new_handshake(attempts=1)
    handshake.start_attempt()
    with pytest.raises(SyncError) as failure:
        handshake.attempt_failed()
    assert (failure.value.code, failure.value.attempts) == (SYNC_NO_REPLY, 1)


def test_steps_out_of_order_are_internal_errors() -> None:
    handshake = new_handshake(["AAPL"])
    with pytest.raises(RuntimeError):
        handshake.accept_reply(b"{}")
    with pytest.raises(RuntimeError):
        handshake.ready_request()
    handshake.start_attempt()
    with pytest.raises(RuntimeError):
        handshake.start_attempt()


def test_snapshot_of_every_symbol_keeps_only_those_the_subscriptions_let_through() -> None:
    handshake = new_handshake(None, subscriptions=(b"SYN0", b"IBM "))
    handshake.start_attempt()
    entries = {
        symbol: {"seq": 1, "tick": make_tick(symbol, 1)}
        for symbol in ("SYN0001", "SYN1000", "IBM", "IBMX", "SYN0002")
    }
    handshake.accept_reply(snapshot_reply(handshake, entries))
    handshake.see_frame(marker_frame(handshake))
    assert handshake.snapshot is not None
    assert list(handshake.snapshot.entries) == ["SYN0001", "IBM", "SYN0002"]


def test_applying_the_snapshot_sets_baselines_and_returns_its_ticks_in_order() -> None:
    entries = {
        "MSFT": {"seq": 7, "tick": make_tick("MSFT", 7)},
        "QUIET": {"seq": 0, "tick": None},
        "AAPL": {"seq": 41, "tick": make_tick("AAPL", 41)},
    }
    snapshot = synced_handshake(entries).snapshot
    assert snapshot is not None
    tracker = SequenceTracker()
    ticks, restarts = snapshot.apply(tracker)

    assert ticks == [entries["MSFT"]["tick"], entries["AAPL"]["tick"]] and restarts == []
    assert (tracker.epoch, tracker.last_seq("AAPL"), tracker.last_seq("QUIET")) == (EPOCH, 41, 0)
    # From the baseline on: the next seq follows, the snapshot's own seq and older are dropped.
    assert tracker.observe(make_tick("AAPL", 42)) is None
    assert tracker.observe(make_tick("QUIET", 1)) is None
    assert tracker.observe(make_tick("MSFT", 7)) == Duplicate("MSFT", EPOCH, 7, 7)
    assert tracker.observe(make_tick("MSFT", 5)) == Duplicate("MSFT", EPOCH, 7, 5)


def test_applying_a_snapshot_of_a_newer_epoch_is_a_restart() -> None:
    tracker = SequenceTracker()
    tracker.observe(make_tick("AAPL", 900, epoch=EPOCH - 1))
    entries = {"AAPL": {"seq": 2, "tick": None, "epoch": EPOCH}}
    _ticks, restarts = SyncSnapshot(EPOCH, entries, {"": EPOCH}).apply(tracker)
    assert restarts == [Restart(EPOCH - 1, EPOCH)]
    assert tracker.last_seq("AAPL") == 2


def test_handshake_parameters_are_checked() -> None:
    with pytest.raises(ValueError, match="attempts"):
        SyncHandshake(ENDPOINT, None, attempts=0)
    with pytest.raises(ValueError, match="timeout"):
        SyncHandshake(ENDPOINT, None, timeout_s=0)


def subscribe_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="feedsvc subscribe")
    console.add_subscribe_arguments(parser)
    return parser


def test_subscribe_sync_arguments_reach_run_subscribe(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(console, "run_subscribe", lambda **kwargs: calls.append(kwargs) or 0)
    args = subscribe_parser().parse_args(
        ["AAPL", "--sync", "tcp://127.0.0.1:5558", "--sync-timeout", "0.5", "--json"]
    )
    assert console.run_from_args(args) == 0
    assert calls[0]["sync_endpoint"] == "tcp://127.0.0.1:5558"
    assert calls[0]["sync_timeout_s"] == 0.5
    assert calls[0]["symbols"] == ["AAPL"] and calls[0]["as_json"] is True


def test_subscribe_without_sync_runs_no_handshake() -> None:
    args = subscribe_parser().parse_args([])
    assert args.sync_endpoint is None and args.sync_timeout == 2.0


@pytest.mark.parametrize("timeout", ["0", "-1", "soon"])
def test_subscribe_rejects_a_sync_timeout_that_is_not_positive(
    timeout: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        subscribe_parser().parse_args(["--sync", "ipc:///tmp/s", "--sync-timeout", timeout])
    assert exit_info.value.code == 2
    assert "--sync-timeout" in capsys.readouterr().err


def test_a_busy_service_is_retried_after_a_backoff_and_fails_only_after_the_last_attempt() -> None:
    handshake = new_handshake(["AAPL"], attempts=3)
    busy = orjson.dumps({"ok": False, "error": "busy", "detail": "snapshots in flight"})
    for expected_backoff in (0.1, 0.2):
        handshake.start_attempt()
        handshake.accept_reply(busy)
        assert handshake.refused_for_now
        assert handshake.attempt_failed() == expected_backoff
    handshake.start_attempt()
    with pytest.raises(SyncError) as failure:
        handshake.accept_reply(busy)  # the last attempt: a refusal like any other
    assert failure.value.code == "busy"


def test_a_relays_snapshot_of_two_shards_waits_for_both_markers() -> None:
    """Through a relay in front of two shards: one entry per symbol with its shard's epoch, and
    a marker from each shard before the snapshot is trusted."""
    other = EPOCH + 77
    handshake = new_handshake(["AAPL", "BMW"])
    handshake.start_attempt()
    reply = {
        "ok": True,
        "epoch": EPOCH,
        "epochs": {"us": EPOCH, "eu": other},
        "marker": f"_sync.{handshake.marker}",
        "snapshot": {
            "AAPL": {"seq": 41, "tick": make_tick("AAPL", 41), "epoch": EPOCH},
            "BMW": {"seq": 9, "tick": make_tick("BMW", 9, other), "epoch": other},
        },
    }
    handshake.accept_reply(orjson.dumps(reply))
    assert handshake.see_frame(marker_frame(handshake))
    assert handshake.state == SyncHandshake.AWAITING_MARKER  # the other shard's is still due
    assert handshake.see_frame(marker_frame(handshake, other))
    assert handshake.synced and handshake.snapshot is not None
    tracker = SequenceTracker()
    _ticks, restarts = handshake.snapshot.apply(tracker)
    assert restarts == [] and tracker.epoch_by_shard == {"us": EPOCH, "eu": other}
    assert tracker.observe(make_tick("BMW", 10, other)) is None
    assert tracker.observe(make_tick("AAPL", 42)) is None


@pytest.mark.parametrize(
    "epochs",
    [[EPOCH], {}, {"us": "1"}, {"us": EPOCH + 1}, {"us": EPOCH, "eu": True}],
    ids=["list", "empty", "not-int", "without-the-reply-epoch", "bool"],
)
def test_a_relays_epochs_that_do_not_hold_together_are_a_bad_reply(epochs: object) -> None:
    handshake = new_handshake(["AAPL"])
    handshake.start_attempt()
    reply = {
        "ok": True,
        "epoch": EPOCH,
        "epochs": epochs,
        "marker": f"_sync.{handshake.marker}",
        "snapshot": {"AAPL": {"seq": 0, "tick": None}},
    }
    with pytest.raises(SyncError, match="epochs"):
        handshake.accept_reply(orjson.dumps(reply))


def test_an_entry_of_an_epoch_the_reply_does_not_name_is_a_bad_reply() -> None:
    handshake = new_handshake(["AAPL"])
    handshake.start_attempt()
    entries = {"AAPL": {"seq": 0, "tick": None, "epoch": EPOCH + 3}}
    with pytest.raises(SyncError, match="epoch of 'AAPL'"):
        handshake.accept_reply(snapshot_reply(handshake, entries))
