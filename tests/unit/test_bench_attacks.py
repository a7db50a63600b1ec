"""The pure parts of the attack benchmark (feedsvc.bench.scenarios.attacks: findings, log check,
report, options, the chart from docs/attacks-*.json), the victim's latency figures, and the small
scenarios beside it (guards, ingest_decode, metrics). No sockets."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson
import pytest

from feedsvc.bench.hostile import victim as victim_module
from feedsvc.bench.latency import LatencyRecorder
from feedsvc.bench.scenarios import attacks, guards, ingest_decode, metrics
from feedsvc.server.ingest import IngestDecoder

DOCS = Path(__file__).resolve().parents[2] / "docs"
MB = 1024 * 1024


def _run(**changes: Any) -> dict[str, Any]:
    """A run with no effect at all, as measure() reports it; `changes` replace top-level keys."""
    run: dict[str, Any] = {
        "attack": "slowloris",
        "parameters": {},
        "stopped_at_rss_limit": False,
        "alive": True,
        "exit_code": None,
        "last_exception": None,
        "rate_ratio": 1.0,
        "victim": {
            "missed": 0,
            "gaps": 0,
            "max_heartbeat_gap_s": 1.0,
            "latency_ms": {"p50": 0.2, "p99": 3.0, "max": 9.0},
        },
        "peak_rss_bytes": 45 * MB,
        "rss_after_bytes": 45 * MB,
        "sigterm_exit_s": 0.2,
        "sigterm_timed_out": False,
        "tracebacks": 0,
    }
    run.update(changes)
    return run


BASELINE = _run(attack="baseline", peak_rss_bytes=43 * MB)


def test_a_run_like_the_baseline_has_no_findings() -> None:
    assert attacks.findings(_run(), BASELINE, 3.0) == []
    assert attacks.outcome([]) == "no effect measured"


def test_a_failed_run_reports_only_why() -> None:
    run = {"attack": "idle_subs", "failed": "the victim received nothing from serve"}
    assert attacks.findings(run, BASELINE, 3.0) == ["the victim received nothing from serve"]
    assert attacks.summary_line(run) == "FAILED: the victim received nothing from serve"


def test_findings_name_each_effect_beyond_its_threshold() -> None:
    victim = {
        "missed": 120,
        "gaps": 3,
        "max_heartbeat_gap_s": 4.5,
        "latency_ms": {"p50": 2.0, "p99": 30.0, "max": 90.0},
    }
    run = _run(
        alive=False,
        exit_code=-9,
        last_exception="MemoryError",
        rate_ratio=0.5,
        victim=victim,
        peak_rss_bytes=BASELINE["peak_rss_bytes"] + 300 * MB,
        rss_after_bytes=BASELINE["peak_rss_bytes"] + 150 * MB,
        sigterm_exit_s=None,
        sigterm_timed_out=True,
        tracebacks=2,
        attacker={"probe_received": 0},
    )
    assert attacks.findings(run, BASELINE, 3.0) == [
        "service exited (MemoryError)",
        "feed 0.50x",
        "120 ticks missed in 3 gaps",
        "no heartbeat for 4.5 s",
        "latency p50 2.00 ms (baseline 0.20)",
        "RSS peak +300 MB",
        "+150 MB kept after",
        "SIGTERM: no exit in time, killed",
        "2 tracebacks in the log",
        "a new SUB got nothing",
    ]


def test_findings_stay_quiet_at_their_thresholds() -> None:
    victim = {
        "missed": 0,
        "gaps": 0,
        "max_heartbeat_gap_s": attacks.HEARTBEAT_SILENCE_S,
        # 5x the baseline but under the 1 ms floor: noise on a shared machine.
        "latency_ms": {"p50": 0.9, "p99": 3.0, "max": 9.0},
    }
    run = _run(
        rate_ratio=attacks.RATE_DEGRADED,
        victim=victim,
        peak_rss_bytes=BASELINE["peak_rss_bytes"] + attacks.RSS_GROWTH_BYTES,
        sigterm_exit_s=attacks.SLOW_EXIT_S,
    )
    assert attacks.findings(run, BASELINE, 3.0) == []


def test_a_run_stopped_at_the_limit_says_so_not_that_it_exited() -> None:
    run = _run(stopped_at_rss_limit=True, alive=False, exit_code=-9, rss_after_bytes=None)
    assert attacks.findings(run, BASELINE, 2.5)[0] == "stopped at 2.5 GB"
    assert "service exited" not in "; ".join(attacks.findings(run, BASELINE, 2.5))


def test_the_slow_exit_finding_and_the_exit_code_when_no_exception_was_logged() -> None:
    found = attacks.findings(_run(sigterm_exit_s=7.25), BASELINE, 3.0)
    assert found == ["SIGTERM took 7.2 s"]
    exited = attacks.findings(_run(alive=False, exit_code=1), BASELINE, 3.0)
    assert exited == ["service exited (exit code 1)"]


def test_summary_line_carries_the_feed_memory_and_exit_figures() -> None:
    run = _run(rate_ratio=0.987, peak_rss_bytes=545 * MB, findings=["RSS peak +502 MB"])
    assert attacks.summary_line(run) == (
        "feed 0.99x, peak RSS 545 MB, alive=True, SIGTERM exit 0.2 s; RSS peak +502 MB"
    )
    quiet = _run(sigterm_exit_s=None, findings=[])
    assert attacks.summary_line(quiet).endswith("SIGTERM exit -; no effect measured")


def test_log_figures_count_tracebacks_and_keep_the_last_exception_line() -> None:
    lines = [
        "serving epoch=1795427742012345678",
        "Traceback (most recent call last):",
        '  File "x.py", line 1, in <module>',
        "ValueError: first",
        "Traceback (most recent call last):",
        "zmq.error.ZMQError: Address already in use",
        "stopped",
    ]
    figures = attacks.log_figures(lines)
    assert figures["tracebacks"] == 2
    assert figures["last_exception"] == "zmq.error.ZMQError: Address already in use"
    assert figures["log_tail"] == lines[-7:]
    assert attacks.log_figures(["ok", "x" * 400])["log_tail"][-1] == "x" * 300
    assert attacks.log_figures(None) == {"tracebacks": None, "last_exception": None, "log_tail": []}


def test_read_log_figures_of_a_missing_log_is_unknown_not_zero(tmp_path: Path) -> None:
    assert attacks.read_log_figures(tmp_path / "absent.log")["tracebacks"] is None


def test_rate_ratio_is_the_share_of_the_configured_rate() -> None:
    assert attacks.rate_ratio(9_876.54321, 10_000) == 0.9877
    assert attacks.rate_ratio(None, 10_000) is None
    assert attacks.rate_ratio(100.0, 0) is None


def test_rss_after_is_kept_only_when_serve_lived_on() -> None:
    sampled = {"peak_rss_bytes": 9, "last_rss_bytes": 7, "samples": 3}
    assert attacks._memory_figures(sampled, True) == {
        "peak_rss_bytes": 9,
        "rss_after_bytes": 7,
        "samples": 3,
    }
    assert attacks._memory_figures(sampled, False)["rss_after_bytes"] is None


def test_options_and_settings_as_the_docs_use_them() -> None:
    args = attacks.parse_args(
        ["--scale", "0.2", "--duration", "5", "--attack", "slowloris", "--set", "a.b=1"]
    )
    assert (args.scale, args.duration, args.attack) == (0.2, 5.0, ["slowloris"])
    endpoints = attacks.hostile.Endpoints(
        publisher="tcp://127.0.0.1:1", ingest="tcp://127.0.0.1:2", sync="tcp://127.0.0.1:3",
        metrics_port=4,
    )  # fmt: skip
    settings = attacks.serve_settings(args, endpoints)
    assert settings[0] == "publisher.endpoints=[tcp://127.0.0.1:1]"
    assert "synthetic.rate=10000" in settings
    assert "kafka.enabled=false" in settings
    # --set comes last, so it overrides the benchmark's own settings.
    assert settings[-1] == "a.b=1"
    header = attacks.report_header(args, ["bench_attacks.py", "--scale", "0.2"])
    assert header["settings"]["scale"] == 0.2
    assert set(header) == {"benchmark", "label", "started_utc", "command", "settings", "machine"}


@pytest.mark.parametrize(
    "argv", [["--scale", "0"], ["--attack", "no_such_attack"], ["--replot", "--plot", "x.png"]]
)
def test_bad_options_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        attacks.parse_args(argv)


def test_the_documented_reports_still_read_and_draw(tmp_path: Path) -> None:
    paths = sorted(DOCS.glob("attacks-*.json"))
    assert paths, "docs/attacks-*.json are what --replot draws (docs/security.md)"
    reports = [attacks.read_report(path) for path in paths]
    for report in reports:
        for run in [report["baseline"], *report["attacks"]]:
            assert "rate_ratio" in run and "peak_rss_bytes" in run
    attacks.plot(reports, tmp_path / "attacks.png")
    assert (tmp_path / "attacks.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_fresh_report_draws_beside_an_older_one(tmp_path: Path) -> None:
    older = attacks.read_report(DOCS / "attacks-after.json")
    newer = copy.deepcopy(older)
    newer["label"] = "new"
    # A newer report may hold fewer attacks: their bars are left empty.
    newer["attacks"] = newer["attacks"][:2]
    attacks.plot([older, newer], tmp_path / "both.png")
    assert (tmp_path / "both.png").stat().st_size > 0


def test_the_victim_reports_latency_in_milliseconds() -> None:
    recorder = LatencyRecorder()
    published_ns = 1_795_427_742_000_000_000
    for latency_us in (100, 200, 300, 5_000):
        recorder.record(published_ns + latency_us * 1_000, published_ns)
    figures = victim_module.latency_ms(recorder)
    assert set(figures) == {"p50", "p99", "max"}
    assert figures["p50"] == pytest.approx(0.2, rel=0.01)
    assert figures["max"] == pytest.approx(5.0, rel=0.01)
    assert victim_module.latency_ms(LatencyRecorder()) == {"p50": None, "p99": None, "max": None}


def test_a_victim_window_reports_silent_seconds_and_seq_gaps() -> None:
    window = victim_module._VictimWindow(started=100.0, last_heartbeat=None)
    window.sequence.observe("SYN0000", 1, 1)
    window.count_at(100.5)
    window.sequence.observe("SYN0000", 1, 4)
    window.count_at(101.2)
    window.heartbeats.append(100.1)
    report = window.report(ended=104.0)
    assert report["per_second"] == [1, 1, 0, 0]
    assert (report["received"], report["gaps"], report["missed"]) == (2, 1, 2)
    # The feed's heartbeat went silent from 100.1 to the end of the window.
    assert report["max_heartbeat_gap_s"] == pytest.approx(3.9)
    assert report["latency_ms"] == {"p50": None, "p99": None, "max": None}


def test_guards_report_is_the_median_over_processes_per_tree() -> None:
    runs = {
        "before": [{"publish": 800.0}, {"publish": 820.0}, {"publish": 900.0}],
        "after": [{"publish": 810.04}],
    }
    report = guards.guards_report(runs)
    assert report == {
        "before": {"publish": 820.0},
        "after": {"publish": 810.0},
        "unit": guards.UNIT,
    }


def test_guards_measure_runs_as_a_file_outside_the_package() -> None:
    # Imported from the package, it would measure this tree's feedsvc whatever the root.
    assert guards.MEASURE_SCRIPT.exists()
    assert "from feedsvc" not in guards.MEASURE_SCRIPT.read_text().split("def _classes")[0]


@pytest.mark.parametrize("batch", [True, False])
@pytest.mark.parametrize("optional", [True, False])
def test_ingest_decode_frames_are_valid_ticks_of_their_shape(batch: bool, optional: bool) -> None:
    shape, frames, ticks = ingest_decode.shape_frames(batch, optional)
    decoder = IngestDecoder(max_message_bytes=16 * 1024 * 1024)
    assert sum(len(decoder.decode(frame)) for frame in frames) == ticks
    assert len(frames) == (1 if batch else ticks)
    assert ticks == (ingest_decode.BATCH_TICKS if batch else ingest_decode.SYMBOLS)
    assert ("optional fields" in shape) is optional
    first = orjson.loads(frames[0])
    assert ("venue" in (first[0] if batch else first)) is optional


def test_ingest_decode_rows_line_up_under_the_header() -> None:
    row = ingest_decode.result_line("batch of 1,000", 0.5, 1.75)
    assert row.split() == ["batch", "of", "1,000", "0.50", "1.75", "3.5x"]
    assert len(row) == len(ingest_decode.HEADER)


def test_the_metrics_scraper_scrapes_once_per_interval_and_counts_answers() -> None:
    now = [0.0]
    answers: list[int] = []

    def fetch(port: int) -> None:
        if now[0] < 1.5:
            raise OSError("not listening yet")
        answers.append(port)

    scraper = metrics.Scraper(9100, interval_s=1.0, fetch=fetch, clock=lambda: now[0])
    for now[0] in (0.0, 0.5, 1.0, 1.2, 2.0, 2.5, 3.1):
        scraper(4242)
    # Tried at 0.0 (refused), 1.0 (refused), 2.0 and 3.1.
    assert scraper.scrapes == 2
    assert answers == [9100, 9100]


def test_metrics_report_gives_medians_and_their_ratio() -> None:
    rates = {"off": [100_000.0, 90_000.0, 110_000.0], "on": [99_000.0]}
    lines = metrics.metrics_report(rates, scrapes=12)
    assert lines == [
        "metrics off: 100,000 ticks/s (runs 100,000, 90,000, 110,000)",
        "metrics on:  99,000 ticks/s (runs 99,000), scraped 12 times",
        "ratio on/off: 0.990",
    ]
    assert metrics.metrics_document(rates)["ratio"] == pytest.approx(0.99)
