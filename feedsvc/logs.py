"""Logging set-up and rate limiting for repetitive warnings (never a line per tick)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable


def setup_logging(level: str) -> None:
    """One line per event on stderr."""
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )


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
