"""`feedsvc loadtest` as a real process: its report's structure and internal consistency."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import PROJECT_ROOT, KafkaBroker

RATE = 5000
# The whole command: two runs (feedsvc, baseline) of 3 s plus start-up and shutdown.
RUN_TIMEOUT_S = 180.0


def run_loadtest(tmp_path: Path, *extra: str) -> dict[str, Any]:
    report_path = tmp_path / "r.json"
    command = [
        sys.executable,
        "-m",
        "feedsvc.cli",
        "loadtest",
        "--rate",
        str(RATE),
        "--duration",
        "3",
        "--subscribers",
        "2",
        "--slow",
        "1",
        "--transport",
        "ipc",
        "--report",
        str(report_path),
        *extra,
    ]
    result = subprocess.run(
        command,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, f"exit {result.returncode}:\n{result.stderr}\n{result.stdout}"
    return json.loads(report_path.read_text())


def check_section(section: dict[str, Any]) -> None:
    assert abs(section["publish_rate"] - RATE) <= 0.2 * RATE, section["publish_rate"]
    latency = section["latency_us"]
    assert set(latency) >= {"p50", "p99", "p999", "max"}
    assert 0 < latency["p50"] <= latency["p99"] <= latency["p999"] <= latency["max"]
    subscribers = section["subscribers"]
    assert [entry["slow"] for entry in subscribers] == [False, True]
    for entry in subscribers:
        assert {"received", "missed", "gaps"} <= set(entry)
        assert entry["received"] > 0
        # Every tick in each symbol's seen span [first seq, last seq] was received or missed.
        assert entry["received"] + entry["missed"] == entry["published_in_span"], entry
    fast = subscribers[0]
    assert fast["gaps"] == 0 and fast["missed"] == 0, fast
    slow = subscribers[1]
    assert slow["tick_age_us"]["max"] is not None
    # Reading at 1% of the rate, it is far behind the fast one when stopped.
    assert slow["behind_at_stop"] > fast["behind_at_stop"]


def check_over_time(section: dict[str, Any]) -> None:
    # Duration 3 s: three whole measured seconds, each at the rate, as seen by the fast one.
    rows = section["over_time"]
    assert [row["t_s"] for row in rows] == [0, 1, 2]
    for row in rows:
        assert abs(row["received_per_subscriber"] - RATE) <= 0.2 * RATE, row
        assert 0 < row["p50"] <= row["p99"] <= row["p999"] <= row["max"], row
    fast = section["subscribers"][0]
    assert fast["received_by_second"] == [row["received"] for row in rows]


def test_loadtest_report_with_baseline(tmp_path: Path) -> None:
    report = run_loadtest(tmp_path, "--baseline")
    for kind in ("feedsvc", "baseline"):
        check_section(report[kind])
        check_over_time(report[kind])
    ratios = report["ratios"]
    assert ratios["publish_rate"] > 0 and ratios["p99"] > 0
    expected = report["feedsvc"]["publish_rate"] / report["baseline"]["publish_rate"]
    assert abs(ratios["publish_rate"] - expected) < 1e-9


def test_loadtest_over_curve_with_baseline(tmp_path: Path) -> None:
    """--curve: feedsvc (with its allow-list) and the raw baseline both encrypt over tcp; a
    side without matching keys would receive nothing, so the figures show Curve is on."""
    report = run_loadtest(tmp_path, "--transport", "tcp", "--curve", "--baseline")
    assert report["settings"]["curve"] is True and report["settings"]["transport"] == "tcp"
    for kind in ("feedsvc", "baseline"):
        check_section(report[kind])


def test_loadtest_mirror_acknowledges_every_published_tick(
    tmp_path: Path, kafka_broker: KafkaBroker
) -> None:
    report = run_loadtest(tmp_path, "--mirror", "--kafka-bootstrap", kafka_broker.bootstrap)
    section = report["feedsvc"]
    check_section(section)
    mirror = section["mirror"]
    assert mirror["published"] == section["published_total"] > 0
    assert mirror["acknowledged"] == mirror["published"]
    assert "baseline" not in report
    # The mirror over time, scraped from the service's metrics endpoint once a sample.
    samples = section["publisher"]["samples"]
    assert len(samples) >= 3
    delivered = [sample["mirror_delivered_total"] for sample in samples]
    assert None not in delivered
    assert delivered == sorted(delivered) and 0 < delivered[-1] <= mirror["acknowledged"]
    assert all(sample["mirror_lag_s"] is not None for sample in samples)
    assert all(sample["mirror_queue_ticks"] >= 0 for sample in samples)
    assert mirror["lag_s_max"] == max(sample["mirror_lag_s"] for sample in samples)


def check_png(path: Path) -> None:
    import matplotlib.image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    height, width = matplotlib.image.imread(path).shape[:2]
    assert height >= 400 and width >= 800, (path, height, width)


def test_loadtest_burst_profile_with_baseline_and_plots(tmp_path: Path) -> None:
    plots = tmp_path / "plots"
    report = run_loadtest(
        tmp_path,
        "--profile",
        "burst",
        "--burst-every",
        "2",
        "--burst-duration",
        "1",
        "--burst-factor",
        "3",
        "--baseline",
        "--plot",
        str(plots),
    )
    for kind in ("feedsvc", "baseline"):
        section = report[kind]
        bursts = section["bursts"]
        assert bursts["rate"] == 3 * RATE
        # The measurement starts as a burst ends: of its 3 s, second 1 is the next burst.
        assert [(window["start_s"], window["end_s"]) for window in bursts["windows"]] == [(1, 2)]
        rows = section["over_time"]
        assert [row["in_burst"] for row in rows] == [False, True, False]
        burst_rate = rows[1]["received_per_subscriber"]
        assert abs(burst_rate - 3 * RATE) <= 0.2 * 3 * RATE, rows
        assert burst_rate > 2 * max(
            rows[0]["received_per_subscriber"], rows[2]["received_per_subscriber"]
        )
        assert bursts["in_bursts"]["received_per_s"] == burst_rate
        for entry in section["subscribers"]:
            assert entry["received"] + entry["missed"] == entry["published_in_span"], entry
        fast = section["subscribers"][0]
        assert fast["gaps"] == 0, fast
    assert report["ratios"]["burst_p99"] > 0
    assert sorted(path.name for path in plots.iterdir()) == ["latency.png", "throughput.png"]
    for path in plots.iterdir():
        check_png(path)


def test_loadtest_step_profile_reports_the_highest_sustained_rate(tmp_path: Path) -> None:
    report = run_loadtest(tmp_path, "--profile", "step", "--step-duration", "2", "--max-steps", "2")
    section = report["feedsvc"]
    steps = section["steps"]
    assert [step["target_rate"] for step in steps] == [RATE, 1.5 * RATE]
    for step in steps:
        held = step["publish_rate"] >= 0.95 * step["target_rate"] and step["gaps"] == 0
        assert step["sustained"] is held, step
    sustained = [step for step in steps if step["sustained"]]
    assert sustained, steps
    assert section["max_sustained_rate"] == sustained[-1]["target_rate"]
    # The section's own figures (the report contract) are those of that step.
    assert section["publish_rate"] == sustained[-1]["publish_rate"]
    assert section["latency_us"] == sustained[-1]["latency_us"]
    assert {"received", "missed", "gaps"} <= set(section["subscribers"][0])
    assert section["stopped_by"] == ("max_steps" if len(sustained) == 2 else "not_sustained")


def run_usage_error(*arguments: str, blocked_module: str | None = None) -> str:
    """Run `feedsvc loadtest` expecting a usage error (exit 2); returns its stderr."""
    code = "import sys\n"
    if blocked_module is not None:
        # None in sys.modules makes `import` raise ImportError: as if it were not installed.
        code += f"sys.modules[{blocked_module!r}] = None\n"
    code += f"from feedsvc.cli import main\nsys.exit(main({['loadtest', *arguments]!r}))\n"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, (result.returncode, result.stderr)
    return result.stderr


def test_loadtest_usage_errors_say_what_to_fix(tmp_path: Path) -> None:
    assert "--kafka-bootstrap" in run_usage_error("--mirror")
    assert "--rate > 0" in run_usage_error("--profile", "burst", "--rate", "0")
    assert "--burst-duration" in run_usage_error(
        "--profile", "burst", "--burst-every", "2", "--burst-duration", "2"
    )
    assert "--duration must be >= --burst-every" in run_usage_error(
        "--profile", "burst", "--duration", "3", "--burst-every", "5"
    )
    assert "--step-factor" in run_usage_error("--profile", "step", "--step-factor", "1")
    assert "needs --rate > 0" in run_usage_error("--source", "ingest", "--rate", "0")
    assert "--repeats must be >= 1" in run_usage_error("--repeats", "0")
    assert "--ingest-batch must be >= 1" in run_usage_error("--ingest-batch", "0")
    assert "--curve needs --transport tcp" in run_usage_error("--curve", "--transport", "ipc")
    stderr = run_usage_error("--plot", str(tmp_path), blocked_module="matplotlib")
    assert "--plot needs matplotlib (pip install feedsvc[bench])" in stderr


def _check_ingest_section(section: dict[str, Any], batch: int) -> None:
    """A run of the ingest path: every tick the feed handler sent was published and reached
    the subscriber, and latency is there from ts_src as well as from ts."""
    feed = section["feed"]
    assert feed["batch"] == batch and feed["unsent"] == 0
    assert feed["sent"] > 0
    assert feed["frames"] * batch == feed["sent"]  # only whole batches go out
    assert section["published_total"] == feed["sent"]
    (subscriber,) = section["subscribers"]
    assert subscriber["missed"] == 0 and subscriber["gaps"] == 0 and subscriber["duplicates"] == 0
    assert subscriber["received"] == subscriber["published_in_span"] > 0
    # The feed began once it had a heartbeat: it saw every tick the feed sent.
    assert subscriber["received"] == feed["sent"]
    for name in ("latency_us", "latency_src_us"):
        latency = section[name]
        assert 0 < latency["p50"] <= latency["p99"] <= latency["p999"] <= latency["max"]
    # ts_src is stamped before ts: the whole path is at least the publisher-to-subscriber hop.
    assert section["latency_src_us"]["p50"] >= section["latency_us"]["p50"]
    assert all("src_p99" in row for row in section["over_time"])


def test_loadtest_ingest_source_measures_the_feed_handler_path(tmp_path: Path) -> None:
    report = run_loadtest(
        tmp_path,
        "--source",
        "ingest",
        "--transport",
        "tcp",
        "--subscribers",
        "1",
        "--slow",
        "0",
        "--baseline",
        "--repeats",
        "2",
        "--duration",
        "2",
        "--plot",
        str(tmp_path / "plots"),
    )
    # Every run's seconds one after another: where a tail came from.
    assert (tmp_path / "plots" / "latency_runs.png").stat().st_size > 10_000
    assert report["settings"]["source"] == "ingest"
    assert report["settings"]["repeats"] == 2
    for kind in ("feedsvc", "baseline"):
        section = report[kind]
        _check_ingest_section(section, batch=1)
        repeats = section["repeats"]
        assert repeats["count"] == 2 and len(repeats["runs"]) == 2
        assert len(section["over_time_by_run"]) == 2
        p99 = repeats["spread"]["latency_src_us"]["p99"]
        assert p99["min"] <= section["latency_src_us"]["p99"] <= p99["max"]
        assert [run["feed_sent"] for run in repeats["runs"]] == [
            run["published_total"] for run in repeats["runs"]
        ]
    assert set(report["ratios"]) >= {"src_p50", "src_p99", "src_p999", "p99"}


def test_loadtest_ingest_source_in_batches(tmp_path: Path) -> None:
    report = run_loadtest(
        tmp_path,
        "--source",
        "ingest",
        "--ingest-batch",
        "100",
        "--subscribers",
        "1",
        "--slow",
        "0",
        "--duration",
        "2",
    )
    assert report["settings"]["ingest_batch"] == 100
    _check_ingest_section(report["feedsvc"], batch=100)
    assert "baseline" not in report
