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


def test_loadtest_report_with_baseline(tmp_path: Path) -> None:
    report = run_loadtest(tmp_path, "--baseline")
    check_section(report["feedsvc"])
    check_section(report["baseline"])
    ratios = report["ratios"]
    assert ratios["publish_rate"] > 0 and ratios["p99"] > 0
    expected = report["feedsvc"]["publish_rate"] / report["baseline"]["publish_rate"]
    assert abs(ratios["publish_rate"] - expected) < 1e-9


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


def test_loadtest_rejects_unimplemented_profiles(tmp_path: Path) -> None:
    for profile in ("step", "burst"):
        result = subprocess.run(
            [sys.executable, "-m", "feedsvc.cli", "loadtest", "--profile", profile],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 2
        assert "not implemented yet" in result.stderr
    result = subprocess.run(
        [sys.executable, "-m", "feedsvc.cli", "loadtest", "--mirror"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "--kafka-bootstrap" in result.stderr
