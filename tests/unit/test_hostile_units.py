"""The pure parts of `feedsvc.bench.hostile`: gap counting, /proc parsing, percentiles, ZMTP framing
and the hostile payloads' shapes. No sockets."""

from __future__ import annotations

import struct

import orjson
import pytest

from feedsvc.bench import hostile
from feedsvc.bench.hostile import AttackTally, longest_gap
from feedsvc.bench.latency import percentiles
from feedsvc.bench.procs import parse_proc_status
from feedsvc.bench.sequence import SequenceGaps, count_gaps

EPOCH = 1_795_427_742_012_345_678


def _frame(symbol: str, seq: int, epoch: int = EPOCH) -> bytes:
    tick = {"sym": symbol, "bid": 1.0, "ask": 1.01, "seq": seq, "epoch": epoch, "ts": 1}
    return symbol.encode() + b" " + orjson.dumps(tick)


def test_count_gaps_counts_jumps_per_symbol_and_what_they_missed() -> None:
    frames = [
        _frame("SYN0000", 1),
        _frame("SYN0001", 7),  # first sight of a symbol is its baseline, not a gap
        _frame("SYN0000", 2),
        _frame("SYN0000", 5),  # missed 3 and 4
        _frame("SYN0001", 8),
        _frame("SYN0001", 18),  # missed 9 to 17
    ]
    summary = count_gaps(frames)
    assert summary["gaps"] == 2
    assert summary["missed"] == 2 + 9
    assert summary["symbols"] == 2


def test_count_gaps_skips_control_frames_and_restarts_on_a_new_epoch() -> None:
    frames = [
        _frame("SYN0000", 41),
        b'_hb {"epoch": 1, "ts": 2, "interval_s": 1.0}',
        b'_sync.m1 {"epoch": 1, "marker": "m1"}',
        _frame("SYN0000", 42),
        # A publisher restart: seq starts again at 1, which is not a gap.
        _frame("SYN0000", 1, epoch=EPOCH + 1),
        _frame("SYN0000", 2, epoch=EPOCH + 1),
    ]
    summary = count_gaps(frames)
    assert summary["gaps"] == 0
    assert summary["missed"] == 0
    assert summary["epochs"] == 2


def test_sequence_gaps_returns_the_missed_count_and_counts_repeats_apart() -> None:
    tracker = SequenceGaps()
    assert tracker.observe("A", EPOCH, 10) == 0
    assert tracker.observe("A", EPOCH, 14) == 3
    assert tracker.observe("A", EPOCH, 14) == 0  # a repeat is not a gap
    assert tracker.observe("A", EPOCH, 12) == 0
    assert (tracker.gaps, tracker.missed, tracker.backwards) == (1, 3, 2)


PROC_STATUS = """Name:\tpython
Umask:\t0022
State:\tS (sleeping)
Pid:\t4242
VmPeak:\t 1203524 kB
VmSize:\t 1138020 kB
VmHWM:\t   98812 kB
VmRSS:\t   44032 kB
RssAnon:\t   30720 kB
Threads:\t4
voluntary_ctxt_switches:\t150
"""


def test_parse_proc_status_reads_vmrss_in_bytes_and_the_thread_count() -> None:
    assert parse_proc_status(PROC_STATUS) == {"rss_bytes": 44_032 * 1024, "threads": 4}


def test_parse_proc_status_of_a_zombie_has_no_rss() -> None:
    # A process that has exited but was not reaped keeps its status file without VmRSS.
    zombie = "Name:\tpython\nState:\tZ (zombie)\nThreads:\t1\n"
    assert parse_proc_status(zombie) == {"threads": 1}


def test_percentiles_are_nearest_rank() -> None:
    values = list(range(1, 101))  # 1 .. 100
    assert percentiles(values, (0.5, 0.99, 1.0)) == {"p50": 50, "p99": 99, "p100": 100}
    assert percentiles([7.0], (0.5, 0.99)) == {"p50": 7.0, "p99": 7.0}
    assert percentiles([3, 1, 2], (0.5,)) == {"p50": 2}  # order of input does not matter


def test_percentiles_of_nothing_are_none() -> None:
    assert percentiles([], (0.5, 0.99)) == {"p50": None, "p99": None}


def test_longest_gap_includes_the_silence_up_to_the_end() -> None:
    arrivals = [10.0, 11.0, 12.0, 12.5]
    assert longest_gap(arrivals, None, None) == pytest.approx(1.0)
    # The feed stopped after 12.5: the window ending at 20 has 7.5 s of silence.
    assert longest_gap(arrivals, 9.5, 20.0) == pytest.approx(7.5)
    assert longest_gap([], 0.0, 4.0) == pytest.approx(4.0)
    assert longest_gap([], None, None) is None


def test_zmtp_frames_use_a_short_or_a_long_size() -> None:
    assert hostile.zmtp_frame(b"abc") == b"\x00\x03abc"
    assert hostile.zmtp_frame(b"", more=True) == b"\x01\x00"
    long_body = b"x" * 300
    frame = hostile.zmtp_frame(long_body)
    assert frame[0] == 0x02 and struct.unpack(">Q", frame[1:9])[0] == 300
    assert frame[9:] == long_body


