"""Log lines: text or one JSON object per event; repetitive warnings rate-limited."""

from __future__ import annotations

import logging

import orjson
import pytest

from feedsvc.logs import RateLimiter, setup_logging


def test_json_format_is_one_object_per_line(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("INFO", "json")
    logging.getLogger("feedsvc.test").warning("rejected %d ticks", 3)
    logging.getLogger("feedsvc.test").debug("not shown at INFO")
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    entry = orjson.loads(lines[0])
    assert entry["level"] == "WARNING" and entry["logger"] == "feedsvc.test"
    assert entry["message"] == "rejected 3 ticks"
    setup_logging("INFO", "text")


def test_rate_limiter_allows_once_per_interval() -> None:
    now = [0.0]
    limiter = RateLimiter(5.0, lambda: now[0])
    allowed = []
    for step in range(100):
        now[0] = step * 0.5  # 50 s in 0.5 s steps
        allowed.append(limiter.allow())
    assert sum(allowed) == 10
