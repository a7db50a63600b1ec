"""Logging set-up and rate limiting for repetitive warnings (never a line per tick)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

import orjson


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and the exception, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def setup_logging(level: str, log_format: str = "text") -> None:
    """One line per event on stderr, readable text or JSON."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


class RateLimiter:
    """Allows an action at most once per `interval_s`; callers log what accumulated meanwhile."""

    def __init__(self, interval_s: float, clock: Callable[[], float]) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._last_allowed: float | None = None

    def allow(self) -> bool:
        now = self._clock()
        if self._last_allowed is not None and now - self._last_allowed < self.interval_s:
            return False
        self._last_allowed = now
        return True