def test_zmtp_greeting_and_ready_announce_null_and_the_socket_type() -> None:
    greeting = hostile.zmtp_greeting()
    assert len(greeting) == 64
    assert greeting[0] == 0xFF and greeting[9] == 0x7F and greeting[10:12] == b"\x03\x00"
    assert greeting[12:32] == b"NULL" + bytes(16)
    ready = hostile.zmtp_ready("SUB")
    assert ready[0] == 0x04 and ready[1] == len(ready) - 2
    assert ready[2:8] == b"\x05READY" and ready.endswith(b"Socket-Type\x00\x00\x00\x03SUB")
    # A REQ message is the empty delimiter frame, then the body.
    assert hostile.zmtp_request(b"{}") == b"\x01\x00\x00\x02{}"
    assert hostile.zmtp_subscription(b"") == b"\x00\x01\x01"


def _depth(value: object) -> int:
    """Nesting depth of lists and dicts, without recursion (the payloads nest 1,000 deep)."""
    deepest, pending = 0, [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, list | dict):
            children = item.values() if isinstance(item, dict) else item
            deepest = max(deepest, depth + 1)
            pending.extend((child, depth + 1) for child in children)
    return deepest


def test_nested_tick_frame_hides_a_deep_field_behind_many_small_candidates() -> None:
    frame = hostile.nested_tick_frame(numbers=400, depth=300)
    batch = orjson.loads(frame)
    assert batch[:400] == [0] * 400
    tick = batch[400]
    assert {"sym", "bid", "ask", "bid_size", "ask_size"} <= tick.keys()
    assert _depth(tick["extra"]) == 300
    assert 1_300 < len(frame) < 1_600  # the ~1.4 KB frame of the outside check


def test_nested_sync_request_is_a_snapshot_with_one_deep_symbol() -> None:
    request = hostile.nested_sync_request(depth=1_000)
    fields = orjson.loads(request)
    assert fields["op"] == "snapshot" and len(fields["symbols"]) == 1
    assert _depth(fields["symbols"][0]) == 1_000
    assert len(request) < 2_200


@pytest.mark.parametrize("shape", ["nested_zeros", "strings"])
def test_bad_symbol_request_stays_inside_the_size_and_count_limits(shape: str) -> None:
    request = hostile.bad_symbol_request(shape=shape)
    assert hostile.MAX_MESSAGE_BYTES - 20_000 < len(request) <= hostile.MAX_MESSAGE_BYTES
    symbols = orjson.loads(request)["symbols"]
    assert len(symbols) <= hostile.MAX_SYMBOLS_PER_REQUEST
    first = symbols[0]
    assert not isinstance(first, str) or first.startswith("_")


def test_valid_batch_and_big_tick_have_the_required_fields_and_sizes() -> None:
    batch = hostile.valid_batch(984_000, ["FLOOD0", "FLOOD1"])
    assert 980_000 < len(batch) <= 984_000
    ticks = orjson.loads(batch)
    assert {tick["sym"] for tick in ticks} == {"FLOOD0", "FLOOD1"}
    assert all({"bid", "ask", "bid_size", "ask_size"} <= tick.keys() for tick in ticks)
    big = orjson.loads(hostile.big_tick_frame("BIG00001", 1_000_000))
    assert big["sym"] == "BIG00001" and len(big["note"]) == 1_000_000
    assert len(hostile.big_tick_frame("BIG00001")) < hostile.MAX_MESSAGE_BYTES


def test_scaled_parameters_scale_the_volume_only() -> None:
    assert hostile.attack_defaults("big_symbols")["symbols"] == 2_000
    scaled = hostile.scaled_parameters("big_symbols", 0.2)
    assert scaled["symbols"] == 400 and scaled["tick_bytes"] == 1_000_000
    # A nesting depth is what makes the message hostile: it never scales.
    assert hostile.scaled_parameters("nested_tick", 0.01)["depth"] == 300
    # Counts stay at least 1.
    assert hostile.scaled_parameters("snapshot_hoard", 0.001)["peers"] == 1
    assert set(hostile.SCALED_PARAMETERS) == set(hostile.ATTACKS)
    for name, keys in hostile.SCALED_PARAMETERS.items():
        assert set(keys) <= hostile.attack_defaults(name).keys()


def test_attack_tally_flattens_its_extra_figures() -> None:
    tally = AttackTally(sent=3, bytes_sent=30)
    tally.error("no_reply")
    tally.error("no_reply")
    tally.extra["probe_received"] = 0
    assert tally.as_dict() == {
        "sent": 3,
        "bytes_sent": 30,
        "connections": 0,
        "replies": 0,
        "errors": {"no_reply": 2},
        "probe_received": 0,
    }


def test_tcp_address_splits_host_and_port() -> None:
    assert hostile.tcp_address("tcp://127.0.0.1:5556") == ("127.0.0.1", 5556)
    with pytest.raises(ValueError, match="not a tcp endpoint"):
        hostile.tcp_address("ipc:///tmp/feedsvc/ticks")
