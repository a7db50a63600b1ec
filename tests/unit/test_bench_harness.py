"""The benchmark harness core: what every scenario's figures are built from."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from feedsvc.bench import latency, procs, report, sequence
from feedsvc.protocol.ticks import encode_frame


def test_free_tcp_ports_are_distinct_and_bindable() -> None:
    ports = procs.free_tcp_ports(5)
    assert len(set(ports)) == 5
    assert all(1024 <= port < 65536 for port in ports)


def test_proc_status_parsing_reads_rss_and_threads() -> None:
    text = "Name:\tpython\nVmRSS:\t  2048 kB\nThreads:\t7\n"
    assert procs.parse_proc_status(text) == {"rss_bytes": 2048 * 1024, "threads": 7}
    assert procs.parse_proc_status("Name:\tx\n") == {}


def test_own_process_figures_come_from_proc() -> None:
    rss = procs.process_rss_bytes(os.getpid())
    assert rss is not None and rss > 1024 * 1024
    cpu = procs.process_cpu_seconds(os.getpid())
    assert cpu is not None and cpu >= 0
    busy_steal = procs.machine_cpu_seconds()
    assert busy_steal is not None and busy_steal[0] > 0


def test_a_child_is_found_and_stopped_by_its_pid() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert child.pid in procs.child_pids(os.getpid())
        assert procs.stop_process(child, timeout_s=10) == -15
    finally:
        procs.kill_process(child)
    assert procs.process_status(child.pid) == {}


def test_serve_command_sets_each_key_in_order_and_asks_for_the_summary(tmp_path: Path) -> None:
    command = procs.serve_command(["a.b=1", "a.b=2"], tmp_path / "s.json", ("--x",), "py")
    assert command == [
        *("py", "-m", "feedsvc.cli", "serve", "--summary-file", str(tmp_path / "s.json")),
        *("--set", "a.b=1", "--set", "a.b=2", "--x"),
    ]


def test_a_missing_summary_is_an_error_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(procs.ProcessError, match=r"s\.json"):
        procs.read_summary(tmp_path / "s.json")


@pytest.mark.parametrize("hdr", [True, False], ids=["hdrhistogram", "raw values"])
def test_latency_dumps_merge_into_the_same_percentiles_either_way(
    hdr: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(latency, "hdr_available", lambda: hdr)
    first, second = latency.LatencyRecorder(), latency.LatencyRecorder()
    base = 1_700_000_000 * latency.NS_PER_S
    for index in range(1, 1001):
        # 1..1000 us, spread over two receive seconds and two recorders.
        received = base + (index % 2) * latency.NS_PER_S + index * 1000
        (first if index <= 500 else second).record(received, received - index * 1000)
    assert first.count == second.count == 500
    dumps = [*first.dump().values(), *second.dump().values()]
    assert len(dumps) == 4  # two seconds per recorder
    figures = latency.latency_percentiles(dumps)
    assert figures["count"] == 1000
    assert figures["p50"] == pytest.approx(500, rel=0.01)
    assert figures["p99"] == pytest.approx(990, rel=0.01)
    assert figures["max"] == pytest.approx(1000, rel=0.01)
    whole = first.dump(per_second=False)
    assert list(whole) == ["all"] and whole["all"]["count"] == 500


def test_no_latency_recorded_gives_no_percentiles() -> None:
    assert latency.latency_percentiles([])["p99"] is None
    assert latency.percentiles([], (0.5,)) == {"p50": None}
    assert latency.percentiles([3, 1, 2], (0.5, 1.0)) == {"p50": 2.0, "p100": 3.0}


def test_sequence_gaps_count_missed_ticks_but_not_restarts() -> None:
    gaps = sequence.SequenceGaps()
    assert [gaps.observe("A", 1, seq) for seq in (5, 6, 9)] == [0, 0, 2]
    assert gaps.observe("A", 1, 9) == 0  # a duplicate is counted apart
    assert gaps.published_in_span == 5  # seq 5 to 9
    assert gaps.observe("A", 2, 1) == 0  # a new epoch restarts every seq
    assert gaps.summary() == {
        "gaps": 1,
        "missed": 2,
        "duplicates_or_backwards": 1,
        "epochs": 2,
        "symbols": 1,
    }


def test_sequence_gaps_follow_each_symbol_in_its_own_shards_epoch() -> None:
    gaps = sequence.SequenceGaps()
    # Two shards interleaved (epochs 1 and 2): no restart, no gap, until a real jump.
    observed = [gaps.observe("A", 1, 10), gaps.observe("B", 2, 3), gaps.observe("A", 1, 11)]
    assert [*observed, gaps.observe("B", 2, 4), gaps.observe("B", 2, 7)] == [0, 0, 0, 0, 2]
    assert gaps.published_in_span == 2 + 5  # A 10-11, B 3-7
    assert gaps.summary()["epochs"] == 2 and gaps.last_seq == {"A": 11, "B": 7}


def test_count_gaps_reads_wire_frames_and_skips_control_frames() -> None:
    def frame(seq: int) -> bytes:
        return encode_frame("AB", {"sym": "AB", "seq": seq, "epoch": 7, "ts": 1})

    frames = [frame(1), b'_hb {"epoch":7}', frame(2), frame(5)]
    assert sequence.count_gaps(frames)["missed"] == 2


def test_report_statistics_ignore_unknown_values(tmp_path: Path) -> None:
    assert report.median([3.0, None, 1.0, 2.0]) == 2.0
    assert report.median([None]) is None
    assert report.spread([90.0, 100.0, 110.0]) == pytest.approx(0.2)
    assert report.ratio(50.0, 100.0) == 0.5
    assert report.ratio(1.0, 0.0) is None
    path = tmp_path / "new folder" / "r.json"
    report.write_json(path, {"a": 1})
    assert path.read_text() == '{\n  "a": 1\n}\n'
